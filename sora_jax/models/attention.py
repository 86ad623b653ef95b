"""One attention call for every layer, with backends behind it.

  attention(q, k, v, q_segment_ids, kv_segment_ids, backend="auto")

A query attends to a key only when both carry the same non-zero segment id, so
examples packed into one row never see each other and padding (id 0) is
ignored. Queries with no visible key (padding) return zeros. An optional extra
boolean `mask` narrows the segment mask further (e.g. prompts gated to a window
of frames); a backend that cannot express what it is asked for refuses with
`AttentionUnsupported` instead of silently ignoring it.

Backends: "xla" (the reference, here) and the others in their own modules,
imported on first use so that importing this file stays cheap:
  "segments"     attention_segments.py      example by example, in slots of max_len (any XLA device)
  "block_sparse" attention_block_sparse.py  only the blocks whose segments meet (any XLA device)
  "pallas_gpu"   attention_pallas_gpu.py    Pallas/Triton flash attention (GPU)
  "splash_tpu"   attention_splash.py        Pallas splash attention (TPU)
  "cudnn"        attention_cudnn.py         jax.nn.dot_product_attention on cuDNN
"pallas_gpu_interpret" and "splash_tpu_interpret" run the same kernels through
Pallas interpret mode on any platform (slow; for tests and debugging on CPU).
"auto" picks the platform's kernel and falls back to "xla", with a logged
warning, for a call that kernel refuses (e.g. cross-attention on GPU).

`packing` (a `Packing`: at most `max_segments` examples of at most `max_len`
tokens per row) is what the caller knows about how its rows were packed.
Backends that skip blocks bound their work with it; the others ignore it. It
is a promise about speed, not semantics: a row that breaks it still gets the
exact result. On CPUs "auto" picks "segments" for calls that pass it (the DiT's
self- and cross-attention, the caption encoder) where its slots hold at most
half of the row's logits, and "xla" for the rest.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable

import jax
import jax.numpy as jnp
from absl import logging


class AttentionUnsupported(ValueError):
  """The chosen backend cannot express this attention (mask, shape or platform)."""


@dataclasses.dataclass(frozen=True)
class Packing:
  """How rows were packed: at most `max_segments` examples of at most `max_len` tokens each.

  `kv_max_len`: for attention whose keys are packed apart from the queries, the
  same examples in the same order, each at most this many keys (the DiT's
  cross-attention to its packed captions); None: the keys are the queries' rows.
  """

  max_len: int
  max_segments: int
  kv_max_len: int | None = None


Backend = Callable[..., jax.Array]
_BACKENDS: dict[str, Backend] = {}
_USES_PACKING: set[str] = set()  # Backends whose signature takes `packing=`.
# For "auto": whether a backend pays off for (q_length, kv_length, packing); else "xla".
_WORTHWHILE: dict[str, Callable[..., bool]] = {}
# Kernel backends live in their own modules, imported on first use.
_KERNEL_MODULES = {
  "segments": "sora_jax.models.attention_segments",
  "block_sparse": "sora_jax.models.attention_block_sparse",
  "pallas_gpu": "sora_jax.models.attention_pallas_gpu",
  "pallas_gpu_interpret": "sora_jax.models.attention_pallas_gpu",
  "splash_tpu": "sora_jax.models.attention_splash",
  "splash_tpu_interpret": "sora_jax.models.attention_splash",
  "cudnn": "sora_jax.models.attention_cudnn",
}
# What "auto" picks on each platform (jax.default_backend()); anything else: "xla".
_AUTO_BACKENDS = {"tpu": "splash_tpu", "gpu": "pallas_gpu", "cpu": "segments"}
# Backends "auto" picks only for calls that pass a `Packing`.
_AUTO_NEEDS_PACKING = {"segments", "block_sparse"}
_FALLBACKS_LOGGED: set[str] = set()


def register_backend(
  name: str, *, uses_packing: bool = False, worthwhile: Callable[..., bool] | None = None
) -> Callable[[Backend], Backend]:
  def wrap(fn: Backend) -> Backend:
    _BACKENDS[name] = fn
    if uses_packing:
      _USES_PACKING.add(name)
    if worthwhile is not None:
      _WORTHWHILE[name] = worthwhile
    return fn

  return wrap


def backends() -> list[str]:
  return sorted(set(_BACKENDS) | set(_KERNEL_MODULES))


def resolve_backend(name: str, platform: str | None = None, *, packed: bool = True) -> str:
  """Maps "auto" to the backend for `platform` (default: jax's); validates names.

  `packed`: whether the call passes a `Packing` ("auto" uses "segments" only then).
  """
  if name == "auto":
    chosen = _AUTO_BACKENDS.get(platform or jax.default_backend(), "xla")
    return "xla" if chosen in _AUTO_NEEDS_PACKING and not packed else chosen
  if name not in _BACKENDS and name not in _KERNEL_MODULES:
    raise ValueError(
      f"model.attention={name!r}; allowed: 'auto', {', '.join(map(repr, backends()))}"
    )
  return name


def chosen_backend(
  backend: str, q_length: int, kv_length: int, packing: Packing | None = None
) -> str:
  """The backend a call of these lengths runs first (before any refusal falls back)."""
  name = resolve_backend(backend, packed=packing is not None)
  if backend == "auto":
    get_backend(name)  # Loads the module, which registers its `worthwhile`.
    pays = _WORTHWHILE.get(name)
    if pays is not None and not pays(q_length, kv_length, packing):
      return "xla"
  return name


def other_calls_backend(name: str) -> str:
  """The backend of the calls beside the DiT's self-attention (cross-attention, the caption
  encoder) when `model.attention` is `name`: "xla" when the reference is named, else
  "auto". A named backend is the packed self-attention's; a kernel that cannot express
  the other calls (pallas_gpu and segments refuse cross-attention) must not fail them."""
  return "xla" if name == "xla" else "auto"


def get_backend(name: str) -> Backend:
  """The backend function for a resolved name, importing its module on first use."""
  if name not in _BACKENDS:
    importlib.import_module(_KERNEL_MODULES[name])
  return _BACKENDS[name]


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
  packing: Packing | None = None,
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
  name = chosen_backend(backend, q.shape[1], k.shape[1], packing)
  args = (q, k, v, q_segment_ids, kv_segment_ids)
  fn = get_backend(name)
  extra = {"packing": packing} if name in _USES_PACKING else {}
  try:
    return fn(*args, mask=mask, scale=scale, **extra)
  except AttentionUnsupported as e:
    if backend != "auto" or name == "xla":
      raise
    # Refusals happen at trace time from static facts (shapes, dtypes, which
    # arrays were passed), so the fallback is deterministic per call site.
    if str(e) not in _FALLBACKS_LOGGED:
      _FALLBACKS_LOGGED.add(str(e))
      logging.warning("attention backend 'auto' -> %r refused (%s); using 'xla'.", name, e)
    return xla_attention(*args, mask=mask, scale=scale)


def has_visible_key(q_segment_ids: jax.Array, kv_segment_ids: jax.Array) -> jax.Array:
  """[B, Lq] bool: the query's non-zero id occurs among the keys; O(L log L), no [Lq, Lk]."""
  if q_segment_ids is kv_segment_ids:  # Self-attention: every real query sees itself.
    return q_segment_ids != 0
  kv_sorted = jnp.sort(kv_segment_ids, axis=-1)
  idx = jax.vmap(jnp.searchsorted)(kv_sorted, q_segment_ids)
  idx = jnp.minimum(idx, kv_sorted.shape[-1] - 1)
  found = jnp.take_along_axis(kv_sorted, idx, axis=-1) == q_segment_ids
  return found & (q_segment_ids != 0)


