"""Text encoders: the interface the diffusion transformer conditions on, and a small one.

Any encoder maps packed caption tokens to features:

  encoder(text_ids [B, Lt], text_segment_ids [B, Lt]) -> [B, Lt, encoder.width]

Captions of different examples share a row exactly as their patches do, and
attend only within their own segment. `SmallTextEncoder` is trained jointly
with the DiT; a frozen pretrained encoder (e.g. T5) can implement the same call
and set `trainable = False` so the optimizer leaves it alone.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

import jax
import jax.numpy as jnp
from flax import nnx

from sora_jax.core import sharding
from sora_jax.models import layers, rope, stack


class TextEncoder(Protocol):
  width: int
  trainable: bool

  def __call__(self, text_ids: jax.Array, text_segment_ids: jax.Array) -> jax.Array: ...


@dataclasses.dataclass(frozen=True)
class TextConfig:
  vocab_size: int
  width: int = 256
  depth: int = 2
  heads: int = 4
  mlp_ratio: float = 4.0


class _Block(nnx.Module):
  def __init__(self, cfg: TextConfig, backend: str, packing, *, rngs, dtype, param_dtype):
    kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    self.norm1 = layers.RMSNorm(cfg.width, "embed", param_dtype=param_dtype)
    self.attn = layers.Attention(
      cfg.width,
      cfg.heads,
      backend=backend,
      lengths=("text_length", "text_length"),
      packing=packing,
      **kw,
    )
    self.norm2 = layers.RMSNorm(cfg.width, "embed", param_dtype=param_dtype)
    self.mlp = layers.MLP(cfg.width, int(cfg.width * cfg.mlp_ratio), length="text_length", **kw)


class SmallTextEncoder(nnx.Module):
  """A pre-norm transformer over sentencepiece ids with 1D rotary positions."""

  trainable = True

  def __init__(
    self,
    cfg: TextConfig,
    *,
    rngs: nnx.Rngs,
    backend: str = "auto",
    packing=None,  # attention.Packing of the caption rows (per example cap, captions per row)
    scan: bool = True,
    remat: str = "none",
    dtype=jnp.float32,
    param_dtype=jnp.float32,
  ):
    self.width = cfg.width
    self.heads = cfg.heads
    self.remat = remat
    init = jax.nn.initializers.normal(0.02)
    self.embedding = nnx.Param(
      init(rngs.params(), (cfg.vocab_size, cfg.width), param_dtype), out_sharding=("vocab", "embed")
    )
    self.blocks = stack.make_layers(
      lambda r: _Block(cfg, backend, packing, rngs=r, dtype=dtype, param_dtype=param_dtype),
      cfg.depth,
      rngs,
      scan,
    )
    self.norm = layers.RMSNorm(cfg.width, "embed", param_dtype=param_dtype)
    self.dtype = dtype

  def __call__(self, text_ids: jax.Array, text_segment_ids: jax.Array) -> jax.Array:
    x = jnp.take(self.embedding[...], text_ids, axis=0).astype(self.dtype)
    x = sharding.constrain(x, ("batch", "text_length", "act_embed"))
    positions = rope.segment_positions(text_segment_ids)[..., None]
    rot = rope.Rotary(positions, self.width // self.heads)

    def apply(block: _Block, x: jax.Array) -> jax.Array:
      x = x + block.attn(block.norm1(x), text_segment_ids, rope=rot)
      return x + block.mlp(block.norm2(x))

    x = stack.run_layers(self.blocks, x, apply, self.remat)
    return self.norm(x)
