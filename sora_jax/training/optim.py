"""The optimizer: AdamW, warmup + cosine decay, global-norm clipping, a weight-decay mask, EMA.

Gradients and optimizer moments are float32 (parameters are stored in float32).
Weight decay applies to matrices named `kernel` only, not to biases, norm
scales, embedding tables or adaLN tables.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from sora_jax.models import mup


def schedule(cfg: Mapping[str, Any], num_steps: int) -> optax.Schedule:
  """Linear warmup to `lr`, then cosine decay to `lr * min_lr_ratio` at `num_steps`."""
  warmup = int(cfg["warmup_steps"])
  decay = max(int(cfg.get("decay_steps") or num_steps), warmup + 1)
  return optax.warmup_cosine_decay_schedule(
    init_value=0.0,
    peak_value=float(cfg["lr"]),
    warmup_steps=warmup,
    decay_steps=decay,
    end_value=float(cfg["lr"]) * float(cfg["min_lr_ratio"]),
  )


def decay_mask(params: Any) -> Any:
  """True for the parameters weight decay applies to (matrices named `kernel`)."""

  def leaf(path, _):
    return getattr(path[-1], "key", getattr(path[-1], "name", None)) == "kernel"

  return jax.tree_util.tree_map_with_path(leaf, params)


def make(
  cfg: Mapping[str, Any], num_steps: int, lr_multipliers: Any = None
) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """AdamW on the schedule; `lr_multipliers` (a tree of floats shaped like the parameters,
  e.g. muP's) scales each parameter's update, weight decay included."""
  lr = schedule(cfg, num_steps)
  parts = [
    optax.clip_by_global_norm(float(cfg["clip_norm"])),
    optax.adamw(
      lr,
      b1=float(cfg["b1"]),
      b2=float(cfg["b2"]),
      eps=float(cfg["eps"]),
      weight_decay=float(cfg["weight_decay"]),
      mask=decay_mask,
    ),
  ]
  if lr_multipliers is not None:
    parts.append(scale_per_parameter(lr_multipliers))
  return optax.chain(*parts), lr


def scale_per_parameter(factors: Any) -> optax.GradientTransformation:
  """Multiplies each parameter's update by its (static) factor."""

  def update(updates, state, params=None):
    del params
    return mup.scale_tree(updates, factors), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def ema_update(ema: Any, params: Any, step: jax.Array, decay: float) -> Any:
  """EMA with warmup: the effective decay is min(decay, (1 + step) / (10 + step))."""
  d = jnp.minimum(decay, (1.0 + step) / (10.0 + step)).astype(jnp.float32)
  return jax.tree.map(lambda e, p: e * d + p.astype(e.dtype) * (1.0 - d), ema, params)
