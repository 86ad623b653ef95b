"""The evaluation probe: a small video classifier that reads a clip's caption attributes
(colour, shape, motion, background), and whose penultimate features are the space the
Fréchet distance between generated and real clips is measured in (our stand-in for
FVD's I3D, which needs downloaded weights).

Every clip is resampled to `frames` frames of `size` x `size` pixels (`resample`):

  per frame   three stride-2 3x3 convolutions (shared over frames) and a dense layer
              -> a frame feature that keeps where things are
  over time   the frame features side by side -> a dense layer -> `features`
  heads       one linear classifier per attribute
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from data_pipelines import vocab
from sora_jax.models import layers

HEADS = {
  "color": vocab.COLORS,
  "shape": vocab.SHAPES,
  "motion": vocab.MOTIONS,
  "background": vocab.BACKGROUNDS,
}


@dataclasses.dataclass(frozen=True)
class ProbeConfig:
  frames: int = 8
  size: int = 32
  channels: tuple[int, ...] = (16, 32, 64)
  frame_width: int = 64
  features: int = 128


class _Conv(nnx.Module):
  def __init__(self, cin: int, cout: int, *, rngs: nnx.Rngs):
    init = jax.nn.initializers.he_normal()
    self.kernel = nnx.Param(
      init(rngs.params(), (3, 3, cin, cout), jnp.float32),
      out_sharding=(None, None, "conv_in", "conv_out"),
    )
    self.bias = nnx.Param(jnp.zeros((cout,), jnp.float32), out_sharding=("conv_out",))

  def __call__(self, x: jax.Array) -> jax.Array:  # [N, H, W, C] -> [N, H/2, W/2, C']
    y = jax.lax.conv_general_dilated(
      x, self.kernel[...], (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    return jax.nn.gelu(y + self.bias[...])


class VideoProbe(nnx.Module):
  def __init__(self, cfg: ProbeConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    widths = (3, *cfg.channels)
    self.convs = nnx.List([_Conv(a, b, rngs=rngs) for a, b in zip(widths, widths[1:])])
    side = cfg.size // 2 ** len(cfg.channels)
    kw = dict(rngs=rngs, dtype=jnp.float32, param_dtype=jnp.float32)
    self.frame = layers.Dense(
      side * side * cfg.channels[-1], cfg.frame_width, ("mlp", "embed"), **kw
    )
    self.clip = layers.Dense(cfg.frames * cfg.frame_width, cfg.features, ("mlp", "embed"), **kw)
    self.heads = nnx.Dict(
      {k: layers.Dense(cfg.features, len(v), ("embed", "vocab"), **kw) for k, v in HEADS.items()}
    )

  def features(self, video: jax.Array) -> jax.Array:
    """Clip features `[B, features]` of `[B, frames, size, size, 3]` in [-1, 1]."""
    b, t = video.shape[:2]
    x = video.reshape(b * t, *video.shape[2:])
    for conv in self.convs:
      x = conv(x)
    x = jax.nn.gelu(self.frame(x.reshape(b * t, -1)))
    return jax.nn.gelu(self.clip(x.reshape(b, -1)))

  def __call__(self, video: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    f = self.features(video)
    return f, {k: head(f) for k, head in self.heads.items()}


def resample(video: np.ndarray, frames: int, size: int) -> np.ndarray:
  """uint8 `[T, H, W, 3]` -> float32 `[frames, size, size, 3]` in [-1, 1]: frames evenly
  spaced over the clip (an image repeats), each area-resized to size x size."""
  from PIL import Image

  idx = np.round(np.linspace(0, len(video) - 1, frames)).astype(int)
  out = np.stack(
    [np.asarray(Image.fromarray(video[i]).resize((size, size), Image.Resampling.BOX)) for i in idx]
  )
  return out.astype(np.float32) / 127.5 - 1.0
