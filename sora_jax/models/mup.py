"""Maximal-update parametrization (muP) for Adam: one learning rate for every width.

Tensor Programs V (Yang et al. 2022), Table 3, for Adam, with the model's hidden
width the only dimension that grows (heads grow with it at a fixed head dim,
so attention keeps its 1/sqrt(head_dim) scale):

  weight            initialization variance   Adam learning rate
  input (fan-in fixed: patches, positions, timestep features, the text encoder)
                    1 / fan_in                  lr
  hidden (fan-in grows with width: attention, MLP, adaLN projections)
                    1 / fan_in                  lr * base_fan_in / fan_in
  output (the final projection to patches; zero-initialized here)
                    0                           lr * base_fan_in / fan_in
  vectors (biases, norm scales, adaLN tables, embedding tables)
                    as initialized              lr

Which dims of a kernel are fan-in comes from `layers.Dense` (its `fan_in_dims`
metadata); which fan-ins grow comes from comparing the model's shapes with
those of the same model at `model.mup_base_width` (the "base shapes" of the mup
package), so the rule needs no list of layer names. At the base width muP and
the standard parametrization train identically apart from the initialization
of input layers (fan-in instead of Xavier's fan-average), so a learning rate
tuned at the base width is the one to use at every width.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
from flax import nnx

PARAMETRIZATIONS = ("standard", "mup")


def kernel_fans(build: Callable[..., nnx.Module], cfg: Any) -> dict[str, Any]:
  """(fan_in, fan_out) of every `layers.Dense` kernel of `build(cfg)`, (0, 0) for other
  parameters, as a tree shaped like the model's pure parameter dict."""
  abstract = nnx.eval_shape(lambda: build(cfg, rngs=nnx.Rngs(0)))
  _, params = nnx.split(abstract, nnx.Param)
  fans = {}
  for path, var in nnx.to_flat_state(params):
    meta = var.get_metadata()
    n_in = meta.get("fan_in_dims")
    shape = var.get_value().shape
    if n_in is None:
      fans[tuple(path)] = (0, 0)
      continue
    lead = 1 if tuple(meta.get("out_sharding") or ())[:1] == ("layers",) else 0
    fans[tuple(path)] = (math.prod(shape[lead : lead + n_in]), math.prod(shape[lead + n_in :]))
  pure = nnx.to_pure_dict(params)
  return jax.tree_util.tree_map_with_path(lambda p, _: fans[_keys(p)], pure)


def _keys(path) -> tuple:
  return tuple(getattr(k, "key", getattr(k, "idx", k)) for k in path)


def _is_fan(x) -> bool:
  return isinstance(x, tuple) and len(x) == 2 and all(isinstance(v, int) for v in x)


def lr_multipliers(fans: Any, base_fans: Any) -> Any:
  """Per-parameter Adam learning-rate multipliers: base_fan_in / fan_in for kernels, else 1."""

  def one(fan, base):
    return base[0] / fan[0] if fan[0] else 1.0

  return jax.tree.map(one, fans, base_fans, is_leaf=_is_fan)


def init_scales(fans: Any) -> Any:
  """Factors turning Xavier (fan-average) initialized kernels into 1/fan_in variance."""

  def one(fan):
    return math.sqrt((fan[0] + fan[1]) / (2.0 * fan[0])) if fan[0] else 1.0

  return jax.tree.map(one, fans, is_leaf=_is_fan)


def base_config(dit_cfg: Any, base_width: int) -> Any:
  """The same model at `base_width` (heads scaled to keep the head dim)."""
  head_dim = dit_cfg.width // dit_cfg.heads
  return dataclasses.replace(dit_cfg, width=base_width, heads=max(1, base_width // head_dim))


def scale_tree(tree: Any, factors: Any) -> Any:
  """tree * factors leaf by leaf (factors are Python floats: constants under jit)."""
  return jax.tree.map(lambda x, f: x if f == 1.0 else x * f, tree, factors)
