"""A model's graph definition plus how its parameters are sharded on a mesh.

Parameters travel as plain nested dicts of arrays (`nnx.to_pure_dict`), which
optax, orbax and jit shardings all take directly; `merge` turns them back into
a model inside a traced function. The helper knows no model: `build(cfg,
rngs=...)` makes the module (e.g. `dit.DiT`, `autoencoder.VideoAutoencoder`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
from flax import nnx

from sora_jax.core import sharding


class ShardedModel:
  """`build(cfg, rngs=...)`'s module, abstractly evaluated, with its parameter shardings."""

  def __init__(self, cfg: Any, mesh: jax.sharding.Mesh, rules, build: Callable[..., nnx.Module]):
    self.cfg = cfg
    self.mesh = mesh
    self.rules = tuple(rules)
    self.build = build
    abstract = nnx.eval_shape(lambda: self.build(cfg, rngs=nnx.Rngs(0)))
    self.graphdef, abstract_params = nnx.split(abstract, nnx.Param)
    self.param_shardings = nnx.to_pure_dict(
      sharding.param_shardings(abstract_params, self.rules, mesh)
    )
    self.abstract_params = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      nnx.to_pure_dict(abstract_params),
      self.param_shardings,
    )

  def init(self, seed: int) -> dict[str, Any]:
    """Freshly initialized parameters, created directly in their shards."""

    def create():
      return nnx.to_pure_dict(nnx.state(self.build(self.cfg, rngs=nnx.Rngs(seed)), nnx.Param))

    with jax.set_mesh(self.mesh):
      return jax.jit(create, out_shardings=self.param_shardings)()

  def merge(self, params: dict[str, Any]) -> nnx.Module:
    """A model using `params` (call inside jit)."""
    return nnx.merge(self.graphdef, params)
