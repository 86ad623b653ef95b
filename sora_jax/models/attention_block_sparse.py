"""Backend "block_sparse": attention on any XLA device that computes only the blocks that matter.

Packed rows are block diagonal: a query attends only to keys of its own
example. The reference ("xla") computes every row's full Lq x Lk logits and
masks most of them away; this backend cuts queries and keys into blocks of
`block` tokens and computes only the (query block, key block) pairs whose
segments can meet, with the exact segment mask (and any extra `mask`) inside
each pair:

  1. Each block is summarized by the smallest and largest non-zero segment id
     it holds; two blocks can meet when those intervals overlap. For packed
     rows (ids increase along the row) this is exact; for any other layout it
     is a superset, so results stay exact and only the savings shrink.
  2. The meeting pairs of each row are listed, up to a static bound
     `max_pairs` (below). A row with more pairs than that (a packing promise
     broken) runs the reference instead, through `lax.cond`: slower, never
     wrong.
  3. Pairs are processed in chunks under `lax.map`; a chunk holding no real
     pair of any row is skipped at run time (`lax.cond`), so the work follows
     the pairs that exist, not the bound. Each pair yields flash-attention
     partials (row max m, sum of exponentials l, unnormalized output o), which
     are combined per query block with segment reductions:
       M = max_p m_p,  L = sum_p e^(m_p - M) l_p,  out = sum_p e^(m_p - M) o_p / L.
     Queries with no visible key return zeros, as in the reference.

The static bound comes from the packing (`attention.Packing`: examples of at
most `max_len` tokens): a query block meets only key blocks within
ceil((max_len - 1) / block) blocks of it (`max_pairs`). Without a `Packing`
the bound is every pair of blocks (still skipped at run time, but the partials
then take Lk / Lq times the memory of the output).

Forward and backward are plain XLA ops (gathers, einsums, segment sums), so
`jax.grad` differentiates them; each chunk is rematerialized in the backward
pass. Parity with the reference, values and gradients, is tested on packed
rows whose segments straddle block boundaries (tests/test_attention_kernels.py).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from sora_jax.models.attention import Packing, register_backend, xla_attention

# Token block edges: the largest power of two in [MIN_BLOCK, MAX_BLOCK] not above the
# packing's longest example. Smaller blocks waste fewer logits on other examples' keys
# but gather and scatter more; on CPU, fwd+bwd of one 16k-token row of <= 96-token
# examples took 0.91 / 0.58 / 0.43 / 0.41 s at blocks 16 / 32 / 64 / 128 (dense: 12.0 s).
MIN_BLOCK, MAX_BLOCK = 16, 64
# Logits computed per chunk of pairs at most (all rows and heads together).
CHUNK_ELEMENTS = 1 << 21
_MASKED = -1e30


def choose_block(packing: Packing | None) -> int:
  """The block edge for rows packed under `packing` (see MIN_BLOCK, MAX_BLOCK)."""
  if packing is None:
    return MAX_BLOCK
  block = MIN_BLOCK
  while block * 2 <= min(MAX_BLOCK, packing.max_len):
    block *= 2
  return block


def max_pairs(length: int, block: int, packing: Packing | None, kv_length: int | None = None):
  """A static bound on the meeting (query block, key block) pairs of one row.

  With packed rows (contiguous examples of at most `packing.max_len` tokens), a
  segment that touches query block i lies within max_len - 1 tokens of it, so
  the key blocks i meets are within w = ceil((max_len - 1) / block) of i: at
  most 2w + 1 per query block. Without a packing (or for cross-attention):
  every pair.
  """
  nq = -(-length // block)
  nk = -(-(kv_length or length) // block)
  if packing is None or kv_length not in (None, length):
    return nq * nk
  w = -(-(min(packing.max_len, length) - 1) // block)
  return nq * min(nk, 2 * w + 1)


# "auto" uses this backend only where its static bound leaves at most this fraction of
# the dense pairs: with more, gathers and segment sums cost more than they save
# (docs/performance.md: at the demo's 256-token rows, 44% of the pairs, it ran 0.61x as fast).
AUTO_MAX_FRACTION = 0.25


def worthwhile(q_length: int, kv_length: int, packing: Packing | None) -> bool:
  """Whether skipping blocks can pay for its overhead on rows of these lengths."""
  block = choose_block(packing)
  lq, lk = -(-q_length // block) * block, -(-kv_length // block) * block
  pairs = max_pairs(lq, block, packing, lk)
  return pairs * block * block <= AUTO_MAX_FRACTION * lq * lk


def _pad(x: jax.Array, length: int) -> jax.Array:
  pad = length - x.shape[1]
  return x if pad == 0 else jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))


def _intervals(seg, block: int):
  """Per block [B, n]: the smallest and largest non-zero id (empty block: lo > hi)."""
  xp = np if isinstance(seg, np.ndarray) else jnp  # numpy in, numpy out (measurements).
  s = seg.reshape(seg.shape[0], -1, block)
  big = np.iinfo(np.int32).max
  lo = xp.min(xp.where(s > 0, s, big), axis=-1)
  hi = xp.max(xp.where(s > 0, s, 0), axis=-1)
  return lo, hi


def meeting_blocks(q_seg, kv_seg, block: int):
  """[B, nq, nk] bool: the pairs of blocks whose segment-id intervals overlap."""
  q_lo, q_hi = _intervals(q_seg, block)
  k_lo, k_hi = _intervals(kv_seg, block)
  return (q_lo[:, :, None] <= k_hi[:, None, :]) & (k_lo[:, None, :] <= q_hi[:, :, None])


@register_backend("block_sparse", uses_packing=True, worthwhile=worthwhile)
def block_sparse_attention(q, k, v, q_segment_ids, kv_segment_ids, *, mask=None, scale, packing):
  b, lq = q.shape[:2]
  lk = k.shape[1]
  block = choose_block(packing)
  lq_p, lk_p = -(-lq // block) * block, -(-lk // block) * block
  nq, nk = lq_p // block, lk_p // block
  limit = max_pairs(lq_p, block, packing, lk_p)

  qp, q_seg = _pad(q, lq_p), _pad(q_segment_ids, lq_p)
  kp, vp, kv_seg = _pad(k, lk_p), _pad(v, lk_p), _pad(kv_segment_ids, lk_p)
  maskp = None if mask is None else jnp.pad(mask, [(0, 0), (0, lq_p - lq), (0, lk_p - lk)])

  meets = meeting_blocks(q_seg, kv_seg, block).reshape(b, nq * nk)
  count = meets.sum(axis=-1)
  # Pair p of row r: flat index i * nk + j, or nq * nk (padding) past the row's count.
  flat = jax.vmap(lambda m: jnp.nonzero(m, size=limit, fill_value=nq * nk)[0])(meets)
  valid = flat < nq * nk
  qi = jnp.where(valid, flat // nk, nq)  # Query block nq collects the padding pairs.
  kj = jnp.where(valid, flat % nk, 0)

  def sparse(_):
    return _block_pairs(qp, kp, vp, q_seg, kv_seg, maskp, qi, kj, valid, block, scale, nq)[:, :lq]

  @jax.checkpoint  # As in attention_segments: the cond keeps no dense residuals.
  def dense(_):
    return xla_attention(q, k, v, q_segment_ids, kv_segment_ids, mask=mask, scale=scale)

  return jax.lax.cond(jnp.any(count > limit), dense, sparse, None)


def _block_pairs(q, k, v, q_seg, kv_seg, mask, qi, kj, valid, block, scale, nq):
  """Attention over the listed block pairs; see the module docstring, step 3."""
  b, lq_p, h, d = q.shape
  hkv = k.shape[2]
  pairs = qi.shape[1]
  qb = q.reshape(b, nq, block, h, d)
  kb = k.reshape(b, -1, block, hkv, d)
  vb = v.reshape(b, -1, block, hkv, d)
  qsb = q_seg.reshape(b, nq, block)
  ksb = kv_seg.reshape(b, -1, block)
  mb = None
  if mask is not None:  # [B, nq, block, nk, block]
    mb = mask.reshape(b, nq, block, -1, block)

  per_pair = b * h * block * block
  chunk = max(1, min(pairs, CHUNK_ELEMENTS // per_pair))
  n_chunks = -(-pairs // chunk)
  pad = n_chunks * chunk - pairs
  qi_c, kj_c, valid_c = (
    jnp.pad(x, [(0, 0), (0, pad)], constant_values=c).reshape(b, n_chunks, chunk)
    for x, c in ((qi, nq), (kj, 0), (valid, False))
  )
  take = jax.vmap(lambda x, i: x[i])  # Per row: blocks [n, ...] at indices [chunk].

  def one(args):
    i, j, ok = args  # [B, chunk] each
    qc = take(qb, jnp.minimum(i, nq - 1))  # [B, C, block, H, D]
    kc, vc = take(kb, j), take(vb, j)  # [B, C, block, Hkv, D]
    qs, ks = take(qsb, jnp.minimum(i, nq - 1)), take(ksb, j)  # [B, C, block]
    allowed = (qs[..., :, None] == ks[..., None, :]) & (ks[..., None, :] != 0) & ok[..., None, None]
    if mb is not None:
      mrow = take(mb, jnp.minimum(i, nq - 1))  # [B, C, block, nk, block]
      allowed &= jnp.take_along_axis(mrow, j[:, :, None, None, None], axis=3)[:, :, :, 0]
    if hkv != h:
      kc, vc = jnp.repeat(kc, h // hkv, axis=3), jnp.repeat(vc, h // hkv, axis=3)
    s = jnp.einsum("bcqhd,bckhd->bchqk", qc, kc, preferred_element_type=jnp.float32) * scale
    s = jnp.where(allowed[:, :, None], s, _MASKED)
    m = jax.lax.stop_gradient(jnp.max(s, axis=-1))  # [B, C, H, block]
    p = jnp.where(allowed[:, :, None], jnp.exp(s - m[..., None]), 0.0)
    row_sum = p.sum(axis=-1)
    o = jnp.einsum("bchqk,bckhd->bcqhd", p.astype(v.dtype), vc, preferred_element_type=jnp.float32)
    m = jnp.where(jnp.any(allowed, axis=-1)[:, :, None], m, _MASKED)
    return m, row_sum, o

  def skipped(args):
    i = args[0]
    c = i.shape[1]
    return (
      jnp.full((b, c, h, block), _MASKED, jnp.float32),
      jnp.zeros((b, c, h, block), jnp.float32),
      jnp.zeros((b, c, block, h, d), jnp.float32),
    )

  def chunk_fn(args):
    return jax.lax.cond(jnp.any(args[2]), one, skipped, args)

  m, sums, o = jax.lax.map(
    jax.checkpoint(chunk_fn),
    (jnp.moveaxis(qi_c, 1, 0), jnp.moveaxis(kj_c, 1, 0), jnp.moveaxis(valid_c, 1, 0)),
  )  # [n_chunks, B, C, ...]

  def flat(x):
    x = jnp.moveaxis(x, 0, 1)
    return x.reshape(b, n_chunks * chunk, *x.shape[3:])

  m, sums, o = flat(m), flat(sums), flat(o)
  seg = jnp.pad(qi, [(0, 0), (0, pad)], constant_values=nq)  # [B, P]

  def reduce(fn, x):  # Per row: combine the pairs' partials by query block.
    return jax.vmap(lambda xi, si: fn(xi, si, num_segments=nq + 1))(x, seg)

  big_m = jax.lax.stop_gradient(reduce(jax.ops.segment_max, m))  # [B, nq + 1, H, block]
  w = jnp.exp(m - jnp.take_along_axis(big_m, seg[:, :, None, None], axis=1))
  big_l = reduce(jax.ops.segment_sum, w * sums)[:, :nq]  # [B, nq, H, block]
  w_o = jnp.moveaxis(w, 2, 3)[..., None]  # [B, P, block, H, 1]
  big_o = reduce(jax.ops.segment_sum, w_o * o)[:, :nq]  # [B, nq, block, H, D]
  den = jnp.moveaxis(big_l, 2, 3)[..., None]  # [B, nq, block, H, 1]
  out = jnp.where(den > 0, big_o / jnp.where(den > 0, den, 1.0), 0.0)
  return out.reshape(b, lq_p, h, d).astype(q.dtype)


def waste(segment_ids, block: int, packing: Packing | None = None) -> dict[str, float]:
  """What this backend computes on rows `segment_ids [B, L]` (numpy), against what is needed.

  useful     same-segment (query, key) pairs (the logits a per-example model computes);
             "useful_pairs" counts them
  computed   block pairs x block^2 over the listed pairs that exist (chunk padding aside)
  bound      the static pair bound x block^2 (memory; and the work if nothing were skipped)
  """
  seg = np.asarray(segment_ids)
  length = -(-seg.shape[1] // block) * block
  seg = np.pad(seg, [(0, 0), (0, length - seg.shape[1])])
  useful = sum(int(np.sum(row == s)) ** 2 for row in seg for s in set(row.tolist()) - {0})
  meets = meeting_blocks(seg, seg, block)
  computed = int(meets.sum()) * block * block
  limit = max_pairs(length, block, packing)
  bound = limit * block * block * seg.shape[0]
  return {
    "block": block,
    "useful_pairs": useful,
    "useful_fraction_of_dense": useful / (seg.shape[0] * length * length),
    "waste": 1.0 - useful / max(computed, 1),
    "computed_fraction_of_dense": computed / (seg.shape[0] * length * length),
    "bound_fraction_of_dense": bound / (seg.shape[0] * length * length),
    "overflow_rows": int((meets.reshape(seg.shape[0], -1).sum(-1) > limit).sum()),
  }
