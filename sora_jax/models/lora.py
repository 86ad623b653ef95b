"""Low-rank adapters (LoRA) on the DiT's projections: config, parameter names, merging.

With `config.lora.rank = r > 0`, every `layers.Dense` of the chosen projections
gains flax's `nnx.LoRA` (factors A [in, r], B [r, out], parameters of type
`nnx.LoRAParam`; B starts at zero so a fresh adapter changes nothing) and
computes

  y = x W + b + (alpha / r) * (x A) B        (in and out dims flattened)

The factors carry logical axis names (A: W's first input name, B: W's first
output name), so they shard like the weight they adapt, and scanned blocks stack
them with a leading "layers" axis like every other block parameter. Targets:

  self_attention    q, k, v, out of each block's self-attention
  cross_attention   q, k, v, out of each block's cross-attention to the caption
  mlp               up, down (and gate, with model.mlp="swiglu") of each block's MLP

The text encoder is not adapted. We use flax's module rather than qwix: our
`Dense` contracts multi-dimensional kernels (embed -> heads x head_dim) through
`lax.dot_general` inside scanned blocks, where a LoRA module per `Dense` is a
few lines and keeps our sharding rules, while qwix's interception would add a
dependency to wrap the same two matmuls.

An adapter is applied at inference by `merge`: W' = W + scale * (alpha / r) A B,
exact up to float rounding, and free at sampling time; several adapters stack by
merging each in turn.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

TARGETS = ("self_attention", "cross_attention", "mlp")
ADAPTER_KEY = "lora"  # The attribute of a Dense that holds its nnx.LoRA.


@dataclasses.dataclass(frozen=True)
class LoraConfig:
  rank: int = 0
  alpha: float = 8.0
  targets: tuple[str, ...] = TARGETS

  @classmethod
  def from_config(cls, cfg: Mapping[str, Any] | None) -> LoraConfig | None:
    """From `config.lora`; None when absent or rank 0 (no adapters)."""
    if not cfg or int(cfg.get("rank", 0)) == 0:
      return None
    targets = cfg.get("targets", TARGETS)
    targets = (targets,) if isinstance(targets, str) else tuple(targets)
    return cls(rank=int(cfg["rank"]), alpha=float(cfg.get("alpha", 8.0)), targets=targets)

  def validate(self) -> list[str]:
    """Problems with the config, each naming the field (empty when fine)."""
    out = []
    if self.rank < 0:
      out.append(f"config.lora.rank={self.rank}: must be >= 0 (0 = no adapters)")
    if self.alpha <= 0:
      out.append(f"config.lora.alpha={self.alpha}: must be positive")
    bad = [t for t in self.targets if t not in TARGETS]
    if bad or not self.targets:
      out.append(f"config.lora.targets={list(self.targets)}: choose from {list(TARGETS)}")
    return out

  @property
  def scale(self) -> float:
    return self.alpha / self.rank

  def rank_for(self, target: str) -> int:
    """The rank of the adapters on one target's projections (0: none)."""
    return self.rank if target in self.targets else 0

  def to_json(self) -> dict[str, Any]:
    return {"rank": self.rank, "alpha": self.alpha, "targets": list(self.targets)}


def split(params: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
  """(base, adapter) parameter trees of a model with adapters (nested dicts)."""
  base, adapter = {}, {}
  for k, v in params.items():
    if k == ADAPTER_KEY:
      adapter[k] = v
    elif isinstance(v, Mapping):
      b, a = split(v)
      if b:
        base[k] = b
      if a:
        adapter[k] = a
    else:
      base[k] = v
  return base, adapter


def combine(base: Mapping[str, Any], adapter: Mapping[str, Any]) -> dict[str, Any]:
  """The inverse of `split`."""
  out = dict(base)
  for k, v in adapter.items():
    out[k] = combine(out.get(k, {}), v) if isinstance(v, Mapping) and k != ADAPTER_KEY else v
  return out


def merge(
  base: Mapping[str, Any], adapter: Mapping[str, Any], scale: float, lora_scale: float
) -> dict[str, Any]:
  """Base parameters with an adapter baked in: kernel += scale * lora_scale * A B.

  `adapter` holds `{..., "lora": {"lora_a": A, "lora_b": B}}` beside the
  kernels it adapts (the shape `split` returns); `lora_scale` is its alpha / r.
  Stacked layers (leading axes on A and B) merge layer by layer.
  """
  out = dict(base)
  for k, v in adapter.items():
    if k == ADAPTER_KEY:
      kernel = base["kernel"]
      a = jnp.asarray(v["lora_a"], jnp.float32)  # [..., in, r]
      b = jnp.asarray(v["lora_b"], jnp.float32)  # [..., r, out]
      delta = jnp.matmul(a, b).reshape(kernel.shape) * (scale * lora_scale)
      out["kernel"] = (jnp.asarray(kernel, jnp.float32) + delta).astype(kernel.dtype)
    else:
      if k not in base:
        raise KeyError(f"the adapter names {k!r}, which the base model does not have")
      out[k] = merge(base[k], v, scale, lora_scale)
  return out


def count(adapter: Mapping[str, Any]) -> int:
  return int(sum(x.size for x in jax.tree.leaves(adapter)))
