"""Backend "pallas_gpu": the Pallas (Triton) flash-attention kernel with segment ids.

Wraps `jax.experimental.pallas.ops.gpu.attention.mha`, which takes q, k, v as
[B, L, H, D] and ONE segment-id array [B, L] shared by queries and keys, and
has a custom VJP (fused Triton backward).

Supports: packed self-attention (several segments and padding per row), any
sequence length (padded with segment id 0 to the kernel's blocks, then
sliced), grouped-query heads (k/v heads repeated to the query heads), head
dims 16..256 (the kernel pads them to a power of two internally), f32/bf16/f16
(f32 matmuls run as TF32 on GPU).

Refuses (AttentionUnsupported):
  - an extra `mask`: the kernel has no mask input;
  - cross-attention: different q/kv lengths, or q and kv segment ids that are
    not the same array (the kernel takes one array for both; inside jit only
    identity can be checked, so self-attention must pass one array twice);
  - head dims below 16 (Triton's dot needs K >= 16) or above 256 (beyond the
    kernel's tile budget);
  - q, k, v of different dtypes.

The kernel lets padding queries (id 0) attend to padding keys; their outputs
are zeroed afterwards, as in the reference. "pallas_gpu_interpret" runs the
same kernel through Pallas interpret mode on any platform (tests on CPU).
Under a multi-device mesh the pallas_call is not partitioned automatically:
call it inside shard_map over the batch axis.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.gpu import attention as gpu_attention

from sora_jax.models.attention import AttentionUnsupported, register_backend

BLOCK = 128  # Forward q/k block of the kernel's defaults (backward blocks: 32).
MIN_HEAD_DIM, MAX_HEAD_DIM = 16, 256


def padded_length(length: int) -> int:
  """A length the kernel's power-of-two blocks tile: a power of two >= 32 up to
  one block, else a multiple of the block."""
  if length <= BLOCK:
    return max(32, 1 << (length - 1).bit_length())
  return -(-length // BLOCK) * BLOCK


def _check(q, k, v, q_segment_ids, kv_segment_ids, mask, name):
  if mask is not None:
    raise AttentionUnsupported(
      f"model.attention={name!r} cannot apply an extra attention mask (the kernel "
      "only masks by segment id); use 'xla' or 'cudnn' for masked attention"
    )
  if q.shape[1] != k.shape[1]:
    raise AttentionUnsupported(
      f"model.attention={name!r} is self-attention only: q length {q.shape[1]} != "
      f"kv length {k.shape[1]}; use 'splash_tpu', 'cudnn' or 'xla' for cross-attention"
    )
  if q_segment_ids is not kv_segment_ids:
    same = False
    if not isinstance(q_segment_ids, jax.core.Tracer) and not isinstance(
      kv_segment_ids, jax.core.Tracer
    ):
      same = bool(jnp.array_equal(q_segment_ids, kv_segment_ids))
    if not same:
      raise AttentionUnsupported(
        f"model.attention={name!r} takes one segment-id array for queries and keys; "
        "got different q and kv segment ids (cross-attention). Pass the same array "
        "twice for self-attention, or use 'splash_tpu', 'cudnn' or 'xla'"
      )
  d = q.shape[-1]
  if not MIN_HEAD_DIM <= d <= MAX_HEAD_DIM:
    raise AttentionUnsupported(
      f"model.attention={name!r} takes head dims {MIN_HEAD_DIM}..{MAX_HEAD_DIM}, got {d}"
    )
  if not q.dtype == k.dtype == v.dtype:
    raise AttentionUnsupported(
      f"model.attention={name!r} needs q, k, v of one dtype, got {q.dtype}, {k.dtype}, {v.dtype}"
    )


def pallas_gpu_attention(
  q, k, v, q_segment_ids, kv_segment_ids, *, mask=None, scale, interpret=False
):
  name = "pallas_gpu_interpret" if interpret else "pallas_gpu"
  _check(q, k, v, q_segment_ids, kv_segment_ids, mask, name)
  _, length, h, _ = q.shape
  hkv = k.shape[2]
  if hkv != h:  # The kernel indexes k/v by the query head.
    k, v = jnp.repeat(k, h // hkv, axis=2), jnp.repeat(v, h // hkv, axis=2)
  pad = padded_length(length) - length
  seg = q_segment_ids.astype(jnp.int32)
  if pad:
    q, k, v = (jnp.pad(x, ((0, 0), (0, pad), (0, 0), (0, 0))) for x in (q, k, v))
    seg = jnp.pad(seg, ((0, 0), (0, pad)))  # Id 0: padding.
  out = gpu_attention.mha(
    q,
    k,
    v,
    seg,
    sm_scale=float(scale),
    block_sizes=gpu_attention.BlockSizes.get_default(),
    interpret=interpret,
  )[:, :length]
  # Padding queries attended to padding keys inside the kernel; the reference
  # returns zeros there.
  return jnp.where((q_segment_ids != 0)[..., None, None], out, 0).astype(out.dtype)


register_backend("pallas_gpu")(pallas_gpu_attention)


@register_backend("pallas_gpu_interpret")
def pallas_gpu_interpret_attention(q, k, v, q_segment_ids, kv_segment_ids, *, mask=None, scale):
  return pallas_gpu_attention(
    q, k, v, q_segment_ids, kv_segment_ids, mask=mask, scale=scale, interpret=True
  )
