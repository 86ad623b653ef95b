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
(examples shorter than M, rows with fewer than S examples). Slots are
head-major (`[B, H, S, M, D]`), so every einsum is a plain batched matmul, and
the backward pass is flash attention's: the logits recomputed, the
probabilities from the forward's log-sum-exp, no softmax and no stored
`[.., M, M]` residuals. On CPUs one layer runs ahead of both the reference and
the pair-listing "block_sparse" backend on the demo's rows and on long rows of
short examples (docs/performance.md).

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


def _to_slots(x, index, slots: int):
  """Rows `[B, L, H, D]` -> head-major slots `[B, H, S, M, D]`.

  Head-major, every slot's (M, D) block is contiguous, so the attention einsums are
  plain batched matmuls. Slot positions past an example's end hold some other token
  of the row: finite values that the masks keep out of every result.
  """
  b, _, h, d = x.shape
  y = jax.vmap(lambda a, i: a[:, i])(jnp.swapaxes(x, 1, 2), index)  # [B, H, S*M, D]
  return y.reshape(b, h, slots, -1, d)


def _to_rows(y, index, ok):
  """Head-major slots `[B, H, S, M, D]` -> rows `[B, L, H, D]` (zeros where not `ok`)."""
  b, h, s, m, d = y.shape
  x = jax.vmap(lambda a, i: a[:, i])(y.reshape(b, h, s * m, d), index)  # [B, H, L, D]
  return jnp.swapaxes(jnp.where(ok[:, None, :, None], x, 0), 1, 2)


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
# custom VJP whose residuals are small and the same for both branches: the inputs, the
# output and the slots' log-sum-exp. The backward pass takes the same branch: in slots,
# the flash-attention backward (the logits recomputed, the probabilities from the
# log-sum-exp, no softmax); for the reference, its VJP.
@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def _attend(q, k, v, q_segment_ids, kv_segment_ids, mask, static):
  return _attend_fwd(q, k, v, q_segment_ids, kv_segment_ids, mask, static)[0]


def _attend_fwd(q, k, v, q_segment_ids, kv_segment_ids, mask, static):
  scale, s_n, m_q, _, _ = static
  q_maps, kv_maps = _maps(q_segment_ids, kv_segment_ids, static)
  b, _, h, _ = q.shape

  def sparse(q, k, v):
    return _slots_forward(q, k, v, q_maps, kv_maps, mask, scale, s_n)

  def dense(q, k, v):
    out = xla_attention(q, k, v, q_segment_ids, kv_segment_ids, mask=mask, scale=scale)
    return out, jnp.zeros((b, h, s_n, m_q), jnp.float32)

  keeps = jnp.all(q_maps[4]) & jnp.all(kv_maps[4])
  out, lse = jax.lax.cond(keeps, sparse, dense, q, k, v)
  return out, (q, k, v, q_segment_ids, kv_segment_ids, mask, out, lse)


def _attend_bwd(static, res, g):
  q, k, v, q_segment_ids, kv_segment_ids, mask, out, lse = res
  scale, s_n, _, _, _ = static
  q_maps, kv_maps = _maps(q_segment_ids, kv_segment_ids, static)

  def sparse(q, k, v, out, lse, g):
    return _slots_backward(q, k, v, out, lse, g, q_maps, kv_maps, mask, scale, s_n)

  def dense(q, k, v, out, lse, g):
    fn = lambda q, k, v: xla_attention(
      q, k, v, q_segment_ids, kv_segment_ids, mask=mask, scale=scale
    )
    return jax.vjp(fn, q, k, v)[1](g)

  keeps = jnp.all(q_maps[4]) & jnp.all(kv_maps[4])
  dq, dk, dv = jax.lax.cond(keeps, sparse, dense, q, k, v, out, lse, g)
  return dq, dk, dv, None, None, None


_attend.defvjp(_attend_fwd, _attend_bwd)


def _maps(q_segment_ids, kv_segment_ids, static):
  _, s_n, m_q, m_k, same = static
  q_maps = slot_maps(q_segment_ids, s_n, m_q)
  return q_maps, (q_maps if same else slot_maps(kv_segment_ids, s_n, m_k))


