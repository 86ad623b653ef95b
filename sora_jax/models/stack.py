"""A stack of identical layers, scanned (one compiled layer, stacked params) or unrolled.

Scanned parameters gain a leading "layers" axis; the sharding rules replicate it.
Rematerialization policies trade memory for recompute in the backward pass.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
from flax import nnx

REMAT_POLICIES = {
  "none": None,
  "full": jax.checkpoint_policies.nothing_saveable,
  "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
  "dots_all": jax.checkpoint_policies.checkpoint_dots,
}


def make_layers(make: Callable[[nnx.Rngs], nnx.Module], depth: int, rngs: nnx.Rngs, scan: bool):
  """`depth` layers built by `make(rngs)`: stacked for scanning, or an nnx.List (also
  for depth 0)."""
  if not scan or depth == 0:
    return nnx.List([make(rngs) for _ in range(depth)])

  @nnx.split_rngs(splits=depth)
  @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
  def build(rngs):
    return make(rngs)

  return build(rngs)


def run_layers(
  layers: Any, x: jax.Array, apply: Callable[[nnx.Module, jax.Array], jax.Array], remat: str
) -> jax.Array:
  """x -> apply(layer_n, ... apply(layer_1, x)), with the given remat policy."""
  if remat not in REMAT_POLICIES:
    raise ValueError(f"model.remat={remat!r}; allowed: {sorted(REMAT_POLICIES)}")
  step = apply
  if remat != "none":
    step = nnx.remat(
      apply, policy=REMAT_POLICIES[remat], prevent_cse=not isinstance(layers, nnx.List)
    )
  if isinstance(layers, nnx.List):
    for layer in layers:
      x = step(layer, x)
    return x

  @nnx.scan(
    in_axes=(0, nnx.Carry), out_axes=nnx.Carry, transform_metadata={nnx.PARTITION_NAME: "layers"}
  )
  def body(layer, x):
    return step(layer, x)

  return body(layers, x)
