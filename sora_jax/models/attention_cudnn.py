"""Backend "cudnn": cuDNN fused attention via jax.nn.dot_product_attention.

jax.nn.dot_product_attention has no segment-id argument. Its
`query_seq_lengths` / `key_value_seq_lengths` describe one example followed by
padding per row, which cannot express packed rows, and segment ids are traced
values, so "this row holds one example" cannot be checked inside jit. The one
exact route is a dense boolean `mask`, which the cuDNN path accepts (it turns
it into an additive bias). So this backend builds the full [B, 1, Lq, Lk]
mask (same non-zero segment id, AND the optional extra mask) and passes it.

Supports: packed self- and cross-attention, the extra `mask`, grouped-query
heads (native in cuDNN), any lengths (odd ones padded by one with segment id
0, since cuDNN's training path with a bias needs even lengths).
Costs: the mask/bias is materialized, O(B * Lq * Lk) memory in HBM, like the
XLA reference's logits (but not per head); the kernel itself is fused. For
long packed self-attention prefer "pallas_gpu", which never builds it.

Refuses (AttentionUnsupported), before jax would fail in a less clear way:
  - q/k/v not bfloat16 or float16 (cuDNN flash attention has no f32 path);
  - head dims that are not a multiple of 8 or exceed 256 (128 before Hopper,
    which jax itself checks);
  - a default platform other than "gpu" (cuDNN needs an NVIDIA GPU).

Rows with no visible key (padding) get a uniform softmax from the bias and
are zeroed afterwards, as in the reference. `dense_mask_attention(...,
implementation="xla")` runs the same mask construction on any platform (how
the tests check it on CPU).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from sora_jax.models.attention import AttentionUnsupported, register_backend, segment_mask

DTYPES = (jnp.bfloat16, jnp.float16)
MAX_HEAD_DIM = 256


def _check(q, k, v):
  if not q.dtype == k.dtype == v.dtype or q.dtype not in DTYPES:
    raise AttentionUnsupported(
      f"model.attention='cudnn' needs bfloat16 or float16 q, k, v; got {q.dtype}, "
      f"{k.dtype}, {v.dtype} (use 'pallas_gpu' or 'xla' for float32)"
    )
  d = q.shape[-1]
  if d % 8 or d > MAX_HEAD_DIM:
    raise AttentionUnsupported(
      f"model.attention='cudnn' needs a head dim that is a multiple of 8 and at most "
      f"{MAX_HEAD_DIM}; got {d}"
    )
  if jax.default_backend() != "gpu":
    raise AttentionUnsupported(
      f"model.attention='cudnn' needs an NVIDIA GPU; the default platform is "
      f"{jax.default_backend()!r}"
    )


def dense_mask_attention(
  q, k, v, q_segment_ids, kv_segment_ids, *, mask=None, scale, implementation="cudnn"
):
  """Segment ids (and `mask`) as one dense mask for jax.nn.dot_product_attention."""
  lq, lk = q.shape[1], k.shape[1]
  allowed = segment_mask(q_segment_ids, kv_segment_ids)  # [B, Lq, Lk]
  if mask is not None:
    allowed &= mask
  visible = jnp.any(allowed, axis=-1)  # [B, Lq]
  pq, pk = lq % 2, lk % 2  # Pad odd lengths by one masked position.
  if pq or pk:
    allowed = jnp.pad(allowed, ((0, 0), (0, pq), (0, pk)))
    q = jnp.pad(q, ((0, 0), (0, pq), (0, 0), (0, 0)))
    k, v = (jnp.pad(x, ((0, 0), (0, pk), (0, 0), (0, 0))) for x in (k, v))
  out = jax.nn.dot_product_attention(
    q, k, v, mask=allowed[:, None], scale=float(scale), implementation=implementation
  )[:, :lq]
  return jnp.where(visible[..., None, None], out, 0).astype(q.dtype)


@register_backend("cudnn")
def cudnn_attention(q, k, v, q_segment_ids, kv_segment_ids, *, mask=None, scale):
  _check(q, k, v)
  return dense_mask_attention(q, k, v, q_segment_ids, kv_segment_ids, mask=mask, scale=scale)
