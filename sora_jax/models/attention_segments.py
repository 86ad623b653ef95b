"""Backend "segments": attention example by example, on any XLA device.

A packed row holds whole examples, each contiguous, at most
`packing.max_segments` (S) of at most `packing.max_len` (M) tokens (the
packer's caps, `attention.Packing`). This backend gathers each example's
tokens into a slot of M positions, runs dense attention inside every slot
(`[B, S, M, M]` logits, the padding positions of a slot masked), and gathers
the outputs back into the row:

  logits per row:  S * M^2  instead of the reference's L^2.

The blocks of this block-sparse layout are the examples themselves, so no
logit pairs two examples; what is computed but unused is the slot padding
(examples shorter than M, rows with fewer than S examples). The gathers are
partial permutations, and the transpose of each is the gather the other way
(a custom VJP), so the backward pass has no scatter: on CPUs one layer runs
ahead of both the reference and the pair-listing "block_sparse" backend on the
demo's rows and on long rows of short examples (docs/performance.md).

The contract, checked on device for every call: segment ids are 1..S in row
order (0 = padding), each segment is contiguous and at most M tokens long. A
row that breaks it runs the reference instead, through `lax.cond`: slower,
never wrong. Without a `Packing` the backend refuses (`AttentionUnsupported`),
and "auto" uses the reference for that call.

Cross-attention to packed captions is the same computation with keys slotted
by their own cap (`Packing.kv_max_len`, the caption length): example s's
queries meet example s's caption, `[B, S, M, Mk]` logits in place of the
reference's `[B, L, Lk]` (12 x 40 x 16 against 256 x 192 at the demo's rows).
Keys of other lengths without a `kv_max_len` are refused.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from sora_jax.models.attention import (
  AttentionUnsupported,
  Packing,
  register_backend,
  xla_attention,
)

_MASKED = -1e30
# "auto" uses this backend where the slots hold at most this fraction of the dense row's
# logits. Measured on the demo's rows (29%: self-attention; 16%: cross-attention to the
# captions; 8%: the caption encoder) the whole training step runs 1.09x the reference,
# and long rows of short examples (under 1%) gain several-fold (docs/performance.md);
# between 30% and 50% it is not measured.
AUTO_MAX_FRACTION = 0.5


def slot_lengths(q_length: int, kv_length: int, packing: Packing | None) -> tuple[int, int]:
  """The query and key slot lengths; raises AttentionUnsupported where the backend refuses."""
  if packing is None:
    raise AttentionUnsupported("segments needs the rows' packing (attention.Packing)")
  m_q = min(packing.max_len, q_length)
  if packing.kv_max_len is not None:  # Keys packed apart (cross-attention to captions).
    return m_q, min(packing.kv_max_len, kv_length)
  if kv_length != q_length:
    raise AttentionUnsupported(
      f"segments: {q_length} queries x {kv_length} keys, and the packing gives no kv_max_len"
    )
  return m_q, m_q


def slot_fraction(q_length: int, kv_length: int, packing: Packing | None) -> float:
  """The slots' logits as a fraction of the dense row's (inf where the backend refuses)."""
  try:
    m_q, m_k = slot_lengths(q_length, kv_length, packing)
  except AttentionUnsupported:
    return float("inf")
  return packing.max_segments * m_q * m_k / (q_length * kv_length)


def worthwhile(q_length: int, kv_length: int, packing: Packing | None) -> bool:
  return slot_fraction(q_length, kv_length, packing) <= AUTO_MAX_FRACTION


@jax.custom_vjp
def _permute(x, idx, ok, inv, inv_ok):
  """Per row: x[idx] where ok, else 0. (idx, ok) and (inv, inv_ok) are inverse maps."""
  y = jax.vmap(lambda a, i: a[i])(x, idx)
  return jnp.where(ok.reshape(ok.shape + (1,) * (x.ndim - 2)), y, 0)


def _permute_fwd(x, idx, ok, inv, inv_ok):
  return _permute(x, idx, ok, inv, inv_ok), (idx, ok, inv, inv_ok)


def _permute_bwd(res, g):
  idx, ok, inv, inv_ok = res
  return _permute(g, inv, inv_ok, idx, ok), None, None, None, None


_permute.defvjp(_permute_fwd, _permute_bwd)


def slot_maps(segment_ids: jax.Array, num_slots: int, slot_len: int):
  """The token <-> slot maps of rows `[B, L]` and whether every row keeps the contract.

  Returns (slot_token [B, S*M], slot_ok, token_slot [B, L], token_ok, keeps [B]):
  slot s*M + p holds the p-th token of segment s + 1.
  """
  b, length = segment_ids.shape
  one_hot = segment_ids[:, :, None] == jnp.arange(1, num_slots + 1, dtype=segment_ids.dtype)
  lens = one_hot.sum(axis=1)  # [B, S]
  starts = jnp.argmax(one_hot, axis=1)  # [B, S]; 0 for an absent segment
  pos = jnp.arange(slot_len)
  slot_ok = (pos < lens[:, :, None]).reshape(b, num_slots * slot_len)
  slot_token = jnp.where(slot_ok, (starts[:, :, None] + pos).reshape(b, -1), 0)
  slot_token = jnp.minimum(slot_token, length - 1)
  token_ok = segment_ids > 0
  sid = jnp.clip(segment_ids - 1, 0, num_slots - 1)
  offset = jnp.arange(length) - jnp.take_along_axis(starts, sid, axis=1)
  token_slot = jnp.where(token_ok, sid * slot_len + jnp.clip(offset, 0, slot_len - 1), 0)
  # The contract: ids within 1..S, segments of at most M tokens, each contiguous (then
  # every token's offset from its segment's first token is below its segment's length).
  seg_len = jnp.take_along_axis(lens, sid, axis=1)
  keeps = jnp.all(
    ~token_ok | ((segment_ids <= num_slots) & (offset >= 0) & (offset < seg_len)), axis=1
  ) & jnp.all(lens <= slot_len, axis=1)
  return slot_token, slot_ok, token_slot, token_ok, keeps


@register_backend("segments", uses_packing=True, worthwhile=worthwhile)
def segments_attention(q, k, v, q_segment_ids, kv_segment_ids, *, mask=None, scale, packing):
  m_q, m_k = slot_lengths(q.shape[1], k.shape[1], packing)
  # Whether the keys are the queries' rows (one array): one set of slot maps serves both.
  same = q_segment_ids is kv_segment_ids and m_k == m_q
  static = (float(scale), packing.max_segments, m_q, m_k, same)
  return _attend(q, k, v, q_segment_ids, kv_segment_ids, mask, static)


# The contract check picks the slots or the reference with a `lax.cond`. Differentiated
# through, a cond hands out the residuals of both branches (the one not taken filled with
# zeros), which on CPUs cost as much as the slots' attention. So the cond sits inside a
# custom VJP whose residuals are the inputs: the backward pass takes the same branch and
# recomputes that branch's forward before its gradient (one more slot attention forward).
@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def _attend(q, k, v, q_segment_ids, kv_segment_ids, mask, static):
  keeps, sparse, dense = _branches(q_segment_ids, kv_segment_ids, mask, static)
  return jax.lax.cond(keeps, sparse, dense, q, k, v)


def _attend_fwd(q, k, v, q_segment_ids, kv_segment_ids, mask, static):
  out = _attend(q, k, v, q_segment_ids, kv_segment_ids, mask, static)
  return out, (q, k, v, q_segment_ids, kv_segment_ids, mask)


def _attend_bwd(static, res, g):
  q, k, v, q_segment_ids, kv_segment_ids, mask = res
  keeps, sparse, dense = _branches(q_segment_ids, kv_segment_ids, mask, static)

  def grad_of(fn):
    return lambda q, k, v, g: jax.vjp(fn, q, k, v)[1](g)

  dq, dk, dv = jax.lax.cond(keeps, grad_of(sparse), grad_of(dense), q, k, v, g)
  return dq, dk, dv, None, None, None


_attend.defvjp(_attend_fwd, _attend_bwd)


def _branches(q_segment_ids, kv_segment_ids, mask, static):
  """(whether every row keeps the contract, slots(q, k, v), reference(q, k, v))."""
  scale, s_n, m_n, m_k, same = static
  q_maps = slot_maps(q_segment_ids, s_n, m_n)
  kv_maps = q_maps if same else slot_maps(kv_segment_ids, s_n, m_k)

  def sparse(q, k, v):
    b, _, h, d = q.shape
    hkv = k.shape[2]
    q_tok, q_ok, q_slot, q_tok_ok, _ = q_maps
    k_tok, k_ok, k_slot, k_tok_ok, _ = kv_maps
    qs = _permute(q, q_tok, q_ok, q_slot, q_tok_ok).reshape(b, s_n, m_n, h, d)
    ks = _permute(k, k_tok, k_ok, k_slot, k_tok_ok).reshape(b, s_n, m_k, hkv, d)
    vs = _permute(v, k_tok, k_ok, k_slot, k_tok_ok).reshape(b, s_n, m_k, hkv, d)
    if hkv != h:
      ks, vs = jnp.repeat(ks, h // hkv, axis=3), jnp.repeat(vs, h // hkv, axis=3)
    qo, ko = q_ok.reshape(b, s_n, m_n), k_ok.reshape(b, s_n, m_k)
    # Slot s holds segment s + 1 on both sides, so a query slot's keys are its example's.
    allowed = qo[..., :, None] & ko[..., None, :]  # [B, S, M, Mk]
    if mask is not None:
      qt, kt = q_tok.reshape(b, s_n, m_n), k_tok.reshape(b, s_n, m_k)
      allowed &= jax.vmap(lambda mk, i, j: mk[i[:, :, None], j[:, None, :]])(mask, qt, kt)
    logits = jnp.einsum("bsqhd,bskhd->bshqk", qs, ks, preferred_element_type=jnp.float32)
    logits = logits * scale + jnp.where(allowed, 0.0, _MASKED)[:, :, None]
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    out = jnp.einsum("bshqk,bskhd->bsqhd", probs, vs)
    visible = jnp.any(allowed, axis=-1)  # [B, S, M]; a query with no key returns zeros.
    out = jnp.where(visible[..., None, None], out, 0).reshape(b, s_n * m_n, h, d)
    return _permute(out, q_slot, q_tok_ok, q_tok, q_ok).astype(q.dtype)

  def dense(q, k, v):
    return xla_attention(q, k, v, q_segment_ids, kv_segment_ids, mask=mask, scale=scale)

  return jnp.all(q_maps[4]) & jnp.all(kv_maps[4]), sparse, dense


def waste(segment_ids, packing: Packing, kv_segment_ids=None) -> dict[str, float]:
  """What this backend computes on rows `segment_ids [B, L]` (numpy), against what is needed.

  useful    same-segment (query, key) pairs; computed: S * M * Mk per row (every slot,
  used or not); broken_rows: rows that break the contract and run the reference.
  `kv_segment_ids [B, Lk]`: the keys of a cross-attention (`packing.kv_max_len` slots).
  """
  seg = np.asarray(segment_ids)
  kv = seg if kv_segment_ids is None else np.asarray(kv_segment_ids)
  rows, length = seg.shape
  m, m_k = slot_lengths(length, kv.shape[1], packing)
  useful = sum(
    int(np.sum(q_row == s)) * int(np.sum(k_row == s))
    for q_row, k_row in zip(seg, kv)
    for s in set(q_row.tolist()) - {0}
  )
  computed = rows * packing.max_segments * m * m_k

  def breaks(row, cap):
    ids = row[row > 0]
    if not ids.size:
      return False
    runs = ids[np.r_[True, ids[1:] != ids[:-1]]]
    lengths = np.bincount(ids)[1:]
    return (
      len(set(runs.tolist())) != len(runs)
      or ids.max() > packing.max_segments
      or (lengths.max() > cap)
    )

  broken = sum(breaks(q_row, m) or breaks(k_row, m_k) for q_row, k_row in zip(seg, kv))
  return {
    "useful_fraction_of_dense": useful / (rows * length * kv.shape[1]),
    "waste": 1.0 - useful / max(computed, 1),
    "computed_fraction_of_dense": computed / (rows * length * kv.shape[1]),
    "broken_rows": int(broken),
  }
