"""Attention on a device mesh, including context parallelism over the `context` axis.

A minute of video is hundreds of thousands of tokens, so one packed row is
split over the devices of the `context` mesh axis (the "length" logical axis
maps to it). Everything but attention is per token and needs no
communication. Self-attention over a sharded sequence runs under `shard_map`
with one of two schemes:

  all_gather  each device keeps its queries and all-gathers keys, values and
              their segment ids along the sequence. Communication 2 x L x D
              per layer per device; memory for the full K/V.
  ulysses     all-to-all swaps the sharding from sequence to heads (DeepSpeed
              Ulysses): each device attends over the FULL sequence for 1/c of
              its heads, then a second all-to-all swaps back. Communication
              4 x L x D / c per device; needs heads divisible by c.

Segment ids travel with queries and keys, so packed rows stay block-diagonal
across shards. Cross-attention to captions (whose length axis is replicated)
needs no communication. Inside the map any backend runs on local arrays, so
fused kernels, which GSPMD cannot partition, also run per device, with the
batch split over the batch axes and heads over `tensor`. The XLA reference
without a sharded sequence is left to GSPMD.
"""

from __future__ import annotations

import functools

import jax
from jax.sharding import PartitionSpec as P

from sora_jax.core import sharding
from sora_jax.models import attention as attention_lib

SCHEMES = ("all_gather", "ulysses")
AXIS = "context"


def sharded_attention(
  q: jax.Array,  # [B, Lq, H, Dh]
  k: jax.Array,  # [B, Lk, Hkv, Dh]
  v: jax.Array,
  q_segment_ids: jax.Array,  # [B, Lq]
  kv_segment_ids: jax.Array,  # [B, Lk]
  *,
  mask: jax.Array | None = None,  # [B, Lq, Lk]
  scheme: str = "all_gather",
  backend: str = "auto",
  q_length: str = "length",  # Logical name of the query sequence axis.
  kv_length: str = "length",  # ... and of the key sequence axis.
  packing: attention_lib.Packing | None = None,
) -> jax.Array:
  """`attention()` on the current mesh (see the module docstring)."""
  if scheme not in SCHEMES:
    raise ValueError(f"model.context_parallel={scheme!r}; allowed: {SCHEMES}")
  mesh = jax.sharding.get_abstract_mesh()
  rules = sharding.current_rules()
  args = (q, k, v, q_segment_ids, kv_segment_ids)
  if mesh.empty or not rules:
    return attention_lib.attention(*args, mask=mask, backend=backend, packing=packing)
  q_spec = sharding.spec(("batch", q_length, "act_heads", None), rules, mesh, q.shape)
  kv_spec = sharding.spec(("batch", kv_length, "act_heads", None), rules, mesh, k.shape)
  q_seq, kv_seq = q_spec[1] == AXIS, kv_spec[1] == AXIS
  chosen = attention_lib.chosen_backend(backend, q.shape[1], k.shape[1], packing)
  if chosen == "xla" and not kv_seq:
    return attention_lib.attention(*args, mask=mask, backend=backend)
  if kv_seq and not q_seq:
    raise ValueError("keys are sharded over the context axis but queries are not")
  if kv_seq and mask is not None:
    raise attention_lib.AttentionUnsupported("context parallelism takes no extra attention mask")
  context = mesh.shape[AXIS] if kv_seq else 1
  if scheme == "ulysses" and context > 1:
    local = (q.shape[2] // _size(mesh, q_spec[2]), k.shape[2] // _size(mesh, kv_spec[2]))
    if local[0] % context or local[1] % context:
      raise ValueError(
        f"context_parallel='ulysses' splits heads over the {context} context devices, but each "
        f"tensor shard holds {local[0]} query and {local[1]} key heads; use 'all_gather' or a "
        "head count divisible by the context size"
      )
  specs = [q_spec, kv_spec, kv_spec, P(*q_spec[:2]), P(*kv_spec[:2])]
  if mask is not None:
    specs.append(P(q_spec[0], q_spec[1], kv_spec[1]))
    args = (*args, mask)
  fn = functools.partial(
    _local, scheme=scheme if context > 1 else None, backend=backend, packing=packing
  )
  return jax.shard_map(fn, in_specs=tuple(specs), out_specs=q_spec, check_vma=False)(*args)


def _local(q, k, v, q_seg, kv_seg, mask=None, *, scheme, backend, packing):
  """One device's share: plain attention, or one of the context-parallel schemes.

  Only whole rows keep the packing's bound; a context-parallel share does not."""
  if scheme is None:
    return attention_lib.attention(
      q, k, v, q_seg, kv_seg, mask=mask, backend=backend, packing=packing
    )
  if scheme == "all_gather":
    gather = functools.partial(jax.lax.all_gather, axis_name=AXIS, axis=1, tiled=True)
    return attention_lib.attention(q, gather(k), gather(v), q_seg, gather(kv_seg), backend=backend)
  # Ulysses: [B, L/c, H, D] -> [B, L, H/c, D], attend over the full sequence, and back.
  to_heads = functools.partial(
    jax.lax.all_to_all, axis_name=AXIS, split_axis=2, concat_axis=1, tiled=True
  )
  full_q_seg = jax.lax.all_gather(q_seg, AXIS, axis=1, tiled=True)
  full_kv_seg = jax.lax.all_gather(kv_seg, AXIS, axis=1, tiled=True)
  out = attention_lib.attention(
    to_heads(q), to_heads(k), to_heads(v), full_q_seg, full_kv_seg, backend=backend
  )
  return jax.lax.all_to_all(out, AXIS, split_axis=1, concat_axis=2, tiled=True)


def _size(mesh, axes) -> int:
  axes = () if axes is None else (axes,) if isinstance(axes, str) else axes
  size = 1
  for a in axes:
    size *= mesh.shape[a]
  return size
