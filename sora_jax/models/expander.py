"""The prompt expander: a small causal language model that writes a descriptive caption
for a short one (Sora's "a language model expands a user's short prompt").

One sequence per example, over the dataset's sentencepiece ids:

  short caption (no eos)  BOS  descriptive caption  EOS

The model is trained to predict the descriptive part (`sora_jax.train_expander`) and
samples it token by token at sampling time (`sora_jax.sampling.expand`). It is a
pre-norm transformer like the text encoder, with a causal mask, 1D rotary positions
and the output projection tied to the embedding table.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from data_pipelines import tokenizer as tokenizer_lib
from sora_jax.core import sharding
from sora_jax.models import layers, rope


@dataclasses.dataclass(frozen=True)
class ExpanderConfig:
  vocab_size: int
  width: int = 128
  depth: int = 3
  heads: int = 4
  mlp_ratio: float = 4.0
  max_len: int = 160  # Tokens of short + BOS + descriptive + EOS.

  @classmethod
  def from_config(cls, cfg: Mapping[str, Any], vocab_size: int) -> ExpanderConfig:
    names = {f.name for f in dataclasses.fields(cls)} - {"vocab_size"}
    return cls(vocab_size=vocab_size, **{k: v for k, v in dict(cfg).items() if k in names})


class _Block(nnx.Module):
  def __init__(self, cfg: ExpanderConfig, *, rngs: nnx.Rngs):
    kw = dict(rngs=rngs, dtype=jnp.float32, param_dtype=jnp.float32)
    self.norm1 = layers.RMSNorm(cfg.width, "embed", param_dtype=jnp.float32)
    self.attn = layers.Attention(
      cfg.width, cfg.heads, backend="xla", lengths=("text_length", "text_length"), **kw
    )
    self.norm2 = layers.RMSNorm(cfg.width, "embed", param_dtype=jnp.float32)
    self.mlp = layers.MLP(cfg.width, int(cfg.width * cfg.mlp_ratio), length="text_length", **kw)


class CaptionLM(nnx.Module):
  def __init__(self, cfg: ExpanderConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    init = jax.nn.initializers.normal(0.02)
    self.embedding = nnx.Param(
      init(rngs.params(), (cfg.vocab_size, cfg.width), jnp.float32),
      out_sharding=("vocab", "embed"),
    )
    self.blocks = nnx.List([_Block(cfg, rngs=rngs) for _ in range(cfg.depth)])
    self.norm = layers.RMSNorm(cfg.width, "embed", param_dtype=jnp.float32)

  def __call__(self, ids: jax.Array) -> jax.Array:
    """Next-token logits `[B, L, V]` of ids `[B, L]` (PAD_ID pads the end of a row)."""
    b, n = ids.shape
    segments = (ids != tokenizer_lib.PAD_ID).astype(jnp.int32)
    x = jnp.take(self.embedding[...], ids, axis=0)
    x = sharding.constrain(x, ("batch", "text_length", "act_embed"))
    positions = jnp.broadcast_to(jnp.arange(n)[None, :, None], (b, n, 1))
    rot = rope.Rotary(positions, self.cfg.width // self.cfg.heads)
    causal = jnp.broadcast_to(jnp.tril(jnp.ones((n, n), bool)), (b, n, n))
    for block in self.blocks:
      x = x + block.attn(block.norm1(x), segments, rope=rot, mask=causal)
      x = x + block.mlp(block.norm2(x))
    return self.norm(x) @ self.embedding[...].T


def sequence(short_ids: list[int], long_ids: list[int], max_len: int) -> tuple[list[int], int]:
  """The training sequence of one pair (ids end in EOS) and where the descriptive part starts;
  the descriptive part is cut to fit `max_len`."""
  prefix = [i for i in short_ids if i != tokenizer_lib.EOS_ID] + [tokenizer_lib.BOS_ID]
  seq = (prefix + long_ids)[:max_len]
  return seq, len(prefix)


def prompt_prefix(short_ids: list[int], max_len: int) -> list[int]:
  """What the expander continues at sampling time: the short caption and BOS."""
  prefix = [i for i in short_ids if i != tokenizer_lib.EOS_ID] + [tokenizer_lib.BOS_ID]
  return prefix[: max_len // 2]
