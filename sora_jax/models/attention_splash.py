"""Backend "splash_tpu": Pallas splash attention for TPU, with segment ids.

Wraps `jax.experimental.pallas.ops.tpu.splash_attention.make_splash_mha` with
a FullMask per head: the kernel masks by `SegmentIds(q=..., kv=...)` (separate
q and kv ids), works per example on [H, L, D] (vmapped over the batch here),
and has a custom VJP (Pallas dq and dkv kernels).

Supports: packed self-attention and cross-attention (different q/kv lengths
and ids), grouped-query heads natively (query head h reads kv head
h // (H // Hkv), as the reference), any lengths (each padded with segment id
0 to a multiple of 128 and tiled by the largest of 512/256/128 that divides
it, then sliced), f32/bf16. The kernel has no scale argument, so q is scaled
before the call (in q's dtype).

Refuses (AttentionUnsupported): an extra `mask`. A per-example dense mask
would have to be a static (numpy) splash mask or a dynamic jax mask processed
per call; neither fits a batched, traced [B, Lq, Lk] mask.

Rows with no visible key: splash compares ids with ==, so padding queries (id
0) attend to padding keys, and a query whose id never occurs among the keys
(cross-attention to an example with no caption) gets a uniform average. Both
are zeroed afterwards, as in the reference, using an O(L log L) membership
test rather than an [Lq, Lk] mask. "splash_tpu_interpret" runs the kernel in
Pallas interpret mode on any platform (tests on CPU). Under a multi-device
mesh wrap the call in shard_map (the kernel offers `manual_sharding_spec`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu import splash_attention as splash

from sora_jax.models.attention import AttentionUnsupported, has_visible_key, register_backend

LANES = 128  # Kernel blocks along kv must be multiples of the TPU lane width.
BLOCKS = (512, 256, 128)  # Largest first; the one used must divide the padded length.


def blocking(length: int) -> tuple[int, int]:
  """(block, padded length): length rounded up to 128, tiled by the largest block."""
  padded = -(-length // LANES) * LANES
  return next(b for b in BLOCKS if padded % b == 0), padded


@functools.lru_cache(maxsize=64)
def _kernel(heads: int, q_len: int, kv_len: int, bq: int, bkv: int, interpret: bool):
  sizes = splash.BlockSizes(
    block_q=bq,
    block_kv=bkv,
    block_kv_compute=bkv,
    block_q_dkv=bq,
    block_kv_dkv=bkv,
    block_kv_dkv_compute=bkv,
    block_q_dq=bq,
    block_kv_dq=bkv,
  )
  mask = splash.MultiHeadMask([splash.FullMask((q_len, kv_len)) for _ in range(heads)])
  # The kernel holds its block-mask tables as arrays; make them concrete even
  # when first built inside a trace, so the cached kernel never leaks a tracer.
  with jax.ensure_compile_time_eval():
    return splash.make_splash_mha(
      mask, block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret
    )


def splash_attention(q, k, v, q_segment_ids, kv_segment_ids, *, mask=None, scale, interpret=False):
  name = "splash_tpu_interpret" if interpret else "splash_tpu"
  if mask is not None:
    raise AttentionUnsupported(
      f"model.attention={name!r} cannot apply an extra attention mask (only segment "
      "ids); use 'xla' or 'cudnn' for masked attention"
    )
  _, lq, h, _ = q.shape
  lk = k.shape[1]
  bq, lq_pad = blocking(lq)
  bkv, lk_pad = blocking(lk)
  q_seg = jnp.pad(q_segment_ids.astype(jnp.int32), ((0, 0), (0, lq_pad - lq)))
  kv_seg = jnp.pad(kv_segment_ids.astype(jnp.int32), ((0, 0), (0, lk_pad - lk)))

  def heads_first(x, pad):  # [B, L, H, D] -> [B, H, L + pad, D]
    return jnp.pad(x, ((0, 0), (0, pad), (0, 0), (0, 0))).transpose(0, 2, 1, 3)

  qh = heads_first((q * scale).astype(q.dtype), lq_pad - lq)
  kh, vh = heads_first(k, lk_pad - lk), heads_first(v, lk_pad - lk)
  kernel = _kernel(h, lq_pad, lk_pad, bq, bkv, interpret)
  out = jax.vmap(lambda q, k, v, sq, skv: kernel(q, k, v, splash.SegmentIds(q=sq, kv=skv)))(
    qh, kh, vh, q_seg, kv_seg
  )
  out = out.transpose(0, 2, 1, 3)[:, :lq]
  visible = has_visible_key(q_segment_ids, kv_segment_ids)
  return jnp.where(visible[..., None, None], out, 0).astype(q.dtype)


register_backend("splash_tpu")(splash_attention)


@register_backend("splash_tpu_interpret")
def splash_interpret_attention(q, k, v, q_segment_ids, kv_segment_ids, *, mask=None, scale):
  return splash_attention(
    q, k, v, q_segment_ids, kv_segment_ids, mask=mask, scale=scale, interpret=True
  )
