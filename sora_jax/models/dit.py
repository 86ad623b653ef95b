"""The diffusion transformer over packed rows of spacetime patches.

Inputs (B rows of L tokens; Lt caption tokens per row):
  tokens            [B, L, patch_dim]  noisy latent patches
  coords            [B, L, 3]          (t, h, w) patch coordinates -> 3D RoPE
  segment_ids       [B, L]             examples 1..K, padding 0
  t                 [B, L]             a timestep PER TOKEN (clean conditioning frames: 0)
  text_ids          [B, Lt]            each example's caption tokens
  text_segment_ids  [B, Lt]            which example each caption token belongs to
  text_frames       [B, Lt, 2]         optional [start, end) latent-frame window of each
                                       caption token (storyboards); default: all frames
Output: the predicted velocity [B, L, patch_dim].

Each block: self-attention within a segment (block-diagonal) with QK-norm and
3D RoPE, cross-attention to the example's own caption, and an MLP; the
self-attention and MLP branches are modulated by adaLN-Zero from the per-token
timestep embedding, to which (pooled_text) each token's mean over the caption
tokens it may attend to is added: a global caption signal that conditions
every token from the first step, beside the token-level cross-attention. With adaln="single" (PixArt-alpha) one projection of the
timestep embedding is shared by all blocks, each adding its own learned table;
with adaln="block" every block has its own projection (DiT).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from sora_jax.core import sharding
from sora_jax.models import attention, layers, rope, stack
from sora_jax.models import lora as lora_lib
from sora_jax.models.text_encoder import SmallTextEncoder, TextConfig

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


@dataclasses.dataclass(frozen=True)
class DiTConfig:
  patch_dim: int
  depth: int = 4
  width: int = 256
  heads: int = 4
  mlp_ratio: float = 4.0
  mlp: str = "gelu"  # "gelu" or "swiglu" (gated; mlp_ratio 8/3 keeps its parameters).
  adaln: str = "single"  # "single" (shared projection) or "block".
  qk_norm: bool = True
  rope_theta: float = 10_000.0
  attention: str = "auto"  # The packed self-attention's backend; other calls: other_calls_backend.
  context_parallel: str = "all_gather"  # Scheme over the `context` mesh axis, if > 1.
  dtype: str = "float32"
  param_dtype: str = "float32"
  remat: str = "none"
  scan_layers: bool = True
  pooled_text: bool = True  # Add each token's mean caption embedding to its timestep embedding.
  fractional_pos: int = 4  # Frequencies per axis of the fractional position features (0: none).
  text: TextConfig | None = None
  # How the rows are packed (from config.data): lets self-attention skip other examples'
  # keys ("segments", "block_sparse"). None: unknown, every block is computed.
  packing: attention.Packing | None = None
  # Low-rank adapters on the blocks' projections (config.lora); None: no adapters.
  lora: lora_lib.LoraConfig | None = None

  @classmethod
  def from_config(
    cls,
    model_cfg: Mapping[str, Any],
    patch_dim: int,
    vocab_size: int,
    packing: attention.Packing | None = None,
    lora_cfg: Mapping[str, Any] | None = None,
  ) -> DiTConfig:
    """From `config.model`; the patch dim comes from the geometry, vocab from the tokenizer,
    the packing from `config.data` (`attention.Packing(max_tokens_per_example,
    max_examples_per_row)`), the adapters from `config.lora`."""
    m = dict(model_cfg)
    text = TextConfig(vocab_size=vocab_size, **dict(m.pop("text")))
    names = {f.name for f in dataclasses.fields(cls)} - {"patch_dim", "text", "packing", "lora"}
    kw = {k: v for k, v in m.items() if k in names}
    adapters = lora_lib.LoraConfig.from_config(lora_cfg)
    return cls(patch_dim=patch_dim, text=text, packing=packing, lora=adapters, **kw)

  @property
  def compute_dtype(self):
    return DTYPES[self.dtype]

  @property
  def params_dtype(self):
    return DTYPES[self.param_dtype]


def packing_of(data_cfg: Mapping[str, Any]) -> attention.Packing:
  """The packing caps of a config's `data` section (tokens per example, examples per row,
  caption tokens per example as `kv_max_len`: the keys of the cross-attention)."""
  return attention.Packing(
    max_len=int(data_cfg["max_tokens_per_example"]),
    max_segments=int(data_cfg["max_examples_per_row"]),
    kv_max_len=int(data_cfg["max_text_len"]),
  )


def call_packings(packing: attention.Packing | None):
  """(self-attention, cross-attention, caption encoder) packings of the rows `packing`
  describes (its `kv_max_len`: the caption cap); None where unknown."""
  if packing is None:
    return None, None, None
  self_attention = dataclasses.replace(packing, kv_max_len=None)
  if packing.kv_max_len is None:
    return self_attention, None, None
  captions = attention.Packing(max_len=packing.kv_max_len, max_segments=packing.max_segments)
  return self_attention, packing, captions


class Block(nnx.Module):
  def __init__(self, cfg: DiTConfig, *, rngs: nnx.Rngs):
    kw = dict(rngs=rngs, dtype=cfg.compute_dtype, param_dtype=cfg.params_dtype)
    w = cfg.width

    def adapters(target: str) -> dict[str, Any]:
      if cfg.lora is None:
        return {}
      return dict(lora_rank=cfg.lora.rank_for(target), lora_scale=cfg.lora.scale)

    self_packing, cross_packing, _ = call_packings(cfg.packing)
    self.attn = layers.Attention(
      w,
      cfg.heads,
      qk_norm=cfg.qk_norm,
      backend=cfg.attention,
      context_parallel=cfg.context_parallel,
      packing=self_packing,
      **adapters("self_attention"),
      **kw,
    )
    self.cross_norm = layers.RMSNorm(w, "embed", param_dtype=cfg.params_dtype)
    self.cross = layers.Attention(
      w,
      cfg.heads,
      context_width=w,
      qk_norm=cfg.qk_norm,
      backend=attention.other_calls_backend(cfg.attention),
      lengths=("length", "text_length"),
      packing=cross_packing,
      **adapters("cross_attention"),
      **kw,
    )
    self.mlp = layers.MLP(w, int(w * cfg.mlp_ratio), kind=cfg.mlp, **adapters("mlp"), **kw)
    if cfg.adaln == "block":
      self.modulation = layers.Dense(w, (6, w), ("embed", None, "mlp"), init="zeros", **kw)
    else:  # A learned per-block table added to the shared projection (zero init).
      self.modulation = nnx.Param(jnp.zeros((6, w), cfg.params_dtype), out_sharding=(None, "embed"))

  def __call__(self, x, cond, segment_ids, rot, context, context_segment_ids, cross_mask):
    if isinstance(self.modulation, layers.Dense):
      mod = self.modulation(cond)  # cond: SiLU(t embedding) [B, L, D] -> [B, L, 6, D]
    else:
      mod = cond + self.modulation[...].astype(cond.dtype)  # cond: shared [B, L, 6, D]
    shift1, scale1, gate1, shift2, scale2, gate2 = (mod[:, :, i] for i in range(6))
    h = layers.layer_norm(x) * (1 + scale1) + shift1
    x = x + gate1 * self.attn(h, segment_ids, rope=rot)
    x = x + self.cross(
      self.cross_norm(x),
      segment_ids,
      context=context,
      context_segment_ids=context_segment_ids,
      mask=cross_mask,
    )
    h = layers.layer_norm(x) * (1 + scale2) + shift2
    x = x + gate2 * self.mlp(h)
    return sharding.constrain(x, ("batch", "length", "act_embed"))


class DiT(nnx.Module):
  """Text-conditioned diffusion transformer over packed spacetime patches."""

  def __init__(self, cfg: DiTConfig, *, rngs: nnx.Rngs):
    if cfg.adaln not in ("single", "block"):
      raise ValueError(f"model.adaln={cfg.adaln!r}; allowed: 'single', 'block'")
    self.cfg = cfg
    kw = dict(rngs=rngs, dtype=cfg.compute_dtype, param_dtype=cfg.params_dtype)
    w = cfg.width
    self.text_encoder = SmallTextEncoder(
      cfg.text,
      rngs=rngs,
      backend=attention.other_calls_backend(cfg.attention),
      packing=call_packings(cfg.packing)[2],
      scan=cfg.scan_layers,
      remat=cfg.remat,
      dtype=cfg.compute_dtype,
      param_dtype=cfg.params_dtype,
    )
    self.context_proj = layers.Dense(cfg.text.width, w, ("embed", "mlp"), **kw)
    self.patch_embed = layers.Dense(cfg.patch_dim, w, ("patch", "embed"), **kw)
    if cfg.fractional_pos:
      self.pos_embed = layers.Dense(6 * cfg.fractional_pos, w, (None, "embed"), **kw)
    self.t_embed = layers.TimestepEmbedding(w, **kw)
    if cfg.pooled_text:
      self.pooled_proj = layers.Dense(cfg.text.width, w, ("embed", "mlp"), **kw)
    if cfg.adaln == "single":
      self.shared_modulation = layers.Dense(w, (6, w), ("embed", None, "mlp"), init="zeros", **kw)
    self.blocks = stack.make_layers(lambda r: Block(cfg, rngs=r), cfg.depth, rngs, cfg.scan_layers)
    self.final_modulation = layers.Dense(w, (2, w), ("embed", None, "mlp"), init="zeros", **kw)
    self.final = layers.Dense(w, cfg.patch_dim, ("embed", "patch"), init="zeros", **kw)

  def __call__(
    self,
    tokens: jax.Array,
    coords: jax.Array,
    segment_ids: jax.Array,
    t: jax.Array,
    text_ids: jax.Array,
    text_segment_ids: jax.Array,
    text_frames: jax.Array | None = None,
  ) -> jax.Array:
    cfg = self.cfg
    text = self.text_encoder(text_ids, text_segment_ids)
    context = self.context_proj(text)
    context = sharding.constrain(context, ("batch", "text_length", "act_embed"))
    x = self.patch_embed(tokens)
    if cfg.fractional_pos:
      x = x + self.pos_embed(fractional_features(coords, segment_ids, cfg.fractional_pos))
    x = sharding.constrain(x, ("batch", "length", "act_embed"))
    # Intermediates for the muP coordinate check (sora_jax.training.coord_check); a no-op
    # cost elsewhere: nothing collects them.
    self.sow(nnx.Intermediate, "embedded", x)
    cross_mask = None
    if text_frames is not None:  # Caption token j is visible to frames in its window.
      frame = coords[:, :, None, 0]
      cross_mask = (frame >= text_frames[:, None, :, 0]) & (frame < text_frames[:, None, :, 1])
    temb = self.t_embed(t)  # [B, L, D]
    if cfg.pooled_text:
      temb = temb + self.pooled_proj(pool_text(text, segment_ids, text_segment_ids, cross_mask))
    temb = jax.nn.silu(temb)
    cond = self.shared_modulation(temb) if cfg.adaln == "single" else temb
    rot = rope.Rotary(coords, cfg.width // cfg.heads, cfg.rope_theta)

    def apply(block: Block, x: jax.Array) -> jax.Array:
      return block(x, cond, segment_ids, rot, context, text_segment_ids, cross_mask)

    x = stack.run_layers(self.blocks, x, apply, cfg.remat)
    self.sow(nnx.Intermediate, "hidden", x)
    shift, scale = jnp.moveaxis(self.final_modulation(temb), -2, 0)
    out = self.final(layers.layer_norm(x) * (1 + scale) + shift)
    return out.astype(jnp.float32)


def fractional_features(coords: jax.Array, segment_ids: jax.Array, num_freqs: int) -> jax.Array:
  """Where each token lies within its own example, as fractions: `[B, L, 6 * num_freqs]`.

  Each (t, h, w) coordinate is divided by its example's largest coordinate on
  that axis (0 for a single frame), giving f in [0, 1], and expanded to
  sin(pi k f), cos(pi k f) for k = 1..num_freqs. Rotary embeddings only say how
  far apart two tokens are; these say "first frame", "left edge" at any
  resolution and duration (NaViT's fractional positions, with fixed features in
  place of a learned table), which the model needs to lay out a scene from
  the caption alone at high noise (e.g. an object moving left starts on the
  right and ends on the left).
  """

  def row_extent(c, s):  # [L, 3], [L] -> each token's segment maximum per axis.
    return jax.ops.segment_max(c, s, num_segments=c.shape[0])[s]

  extent = jax.vmap(row_extent)(coords, segment_ids)
  frac = coords.astype(jnp.float32) / jnp.maximum(extent, 1).astype(jnp.float32)
  k = jnp.arange(1, num_freqs + 1, dtype=jnp.float32)
  angles = jnp.pi * frac[..., None] * k  # [B, L, 3, F]
  feats = jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)
  return feats.reshape(*coords.shape[:2], 6 * num_freqs)


def pool_text(
  text: jax.Array,
  segment_ids: jax.Array,
  text_segment_ids: jax.Array,
  cross_mask: jax.Array | None = None,
) -> jax.Array:
  """Each video token's mean over the caption tokens it may attend to: [B, L, Dt].

  The global caption signal of SD3's pooled embedding and DiT's class
  embedding, for packed rows: the mean runs over the token's own example's
  caption (and, with storyboards, the caption tokens whose window holds the
  token's frame). A token with no caption (padding) gets zeros.
  """
  if cross_mask is None:
    # Per example: the caption's sum and length, then each token takes its example's
    # mean (O(L + Lt) per row, where the dense weights below are L x Lt: 67M entries
    # per 16k-token row of 256 captions).
    n = segment_ids.shape[1] + 1  # Segment ids are below L + 1 (every example has a token).

    def row(t, ts, s):
      sums = jax.ops.segment_sum(t, ts, num_segments=n)
      counts = jax.ops.segment_sum(jnp.ones_like(ts, t.dtype), ts, num_segments=n)
      means = sums / jnp.maximum(counts, 1)[:, None]
      return jnp.where((s > 0)[:, None], means[s], 0)

    pooled = jax.vmap(row)(text, text_segment_ids, segment_ids)
  else:
    visible = (segment_ids[:, :, None] == text_segment_ids[:, None, :]) & (
      segment_ids[:, :, None] > 0
    )
    weights = (visible & cross_mask).astype(text.dtype)
    weights = weights / jnp.maximum(weights.sum(-1, keepdims=True), 1)
    pooled = jnp.einsum("blj,bjd->bld", weights, text)
  return sharding.constrain(pooled, ("batch", "length", "act_embed"))
