"""A causal 3D convolutional video autoencoder (KL-VAE) for latent diffusion.

  video   [B, T, H, W, 3] in [-1, 1], T = 1 + 4k, H and W multiples of 8
  latent  [B, 1 + k, H/8, W/8, C]   (defaults: 4x in time, 8x in space)

Causal in time. Every temporal convolution pads (kernel_t - 1) ZERO frames on
the past side only, so no output frame depends on a later input frame, and the
first frame is encoded on its own: an image (T=1) is a one-frame video in the
same latent space. Temporal downsampling is a stride-2 causal conv, which maps
1 + 2k -> 1 + k frames (frame 0 alone, then pairs); temporal upsampling keeps
frame 0 single and repeats the others, 1 + k -> 1 + 2k. Latent frame j thus
sees input frames <= 4j, and output frame t sees latent frames <= ceil(t / 4).
Normalization is a group norm over each frame: statistics over height, width
and the channels of a group, per example and frame, never over time, so it
keeps causality and chunking exact. (A per-pixel RMS norm over channels alone
discards how strongly a pixel responds and learned ~10 dB slower here.)

Chunking. A conv is a function (x, cache) -> (y, new_cache): `cache` holds the
trailing input frames that its next outputs still need (None on the first
chunk: zero padding), and composite modules thread a nested tuple of their
convs' caches. `encode_chunked` cuts the video as [frame 0] + [chunk_frames]*
(chunk_frames a multiple of 4, the last chunk may be shorter but still a
multiple of 4); `decode_chunked` cuts the latent as [frame 0] +
[chunk_latent_frames]*. Both equal the one-shot result up to float rounding.

Tiling. `encode_tiled` and `decode_tiled` run overlapping spatial tiles and
blend them with linear ramps across the overlap. An input that fits in one
tile gives exactly the one-pass result; otherwise the result is approximate,
since the receptive field crosses tile borders and each tile has its own
group-norm statistics.

Logical axis names: conv kernels [kt, kh, kw, in, out] are (None, None, None,
"conv_in", "conv_out"), 1x1 projections ("conv_in", "conv_out"), conv biases
("conv_out",) and norm scales and biases ("conv_in",), as the next conv reads them.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from sora_jax.models import layers

CONV_IMPLS = ("auto", "3d", "frames")


@dataclasses.dataclass(frozen=True)
class AutoencoderConfig:
  latent_channels: int = 8
  base_channels: int = 32
  channel_mults: tuple[int, ...] = (1, 2, 4, 4)  # One level per entry; 2x spatial down between.
  num_res_blocks: int = 1
  temporal_down: tuple[bool, ...] = (False, True, True)  # Per down step: also 2x in time?
  # Time taps of every conv but the temporal downsampling ones. 1 with no temporal_down:
  # an image autoencoder applied to each frame alone (~3x cheaper; the DiT's patches
  # then carry time), which trains in minutes on simple data.
  temporal_kernel: int = 3
  # Group norm groups (fewer where a layer has fewer channels). Keep >= 4 channels per
  # group: one channel per group erases each channel's per-frame mean.
  norm_groups: int = 8
  # The encoder's log-variance starts here (bias init): a posterior std of e^-3 ~ 0.05
  # lets the decoder read the latent from step 0 instead of through unit noise.
  logvar_init: float = -6.0
  # "3d": one 3D convolution; "frames": a sum over the kt time taps of 2D convolutions
  # (identical result, ~2.5x faster on CPUs); "auto": "frames" on CPU, "3d" elsewhere.
  conv_impl: str = "auto"
  # Parameter-free residual shortcuts around every resampling step and the latent
  # bottleneck (DC-AE's "residual autoencoding"): average pooling beside each strided
  # conv, nearest upsampling beside each upsampling conv, channel averaging into the
  # latent and channel repetition out of it. The convs then learn residuals over a
  # pooled-and-upsampled image instead of a mapping from scratch.
  shortcuts: bool = True
  dtype: str = "float32"
  param_dtype: str = "float32"

  @classmethod
  def from_config(cls, model_cfg: Mapping[str, Any]) -> AutoencoderConfig:
    """From an autoencoder config's `model` section (or a saved run's, read back from JSON)."""
    m = model_cfg.to_dict() if hasattr(model_cfg, "to_dict") else dict(model_cfg)
    m["channel_mults"] = tuple(m["channel_mults"])
    m["temporal_down"] = tuple(bool(t) for t in m["temporal_down"])
    # Every config from experiments/autoencoder_base.py names `shortcuts`; a saved config
    # without it predates them, and its checkpoint is a network without shortcuts.
    m.setdefault("shortcuts", False)
    return cls(**m)

  def __post_init__(self):
    if len(self.temporal_down) != len(self.channel_mults) - 1:
      raise ValueError(
        f"temporal_down={self.temporal_down} needs one entry per down step "
        f"(len(channel_mults) - 1 = {len(self.channel_mults) - 1})"
      )
    for m in self.channel_mults:
      ch = self.base_channels * m
      if self.norm_groups < 1 or ch % min(self.norm_groups, ch):
        raise ValueError(
          f"norm_groups={self.norm_groups} must divide every level's channels "
          f"(base_channels * channel_mults = {ch})"
        )
    if self.temporal_kernel < 1:
      raise ValueError(f"temporal_kernel={self.temporal_kernel}; must be >= 1 (1: frame by frame)")
    if self.conv_impl not in CONV_IMPLS:
      raise ValueError(f"conv_impl={self.conv_impl!r}; allowed: {', '.join(CONV_IMPLS)}")
    if not 1 <= self.latent_channels <= 64:
      raise ValueError(f"latent_channels={self.latent_channels}; allowed: 1..64 (usually 4..16)")
    top = self.base_channels * self.channel_mults[-1]
    if self.shortcuts and top % self.latent_channels:
      raise ValueError(
        f"shortcuts=True averages the top level's {top} channels into latent_channels="
        f"{self.latent_channels} groups: latent_channels must divide {top}"
      )
    for name in ("dtype", "param_dtype"):
      if getattr(self, name) not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"{name}={getattr(self, name)!r}; allowed: float32, bfloat16, float16")

  @property
  def spatial_factor(self) -> int:
    return 2 ** (len(self.channel_mults) - 1)

  @property
  def temporal_factor(self) -> int:
    return 2 ** sum(self.temporal_down)


def kl_loss(mean: jax.Array, logvar: jax.Array) -> jax.Array:
  """KL(N(mean, exp(logvar)) || N(0, 1)), averaged over all latent elements."""
  return 0.5 * jnp.mean(jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar)


def conv3d(x: jax.Array, kernel: jax.Array, stride, impl: str = "auto") -> jax.Array:
  """Valid in time, 'same' in space: [B, T, H, W, Ci] * [kt, kh, kw, Ci, Co] -> [B, T', H', W', Co].

  impl "frames" computes output frame i as the sum over taps a of a 2D conv of
  input frame i * st + a with kernel[a]: the same sums as one 3D conv, which
  XLA's CPU backend runs ~2.5x slower than batched 2D convs.
  """
  (kt, kh, kw), (st, sh, sw) = kernel.shape[:3], stride
  pad = ((kh // 2, kh // 2), (kw // 2, kw // 2))
  if impl == "auto":
    impl = "frames" if jax.default_backend() == "cpu" else "3d"
  if impl == "3d":
    return jax.lax.conv_general_dilated(
      x, kernel, stride, ((0, 0), *pad), dimension_numbers=("NDHWC", "DHWIO", "NDHWC")
    )
  b, n = x.shape[0], (x.shape[1] - kt) // st + 1
  y = None
  for a in range(kt):
    frames = x[:, a : a + st * (n - 1) + 1 : st]
    f = jax.lax.conv_general_dilated(
      frames.reshape(b * n, *x.shape[2:]),
      kernel[a],
      (sh, sw),
      pad,
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    y = f if y is None else y + f
  return y.reshape(b, n, *y.shape[1:])


class FrameGroupNorm(nnx.Module):
  """Group norm of [B, T, H, W, C] with statistics per example, frame and group, in float32."""

  def __init__(self, channels: int, groups: int, *, param_dtype):
    self.groups = min(groups, channels)
    self.scale = nnx.Param(jnp.ones((channels,), param_dtype), out_sharding=("conv_in",))
    self.bias = nnx.Param(jnp.zeros((channels,), param_dtype), out_sharding=("conv_in",))

  def __call__(self, x: jax.Array) -> jax.Array:
    *lead, c = x.shape
    g = x.astype(jnp.float32).reshape(*lead, self.groups, c // self.groups)
    axes = (-4, -3, -1)  # Height, width and the channels of a group.
    mean = jnp.mean(g, axis=axes, keepdims=True)
    var = jnp.mean(jnp.square(g - mean), axis=axes, keepdims=True)
    y = ((g - mean) * jax.lax.rsqrt(var + 1e-6)).reshape(x.shape)
    return (y * self.scale[...] + self.bias[...]).astype(x.dtype)


class CausalConv3d(nnx.Module):
  """3D conv over [B, T, H, W, C]: causal in time (zero past padding), 'same' in space.

  Output frame i reads padded frames [i*s, i*s + kt), so with temporal stride s there
  are (T - 1) // s + 1 outputs: stride 2 with kt = 3 maps 1 + 2k -> 1 + k frames, the
  first output seeing frame 0 alone. Returns (y, cache): the cache is every padded
  input frame from the next output's window on (kt - s of them), for the next chunk.
  """

  def __init__(
    self,
    cin,
    cout,
    kernel=(3, 3, 3),
    stride=(1, 1, 1),
    *,
    rngs,
    dtype,
    param_dtype,
    impl="auto",
    bias=None,  # Initial bias [cout]; None: zeros.
  ):
    self.kernel_size, self.stride, self.impl = tuple(kernel), tuple(stride), impl
    init = jax.nn.initializers.variance_scaling(1.0, "fan_in", "normal")
    self.kernel = nnx.Param(
      init(rngs.params(), (*kernel, cin, cout), param_dtype),
      out_sharding=(None, None, None, "conv_in", "conv_out"),
    )
    bias = jnp.zeros((cout,)) if bias is None else jnp.asarray(bias)
    self.bias = nnx.Param(bias.astype(param_dtype), out_sharding=("conv_out",))
    self.dtype = dtype

  def __call__(self, x: jax.Array, cache: jax.Array | None = None):
    kt = self.kernel_size[0]
    x = x.astype(self.dtype)
    if cache is None:
      cache = jnp.zeros((x.shape[0], kt - 1, *x.shape[2:]), x.dtype)
    x = jnp.concatenate([cache.astype(x.dtype), x], axis=1)  # [B, past + T, H, W, C]
    y = conv3d(x, self.kernel[...].astype(self.dtype), self.stride, self.impl)
    # Keep the input frames from the next output's window start on.
    return y + self.bias[...].astype(self.dtype), x[:, y.shape[1] * self.stride[0] :]


def _chain(modules, x, cache):
  """Runs (x, cache) -> (y, cache) modules in sequence; cache is a tuple of theirs, or None."""
  caches = (None,) * len(modules) if cache is None else cache
  new = []
  for module, c in zip(modules, caches, strict=True):
    x, c = module(x, c)
    new.append(c)
  return x, tuple(new)


class ResBlock(nnx.Module):
  """x + conv(silu(norm(conv(silu(norm(x)))))), with a 1x1 projection when widths differ."""

  def __init__(self, cin, cout, groups, **kw):
    self.norm1 = FrameGroupNorm(cin, groups, param_dtype=kw["param_dtype"])
    self.conv1 = CausalConv3d(cin, cout, **kw)
    self.norm2 = FrameGroupNorm(cout, groups, param_dtype=kw["param_dtype"])
    self.conv2 = CausalConv3d(cout, cout, **kw)
    dense = {k: kw[k] for k in ("rngs", "dtype", "param_dtype")}
    self.skip = layers.Dense(cin, cout, ("conv_in", "conv_out"), **dense) if cin != cout else None

  def __call__(self, x, cache=None):
    c1, c2 = (None, None) if cache is None else cache
    h, c1 = self.conv1(jax.nn.silu(self.norm1(x)), c1)
    h, c2 = self.conv2(jax.nn.silu(self.norm2(h)), c2)
    return (x if self.skip is None else self.skip(x)) + h, (c1, c2)


class Downsample(CausalConv3d):
  """A stride-2 conv in space (and in time: 1 + 2k -> 1 + k), plus, with `shortcut`,
  2x2 average pooling (frame 0 alone, then means of frame pairs) of its input. The
  conv is the module itself, so the parameters sit where a plain strided conv's do."""

  def __init__(self, ch, temporal: bool, shortcut: bool, **kw):
    kernel, stride = (3 if temporal else 1, 3, 3), (2 if temporal else 1, 2, 2)
    kw.pop("kernel", None)
    super().__init__(ch, ch, kernel, stride, **kw)
    self.temporal, self.shortcut = temporal, shortcut

  def __call__(self, x, cache=None):
    y, new_cache = super().__call__(x, cache)
    if not self.shortcut:
      return y, new_cache
    b, t, h, w, c = x.shape
    pooled = x.reshape(b, t, h // 2, 2, w // 2, 2, c).mean(axis=(3, 5))
    if self.temporal:  # The first chunk (no cache yet) starts with frame 0, which stays alone.
      first, rest = (pooled[:, :1], pooled[:, 1:]) if cache is None else (None, pooled)
      rest = rest.reshape(b, rest.shape[1] // 2, 2, *rest.shape[2:]).mean(axis=2)
      pooled = rest if first is None else jnp.concatenate([first, rest], axis=1)
    return y + pooled.astype(y.dtype), new_cache


class Upsample(nnx.Module):
  """Nearest 2x in space (and in time: 1 + k -> 1 + 2k, frame 0 kept single), then a conv;
  with `shortcut`, plus the upsampled input itself."""

  def __init__(self, ch, temporal: bool, shortcut: bool, **kw):
    self.temporal, self.shortcut = temporal, shortcut
    self.conv = CausalConv3d(ch, ch, **kw)

  def __call__(self, x, cache=None):
    if self.temporal:  # The first chunk (no cache yet) holds frame 0.
      rest = x[:, 1:] if cache is None else x
      rest = jnp.repeat(rest, 2, axis=1)
      x = jnp.concatenate([x[:, :1], rest], axis=1) if cache is None else rest
    x = jnp.repeat(jnp.repeat(x, 2, axis=2), 2, axis=3)
    y, new_cache = self.conv(x, cache)
    return (y + x.astype(y.dtype) if self.shortcut else y), new_cache


class Head(nnx.Module):
  """conv(silu(norm(x))): the output layer of the encoder and the decoder."""

  def __init__(self, cin, cout, groups, *, bias=None, **kw):
    self.norm = FrameGroupNorm(cin, groups, param_dtype=kw["param_dtype"])
    self.conv = CausalConv3d(cin, cout, bias=bias, **kw)

  def __call__(self, x, cache=None):
    return self.conv(jax.nn.silu(self.norm(x)), cache)


def _layer_kwargs(cfg: AutoencoderConfig, rngs: nnx.Rngs) -> dict:
  """What every conv (and the layers holding convs) of the encoder and decoder takes."""
  return dict(
    rngs=rngs,
    dtype=jnp.dtype(cfg.dtype),
    param_dtype=jnp.dtype(cfg.param_dtype),
    impl=cfg.conv_impl,
    kernel=(cfg.temporal_kernel, 3, 3),
  )


class Encoder(nnx.Module):
  """Video -> [mean, logvar] stacked on channels; each stage is (x, cache) -> (y, cache)."""

  def __init__(self, cfg: AutoencoderConfig, *, rngs: nnx.Rngs):
    kw = _layer_kwargs(cfg, rngs)
    chans = [cfg.base_channels * m for m in cfg.channel_mults]
    g = cfg.norm_groups
    stages, cin = [CausalConv3d(3, chans[0], **kw)], chans[0]
    for i, ch in enumerate(chans):
      for _ in range(cfg.num_res_blocks):
        stages.append(ResBlock(cin, ch, g, **kw))
        cin = ch
      if i < len(chans) - 1:
        stages.append(Downsample(ch, cfg.temporal_down[i], cfg.shortcuts, **kw))
    c = cfg.latent_channels
    bias = jnp.concatenate([jnp.zeros((c,)), jnp.full((c,), cfg.logvar_init)])  # mean, logvar
    stages += [ResBlock(cin, cin, g, **kw), Head(cin, 2 * c, g, bias=bias, **kw)]
    self.stages = nnx.List(stages)
    self.latent_channels, self.shortcuts = c, cfg.shortcuts

  def __call__(self, x, cache=None):
    if not self.shortcuts:
      return _chain(self.stages, x, cache)
    c0, c1 = (None, None) if cache is None else cache
    h, c0 = _chain(self.stages[:-1], x, c0)
    y, c1 = self.stages[-1](h, c1)
    # The mean gets the top features averaged over groups of consecutive channels.
    group = h.reshape(*h.shape[:-1], self.latent_channels, -1).mean(axis=-1)
    y = y + jnp.concatenate([group, jnp.zeros_like(group)], axis=-1).astype(y.dtype)
    return y, (c0, c1)


class Decoder(nnx.Module):
  """Latent -> video, mirroring the encoder; each stage is (x, cache) -> (y, cache)."""

  def __init__(self, cfg: AutoencoderConfig, *, rngs: nnx.Rngs):
    kw = _layer_kwargs(cfg, rngs)
    chans = [cfg.base_channels * m for m in cfg.channel_mults]
    g = cfg.norm_groups
    cin = chans[-1]
    self.repeats = cin // cfg.latent_channels if cfg.shortcuts else 0
    stages = [CausalConv3d(cfg.latent_channels, cin, **kw), ResBlock(cin, cin, g, **kw)]
    for i in reversed(range(len(chans))):
      for _ in range(cfg.num_res_blocks):
        stages.append(ResBlock(cin, chans[i], g, **kw))
        cin = chans[i]
      if i > 0:
        stages.append(Upsample(cin, cfg.temporal_down[i - 1], cfg.shortcuts, **kw))
    stages.append(Head(cin, 3, g, **kw))
    self.stages = nnx.List(stages)

  def __call__(self, x, cache=None):
    if not self.repeats:
      return _chain(self.stages, x, cache)
    c0, c1 = (None, None) if cache is None else cache
    h, c0 = self.stages[0](x, c0)
    # Each latent channel copied to a group of consecutive channels of the input conv's output.
    h = h + jnp.repeat(x, self.repeats, axis=-1).astype(h.dtype)
    y, c1 = _chain(self.stages[1:], h, c1)
    return y, (c0, c1)


@functools.partial(jax.jit, static_argnums=0)
def _jit_apply(graphdef, state, x, cache):
  """One chunk through a split encoder or decoder, compiled once per chunk shape."""
  return nnx.merge(graphdef, state)(x, cache)


def _starts(n: int, tile: int, overlap: int) -> list[int]:
  """Tile offsets covering [0, n): every tile - overlap, the last one flush with the end."""
  return [0] if n <= tile else sorted({*range(0, n - tile, tile - overlap), n - tile})


def _ramp(n: int, ramp: int, left: bool, right: bool) -> jax.Array:
  """Blend weights [n]: linear ramps of `ramp` samples on the sides that overlap a neighbour."""
  i, w = jnp.arange(n, dtype=jnp.float32), jnp.ones((n,), jnp.float32)
  w = jnp.minimum(w, (i + 1) / (ramp + 1)) if left else w
  return jnp.minimum(w, (n - i) / (ramp + 1)) if right else w


def _tiled(fn, x, grid, tile, overlap, in_scale, out_scale):
  """fn on overlapping spatial tiles of x, blended. Tile units are latent pixels: a latent
  pixel is `in_scale` pixels of x and `out_scale` pixels of fn's outputs (a pytree)."""
  (gh, gw), (th, tw) = grid, (min(tile, grid[0]), min(tile, grid[1]))
  out, weight = None, 0.0
  for sh in _starts(gh, tile, overlap):
    for sw in _starts(gw, tile, overlap):
      y = fn(x[:, :, sh * in_scale : (sh + th) * in_scale, sw * in_scale : (sw + tw) * in_scale])
      wh = _ramp(th * out_scale, overlap * out_scale, sh > 0, sh + th < gh)
      ww = _ramp(tw * out_scale, overlap * out_scale, sw > 0, sw + tw < gw)
      pad = (
        (sh * out_scale, (gh - sh - th) * out_scale),
        (sw * out_scale, (gw - sw - tw) * out_scale),
      )
      w = jnp.pad(wh[:, None] * ww[None, :], pad)[..., None]  # [H, W, 1] on the whole frame
      place = lambda a, pad=pad: jnp.pad(a, ((0, 0), (0, 0), *pad, (0, 0)))
      y = jax.tree.map(lambda a, w=w, place=place: place(a) * w, y)
      out = y if out is None else jax.tree.map(jnp.add, out, y)
      weight = weight + w
  return jax.tree.map(lambda acc: acc / weight, out)


class VideoAutoencoder(nnx.Module):
  """The KL video autoencoder: encode, sample, decode; chunked and tiled variants."""

  def __init__(self, cfg: AutoencoderConfig, *, rngs: nnx.Rngs):
    self.config = cfg
    self.encoder = Encoder(cfg, rngs=rngs)
    self.decoder = Decoder(cfg, rngs=rngs)

  def _check_video(self, x: jax.Array) -> None:
    tf, sf = self.config.temporal_factor, self.config.spatial_factor
    _, t, h, w, c = x.shape
    if (t - 1) % tf or h % sf or w % sf or c != 3:
      raise ValueError(
        f"video shape {x.shape}: need [B, 1 + {tf}k, H, W, 3] with H, W multiples of {sf}"
      )

  def _moments(self, h: jax.Array) -> tuple[jax.Array, jax.Array]:
    mean, logvar = jnp.split(h.astype(jnp.float32), 2, axis=-1)
    return mean, jnp.clip(logvar, -30.0, 20.0)

  def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Video [B, T, H, W, 3] -> (mean, logvar), each [B, 1 + (T-1)/4, H/8, W/8, C], float32."""
    self._check_video(x)
    return self._moments(self.encoder(x)[0])

  @staticmethod
  def sample(mean: jax.Array, logvar: jax.Array, rng: jax.Array) -> jax.Array:
    """z = mean + exp(logvar / 2) * noise."""
    return mean + jnp.exp(0.5 * logvar) * jax.random.normal(rng, mean.shape, mean.dtype)

  def decode(self, z: jax.Array) -> jax.Array:
    """Latent [B, 1 + k, h, w, C] -> video [B, 1 + 4k, 8h, 8w, 3], float32."""
    return self.decoder(z)[0].astype(jnp.float32)

  def __call__(self, x: jax.Array, rng: jax.Array):
    """Video -> (reconstruction, mean, logvar), decoding a posterior sample."""
    mean, logvar = self.encode(x)
    return self.decode(self.sample(mean, logvar, rng)), mean, logvar

  def _chunked(self, module, x, bounds):
    graphdef, state = nnx.split(module)
    outs, cache = [], None
    for s, e in zip(bounds[:-1], bounds[1:]):
      y, cache = _jit_apply(graphdef, state, x[:, s:e], cache)
      outs.append(y)
    return jnp.concatenate(outs, axis=1)

  def encode_chunked(self, x: jax.Array, chunk_frames: int = 4):
    """encode() run on [frame 0] + [chunk_frames]* frames at a time, carrying conv caches."""
    self._check_video(x)
    if chunk_frames <= 0 or chunk_frames % self.config.temporal_factor:
      raise ValueError(
        f"chunk_frames={chunk_frames}: must be a positive multiple of {self.config.temporal_factor}"
      )
    t = x.shape[1]
    bounds = [0, *range(1, t, chunk_frames), t]
    return self._moments(self._chunked(self.encoder, x, bounds))

  def decode_chunked(self, z: jax.Array, chunk_latent_frames: int = 1) -> jax.Array:
    """decode() run on [frame 0] + [chunk_latent_frames]* latent frames at a time."""
    if chunk_latent_frames <= 0:
      raise ValueError(f"chunk_latent_frames={chunk_latent_frames}: must be positive")
    t = z.shape[1]
    bounds = [0, *range(1, t, chunk_latent_frames), t]
    return self._chunked(self.decoder, z, bounds).astype(jnp.float32)

  def encode_tiled(self, x: jax.Array, tile_latent: int = 32, overlap_latent: int = 8):
    """encode() on overlapping spatial tiles of tile_latent * 8 pixels, blended."""
    self._check_video(x)
    sf = self.config.spatial_factor
    grid = (x.shape[2] // sf, x.shape[3] // sf)
    if max(grid) <= tile_latent:
      return self.encode(x)
    _check_tiles(tile_latent, overlap_latent)
    graphdef, state = nnx.split(self.encoder)
    fn = lambda tile: self._moments(_jit_apply(graphdef, state, tile, None)[0])
    return _tiled(fn, x, grid, tile_latent, overlap_latent, sf, 1)

  def decode_tiled(self, z: jax.Array, tile_latent: int = 32, overlap_latent: int = 8):
    """decode() on overlapping spatial tiles of tile_latent latent pixels, blended."""
    if max(z.shape[2:4]) <= tile_latent:
      return self.decode(z)
    _check_tiles(tile_latent, overlap_latent)
    graphdef, state = nnx.split(self.decoder)
    fn = lambda tile: _jit_apply(graphdef, state, tile, None)[0].astype(jnp.float32)
    sf = self.config.spatial_factor
    return _tiled(fn, z, z.shape[2:4], tile_latent, overlap_latent, 1, sf)


def _check_tiles(tile: int, overlap: int) -> None:
  if not 0 <= overlap < tile:
    raise ValueError(f"tile_latent={tile}, overlap_latent={overlap}: need 0 <= overlap < tile")
