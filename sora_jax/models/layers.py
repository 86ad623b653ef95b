"""Building blocks with logical axis names on every parameter.

Parameters are stored in `param_dtype` (float32) and cast to the compute
`dtype` (e.g. bfloat16) when used; softmax and norms run in float32.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from sora_jax.core import sharding
from sora_jax.models import context_parallel

# Parameters get their shardings from the config's rules when the model is
# created under jit, never eagerly at construction.
nnx.use_eager_sharding(False)


def _tuple(x: int | Sequence[int]) -> tuple[int, ...]:
  return (x,) if isinstance(x, int) else tuple(x)


class Dense(nnx.Module):
  """y = x . W + b, contracting the trailing `in_shape` dims of x into `out_shape`.

  Args:
    in_shape, out_shape: feature dims (ints or tuples, e.g. (heads, head_dim)).
    names: logical axis names of the kernel, one per dim of in_shape + out_shape.
    init: "xavier" (fan-avg uniform) or "zeros" (adaLN-Zero gates, output layers).
    lora_rank, lora_scale: a low-rank adapter (flax's nnx.LoRA over the flattened in and
      out dims) added as lora_scale * (x A) B; rank 0: none (see sora_jax.models.lora).
  """

  def __init__(
    self,
    in_shape: int | Sequence[int],
    out_shape: int | Sequence[int],
    names: Sequence[str | None],
    *,
    rngs: nnx.Rngs,
    use_bias: bool = True,
    init: str = "xavier",
    dtype=jnp.float32,
    param_dtype=jnp.float32,
    lora_rank: int = 0,
    lora_scale: float = 1.0,
  ):
    self.in_shape, self.out_shape = _tuple(in_shape), _tuple(out_shape)
    shape = self.in_shape + self.out_shape
    if len(names) != len(shape):
      raise ValueError(f"names {names} do not match kernel shape {shape}")
    n_in = len(self.in_shape)
    if init == "zeros":
      kernel = jnp.zeros(shape, param_dtype)
    else:
      initializer = jax.nn.initializers.variance_scaling(
        1.0,
        "fan_avg",
        "uniform",
        in_axis=tuple(range(n_in)),
        out_axis=tuple(range(n_in, len(shape))),
      )
      kernel = initializer(rngs.params(), shape, param_dtype)
    # fan_in_dims: how many leading dims contract (sora_jax.models.mup reads it).
    self.kernel = nnx.Param(kernel, out_sharding=tuple(names), fan_in_dims=n_in)
    self.bias = (
      nnx.Param(jnp.zeros(self.out_shape, param_dtype), out_sharding=tuple(names[n_in:]))
      if use_bias
      else None
    )
    self.dtype = dtype
    self.lora = (
      nnx.LoRA(
        math.prod(self.in_shape),
        lora_rank,
        math.prod(self.out_shape),
        dtype=dtype,
        param_dtype=param_dtype,
        rngs=rngs,
        a_metadata={"out_sharding": (names[0], None)},
        b_metadata={"out_sharding": (None, names[n_in])},
      )
      if lora_rank
      else None
    )
    self.lora_scale = float(lora_scale)

  def __call__(self, x: jax.Array) -> jax.Array:
    n_in = len(self.in_shape)
    contract = (tuple(range(x.ndim - n_in, x.ndim)), tuple(range(n_in)))
    y = jax.lax.dot_general(
      x.astype(self.dtype), self.kernel[...].astype(self.dtype), (contract, ((), ()))
    )
    if self.bias is not None:
      y = y + self.bias[...].astype(self.dtype)
    if self.lora is not None:
      lead = x.shape[: x.ndim - n_in]
      delta = self.lora(x.reshape(*lead, -1).astype(self.dtype))
      y = y + (self.lora_scale * delta).reshape(*lead, *self.out_shape).astype(y.dtype)
    return y


class RMSNorm(nnx.Module):
  """RMS normalization over the last dim, computed in float32, with a learned scale."""

  def __init__(self, dim: int, name: str | None, *, eps: float = 1e-6, param_dtype=jnp.float32):
    self.scale = nnx.Param(jnp.ones((dim,), param_dtype), out_sharding=(name,))
    self.eps = eps

  def __call__(self, x: jax.Array) -> jax.Array:
    xf = x.astype(jnp.float32)
    y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
    return (y * self.scale[...]).astype(x.dtype)


def layer_norm(x: jax.Array, eps: float = 1e-6) -> jax.Array:
  """Parameter-free LayerNorm (adaLN supplies shift and scale), in float32."""
  xf = x.astype(jnp.float32)
  mean = jnp.mean(xf, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(xf - mean), axis=-1, keepdims=True)
  return ((xf - mean) * jax.lax.rsqrt(var + eps)).astype(x.dtype)


MLP_KINDS = ("gelu", "swiglu")


class MLP(nnx.Module):
  """Two-layer MLP: width -> hidden -> width.

  kind "gelu": down(gelu(up(x))). kind "swiglu": down(silu(gate(x)) * up(x)) (Shazeer,
  2020): a third projection, and each hidden unit the product of two projections of x.
  """

  def __init__(
    self,
    width: int,
    hidden: int,
    *,
    kind: str = "gelu",
    length: str = "length",
    rngs: nnx.Rngs,
    dtype,
    param_dtype,
    lora_rank: int = 0,
    lora_scale: float = 1.0,
  ):
    if kind not in MLP_KINDS:
      raise ValueError(f"MLP kind {kind!r}; allowed: {', '.join(MLP_KINDS)}")
    kw = dict(
      rngs=rngs, dtype=dtype, param_dtype=param_dtype, lora_rank=lora_rank, lora_scale=lora_scale
    )
    self.up = Dense(width, hidden, ("embed", "mlp"), **kw)
    self.gate = Dense(width, hidden, ("embed", "mlp"), **kw) if kind == "swiglu" else None
    self.down = Dense(hidden, width, ("mlp", "embed"), **kw)
    self.length = length  # Logical name of the sequence axis ("length" or "text_length").

  def __call__(self, x: jax.Array) -> jax.Array:
    if self.gate is None:
      h = jax.nn.gelu(self.up(x), approximate=True)
    else:
      h = jax.nn.silu(self.gate(x)) * self.up(x)
    h = sharding.constrain(h, ("batch", self.length, "act_mlp"))
    return self.down(h)


class Attention(nnx.Module):
  """Multi-head attention with QK-norm; self-attention when no context is given.

  Rotary embeddings are applied by the caller-provided `rope` (a function of q
  or k), so the same module serves 3D video and 1D text positions. `lengths`
  are the logical names of the query and key sequence axes ("length" for video
  tokens, which context parallelism shards; "text_length" for captions).
  """

  def __init__(
    self,
    width: int,
    heads: int,
    *,
    context_width: int | None = None,
    qk_norm: bool = True,
    backend: str = "auto",
    context_parallel: str = "all_gather",
    lengths: tuple[str, str] = ("length", "length"),
    packing=None,  # attention.Packing of the rows (kv_max_len set for cross-attention), or None
    rngs: nnx.Rngs,
    dtype,
    param_dtype,
    lora_rank: int = 0,  # Adapters on q, k, v and out (sora_jax.models.lora).
    lora_scale: float = 1.0,
  ):
    if width % heads:
      raise ValueError(f"width {width} must be divisible by heads {heads}")
    head_dim = width // heads
    kw = dict(
      rngs=rngs, dtype=dtype, param_dtype=param_dtype, lora_rank=lora_rank, lora_scale=lora_scale
    )
    kv_width = context_width or width
    self.q = Dense(width, (heads, head_dim), ("embed", "heads", "kv"), **kw)
    self.k = Dense(kv_width, (heads, head_dim), ("embed", "heads", "kv"), **kw)
    self.v = Dense(kv_width, (heads, head_dim), ("embed", "heads", "kv"), **kw)
    self.out = Dense((heads, head_dim), width, ("heads", "kv", "embed"), **kw)
    self.q_norm = RMSNorm(head_dim, "kv", param_dtype=param_dtype) if qk_norm else None
    self.k_norm = RMSNorm(head_dim, "kv", param_dtype=param_dtype) if qk_norm else None
    self.backend = backend
    self.context_parallel = context_parallel
    self.lengths = tuple(lengths)
    self.packing = packing

  def __call__(
    self,
    x: jax.Array,  # [B, L, D]
    segment_ids: jax.Array,  # [B, L]
    *,
    context: jax.Array | None = None,  # [B, Lc, Dc]
    context_segment_ids: jax.Array | None = None,  # [B, Lc]
    rope=None,  # applied to q and k (self-attention only)
    mask: jax.Array | None = None,  # [B, L, Lc] extra restriction
  ) -> jax.Array:
    kv_in = x if context is None else context
    kv_seg = segment_ids if context is None else context_segment_ids
    q_len, kv_len = self.lengths
    heads = ("batch", q_len, "act_heads", None)
    kv_heads = ("batch", kv_len, "act_heads", None)
    q = sharding.constrain(self.q(x), heads)
    k = sharding.constrain(self.k(kv_in), kv_heads)
    v = sharding.constrain(self.v(kv_in), kv_heads)
    if self.q_norm is not None:
      q, k = self.q_norm(q), self.k_norm(k)
    if rope is not None:
      q, k = rope(q), rope(k)
    o = context_parallel.sharded_attention(
      q,
      k,
      v,
      segment_ids,
      kv_seg,
      mask=mask,
      scheme=self.context_parallel,
      backend=self.backend,
      q_length=q_len,
      kv_length=kv_len,
      packing=self.packing,
    )
    return self.out(sharding.constrain(o, heads))


def timestep_features(t: jax.Array, dim: int, max_period: float = 10_000.0) -> jax.Array:
  """Sinusoidal features of t in [0, 1] (scaled by 1000, as in DiT): [...] -> [..., dim]."""
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = (t.astype(jnp.float32) * 1000.0)[..., None] * freqs
  return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


class TimestepEmbedding(nnx.Module):
  """t -> sinusoidal features -> MLP -> [..., width]."""

  def __init__(self, width: int, freq_dim: int = 256, *, rngs: nnx.Rngs, dtype, param_dtype):
    kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    self.freq_dim = freq_dim
    self.fc1 = Dense(freq_dim, width, (None, "embed"), **kw)
    self.fc2 = Dense(width, width, ("mlp", "embed"), **kw)

  def __call__(self, t: jax.Array) -> jax.Array:
    return self.fc2(jax.nn.silu(self.fc1(timestep_features(t, self.freq_dim))))