def _slot_logits(q, k, q_maps, kv_maps, mask, scale, s_n):
  """(q and k in slots, the logits [B, H, S, M, Mk] in float32, masked pairs at -1e30)."""
  q_tok, q_ok = q_maps[:2]
  k_tok, k_ok = kv_maps[:2]
  h, hkv = q.shape[2], k.shape[2]
  qs = _to_slots(q, q_tok, s_n)
  ks = _to_slots(k, k_tok, s_n)
  if hkv != h:
    ks = jnp.repeat(ks, h // hkv, axis=1)
  b, m_q, m_k = q.shape[0], qs.shape[3], ks.shape[3]
  qo, ko = q_ok.reshape(b, s_n, m_q), k_ok.reshape(b, s_n, m_k)
  # Slot s holds segment s + 1 on both sides, so a query slot's keys are its example's.
  allowed = qo[..., :, None] & ko[..., None, :]  # [B, S, M, Mk]
  if mask is not None:
    qt, kt = q_tok.reshape(b, s_n, m_q), k_tok.reshape(b, s_n, m_k)
    allowed &= jax.vmap(lambda mk, i, j: mk[i[:, :, None], j[:, None, :]])(mask, qt, kt)
  logits = jnp.einsum("bhsqd,bhskd->bhsqk", qs, ks, preferred_element_type=jnp.float32)
  return qs, ks, jnp.where(allowed[:, None], logits * scale, _MASKED)


def _slot_values(v, kv_maps, heads, s_n):
  vs = _to_slots(v, kv_maps[0], s_n)
  return jnp.repeat(vs, heads // v.shape[2], axis=1) if v.shape[2] != heads else vs


def _slots_forward(q, k, v, q_maps, kv_maps, mask, scale, s_n):
  """(out [B, L, H, D], log-sum-exp [B, H, S, M]) of attention in slots."""
  _, _, logits = _slot_logits(q, k, q_maps, kv_maps, mask, scale, s_n)
  top = jnp.max(logits, axis=-1, keepdims=True)
  e = jnp.exp(logits - top)  # Masked keys: exactly 0, unless the query sees none.
  total = jnp.sum(e, axis=-1, keepdims=True)
  probs = (e / total).astype(v.dtype)
  out = jnp.einsum("bhsqk,bhskd->bhsqd", probs, _slot_values(v, kv_maps, q.shape[2], s_n))
  # A query with no visible key (slot padding, or masked everywhere) returns zeros, and
  # its log-sum-exp is huge, so the backward pass's probabilities for it are zeros too.
  visible = top > _MASKED / 2
  out = jnp.where(visible, out, 0)
  lse = jnp.where(visible, top + jnp.log(total), -_MASKED)[..., 0]
  return _to_rows(out, q_maps[2], q_maps[3]).astype(q.dtype), lse


def _slots_backward(q, k, v, out, lse, g, q_maps, kv_maps, mask, scale, s_n):
  """(dq, dk, dv): the flash-attention backward in slots, from the forward's log-sum-exp."""
  h, hkv = q.shape[2], k.shape[2]
  qs, ks, logits = _slot_logits(q, k, q_maps, kv_maps, mask, scale, s_n)
  probs = jnp.exp(logits - lse[..., None])  # Masked pairs: exp(-1e30) = 0.
  vs = _slot_values(v, kv_maps, h, s_n)
  gs = _to_slots(g, q_maps[0], s_n)
  # delta_i = sum_d g_id out_id = sum_j p_ij dp_ij: the softmax's Jacobian term, per query.
  # Summed as [B*L*H, D]: XLA:CPU's fused multiply-reduce over D is ~50x slower with a
  # unit axis before D (one head, [B, L, 1, D]: 25 ms against 0.5 for a 16k-token row).
  d = g.shape[-1]
  delta = jnp.sum((g.astype(jnp.float32) * out.astype(jnp.float32)).reshape(-1, d), axis=-1)
  delta = delta.reshape(g.shape[:-1])  # [B, L, H]
  delta = _to_slots(delta[..., None], q_maps[0], s_n)  # [B, H, S, M, 1]
  dp = jnp.einsum("bhsqd,bhskd->bhsqk", gs, vs, preferred_element_type=jnp.float32)
  ds = (probs * (dp - delta) * scale).astype(q.dtype)
  dq = jnp.einsum("bhsqk,bhskd->bhsqd", ds, ks)
  dk = jnp.einsum("bhsqk,bhsqd->bhskd", ds, qs)
  dv = jnp.einsum("bhsqk,bhsqd->bhskd", probs.astype(v.dtype), gs)
  if hkv != h:  # Grouped keys: sum the gradients of the heads that shared them.
    dk, dv = (x.reshape(x.shape[0], hkv, h // hkv, *x.shape[2:]).sum(2) for x in (dk, dv))
  to_rows = lambda x, maps: _to_rows(x, maps[2], maps[3])
  return (
    to_rows(dq, q_maps).astype(q.dtype),
    to_rows(dk, kv_maps).astype(k.dtype),
    to_rows(dv, kv_maps).astype(v.dtype),
  )


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