def segment_mask(q_segment_ids: jax.Array, kv_segment_ids: jax.Array) -> jax.Array:
  """[B, Lq, Lk] bool: same non-zero segment."""
  return (q_segment_ids[:, :, None] == kv_segment_ids[:, None, :]) & (
    kv_segment_ids[:, None, :] != 0
  )


@register_backend("xla")
def xla_attention(q, k, v, q_segment_ids, kv_segment_ids, *, mask=None, scale):
  """The reference: float32 logits, masked softmax, weighted sum.

  Long rows are processed in query chunks, each rematerialized in the backward
  pass, so memory stays at about CHUNK_ELEMENTS logits however long the row.
  """
  b, lq, h, _ = q.shape
  per_query = b * h * k.shape[1]
  chunk = _largest_divisor_at_most(lq, max(1, CHUNK_ELEMENTS // per_query))
  if chunk == lq:
    return _dense_attention(q, k, v, q_segment_ids, kv_segment_ids, mask=mask, scale=scale)
  n = lq // chunk

  def split(x):  # [B, Lq, ...] -> [n, B, chunk, ...]
    return None if x is None else jnp.moveaxis(x.reshape(b, n, chunk, *x.shape[2:]), 1, 0)

  def one(args):
    qc, sc, mc = args
    return _dense_attention(qc, k, v, sc, kv_segment_ids, mask=mc, scale=scale)

  out = jax.lax.map(jax.checkpoint(one), (split(q), split(q_segment_ids), split(mask)))
  return jnp.moveaxis(out, 0, 1).reshape(q.shape)


# Logits held at once by the reference before it processes queries in chunks.
CHUNK_ELEMENTS = 1 << 24


def _largest_divisor_at_most(n: int, limit: int) -> int:
  return max(d for d in range(1, min(n, limit) + 1) if n % d == 0)


def _dense_attention(q, k, v, q_segment_ids, kv_segment_ids, *, mask, scale):
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
