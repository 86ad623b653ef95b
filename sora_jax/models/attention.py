"""One attention call for every layer, with backends behind it.

  attention(q, k, v, q_segment_ids, kv_segment_ids, backend="xla")

A query attends to a key only when both carry the same non-zero segment id, so
examples packed into one row never see each other and padding (id 0) is
ignored. Queries with no visible key (padding) return zeros. An optional extra
boolean `mask` narrows the segment mask further (e.g. prompts gated to a window
of frames); a backend that cannot express what it is asked for refuses with
`AttentionUnsupported` instead of silently ignoring it.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp


class AttentionUnsupported(ValueError):
  """The chosen backend cannot express this attention (mask, shape or platform)."""


Backend = Callable[..., jax.Array]
_BACKENDS: dict[str, Backend] = {}


def register_backend(name: str) -> Callable[[Backend], Backend]:
  def wrap(fn: Backend) -> Backend:
    _BACKENDS[name] = fn
    return fn

  return wrap


def backends() -> list[str]:
  return sorted(_BACKENDS)


def resolve_backend(name: str) -> str:
  """Maps "auto" to the platform's default backend; validates names."""
  if name == "auto":
    return "xla"
  if name not in _BACKENDS:
    raise ValueError(
      f"model.attention={name!r}; allowed: 'auto', {', '.join(map(repr, backends()))}"
    )
  return name


def attention(
  q: jax.Array,  # [B, Lq, H, Dh]
  k: jax.Array,  # [B, Lk, Hkv, Dh]
  v: jax.Array,  # [B, Lk, Hkv, Dh]
  q_segment_ids: jax.Array,  # [B, Lq] int, 0 = padding
  kv_segment_ids: jax.Array,  # [B, Lk] int, 0 = padding
  *,
  mask: jax.Array | None = None,  # [B, Lq, Lk] bool, True = may attend
  scale: float | None = None,
  backend: str = "auto",
) -> jax.Array:  # [B, Lq, H, Dh]
  """Block-diagonal (segment-masked) softmax attention."""
  if q.ndim != 4 or k.shape != v.shape or q.shape[0] != k.shape[0] or q.shape[-1] != k.shape[-1]:
    raise ValueError(f"attention shapes q={q.shape} k={k.shape} v={v.shape} do not fit")
  if q.shape[2] % k.shape[2]:
    raise ValueError(f"query heads {q.shape[2]} must be a multiple of key heads {k.shape[2]}")
  if q_segment_ids.shape != q.shape[:2] or kv_segment_ids.shape != k.shape[:2]:
    raise ValueError(
      f"segment ids {q_segment_ids.shape}, {kv_segment_ids.shape} do not match "
      f"q {q.shape[:2]} and k {k.shape[:2]}"
    )
  scale = q.shape[-1] ** -0.5 if scale is None else scale
  return _BACKENDS[resolve_backend(backend)](
    q, k, v, q_segment_ids, kv_segment_ids, mask=mask, scale=scale
  )


def segment_mask(q_segment_ids: jax.Array, kv_segment_ids: jax.Array) -> jax.Array:
  """[B, Lq, Lk] bool: same non-zero segment."""
  return (q_segment_ids[:, :, None] == kv_segment_ids[:, None, :]) & (
    kv_segment_ids[:, None, :] != 0
  )


@register_backend("xla")
def xla_attention(q, k, v, q_segment_ids, kv_segment_ids, *, mask=None, scale):
  """The reference: materialized float32 logits, masked softmax, weighted sum."""
  h, hkv = q.shape[2], k.shape[2]
  allowed = segment_mask(q_segment_ids, kv_segment_ids)
  if mask is not None:
    allowed &= mask
  if hkv != h:  # Grouped query heads share a key head.
    k, v = jnp.repeat(k, h // hkv, axis=2), jnp.repeat(v, h // hkv, axis=2)
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
  logits = logits + jnp.where(allowed, 0.0, _MASKED)[:, None]
  probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  out = jnp.einsum("bhqk,bkhd->bqhd", probs, v)
  visible = jnp.any(allowed, axis=-1)  # [B, Lq]; a query with no key returns zeros.
  return jnp.where(visible[..., None, None], out, 0).astype(q.dtype)


# A large finite negative: exp underflows to 0, and a row with no visible key
# stays finite (uniform) before it is zeroed.
_MASKED = -1e30
