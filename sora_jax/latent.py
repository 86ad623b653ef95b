"""The latent stage: maps video to the space the transformer denoises, and back.

  stage.encode(video [T, H, W, 3] in [-1, 1]) -> latent [t, h, w, C]
  stage.decode(latent [t, h, w, C]) -> video [T, H, W, 3] in [-1, 1]

with `compression = (ct, ch, cw)`: time is causal, so T = 1 + ct * (t - 1), and
H = ch * h, W = cw * w. `PixelStage` is the identity (compression 1).
`AutoencoderStage` is the learned video autoencoder (sora_jax.models.autoencoder)
restored from a directory written by `sora_jax.train_autoencoder` (or a copy
exported beside a diffusion run). Its latents are normalized per channel,

  latent = (z - shift) * scale,   z ~ q(z | video) = N(mean, exp(logvar)),

with `shift` and `scale` from the directory's latent_stats.json (or a file
named by `latent.stats_file`, e.g. the one `data_pipelines.cache_latents`
writes), so the diffusion transformer sees roughly unit-variance inputs.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from typing import Any, Protocol

import jax
import numpy as np
from jax.sharding import SingleDeviceSharding

from data_pipelines import sizing

AUTOENCODER_COPY = "autoencoder"  # The autoencoder's copy inside a diffusion workdir.


class LatentStage(Protocol):
  compression: tuple[int, int, int]
  channels: int

  def encode(self, video: np.ndarray) -> np.ndarray: ...

  def decode(self, latent: np.ndarray) -> np.ndarray: ...


class PixelStage:
  """Identity: the transformer works directly on pixels in [-1, 1]."""

  compression = (1, 1, 1)
  channels = 3

  def encode(self, video: np.ndarray) -> np.ndarray:
    return np.asarray(video, np.float32)

  def decode(self, latent: np.ndarray) -> np.ndarray:
    return np.clip(np.asarray(latent, np.float32), -1.0, 1.0)


class AutoencoderStage:
  """The learned causal video autoencoder, restored on this process's first device.

  `encode`/`decode` follow the LatentStage protocol (deterministic: the
  posterior mean); `moments` and `from_moments` split encoding so a training
  pipeline can sample the posterior, from pixels or from cached moments alike.
  """

  def __init__(self, directory: str, step: int | None = None, stats_file: str | None = ""):
    """`stats_file`: "" reads DIR/latent_stats.json; None normalizes with shift 0, scale 1."""
    from flax import nnx

    from sora_jax import autoencoder_trainer, checkpointing, config_lib
    from sora_jax.models import autoencoder

    self.directory = directory
    self.step, config = checkpointing.restore_config(directory, step)
    self.config = config
    self.ae_cfg = autoencoder_trainer.model_config(config_lib.from_json(config))
    abstract = nnx.eval_shape(lambda: autoencoder.VideoAutoencoder(self.ae_cfg, rngs=nnx.Rngs(0)))
    graphdef, abstract_params = nnx.split(abstract, nnx.Param)
    device = jax.local_devices()[0]
    target = jax.tree.map(
      lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=SingleDeviceSharding(device)),
      nnx.to_pure_dict(abstract_params),
    )
    self.params = checkpointing.restore_ema(directory, self.step, target)
    if stats_file is None:  # Identity normalization: for tools that never use the scale.
      self.stats_file, self.stats = (
        None,
        {
          "shift": [0.0] * self.ae_cfg.latent_channels,
          "scale": [1.0] * self.ae_cfg.latent_channels,
        },
      )
    else:
      self.stats_file = stats_file or os.path.join(directory, autoencoder_trainer.STATS_FILE)
      if not os.path.exists(self.stats_file):
        raise FileNotFoundError(
          f"{self.stats_file}: no latent statistics; finish training the autoencoder or run "
          "data_pipelines.cache_latents, and name its file with latent.stats_file"
        )
      self.stats = autoencoder_trainer.read_stats(self.stats_file)
    self.shift = np.asarray(self.stats["shift"], np.float32)
    self.scale = np.asarray(self.stats["scale"], np.float32)
    self.compression = (
      self.ae_cfg.temporal_factor,
      self.ae_cfg.spatial_factor,
      self.ae_cfg.spatial_factor,
    )
    self.channels = self.ae_cfg.latent_channels
    if self.shift.shape != (self.channels,) or self.scale.shape != (self.channels,):
      raise ValueError(
        f"{self.stats_file}: statistics for {self.shift.size} channels; the autoencoder has "
        f"{self.channels}"
      )

    self.graphdef = graphdef

    def merge(params):
      return nnx.merge(graphdef, params)

    self._encode = jax.jit(lambda p, v: merge(p).encode(v[None]))
    self._decode = jax.jit(lambda p, z: merge(p).decode(z[None])[0])

  def module(self):
    """The autoencoder as an nnx module holding the restored weights (for chunked or tiled use)."""
    from flax import nnx

    return nnx.merge(self.graphdef, self.params)

  def moments(self, video: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unnormalized posterior (mean, logvar) `[t, h, w, C]` of a video `[T, H, W, 3]`."""
    mean, logvar = jax.device_get(self._encode(self.params, np.asarray(video, np.float32)))
    return mean[0], logvar[0]

  def from_moments(
    self, mean: np.ndarray, logvar: np.ndarray, rng: np.random.Generator | None = None
  ) -> np.ndarray:
    """The normalized latent: a posterior sample drawn with `rng`, or the mean."""
    z = np.asarray(mean, np.float32)
    if rng is not None:
      z = z + np.exp(0.5 * np.asarray(logvar, np.float32)) * rng.standard_normal(
        z.shape, np.float32
      )
    return (z - self.shift) * self.scale

  def encode(self, video: np.ndarray) -> np.ndarray:
    return self.from_moments(*self.moments(video))

  def decode(self, latent: np.ndarray) -> np.ndarray:
    z = np.asarray(latent, np.float32) / self.scale + self.shift
    return np.clip(np.asarray(self._decode(self.params, z)), -1.0, 1.0)

  def export(self, directory: str) -> None:
    """Copies this autoencoder (its EMA weights, config and statistics) into `directory`.

    The copy holds just what sampling reads; an existing copy is left as it is.
    """
    from data_pipelines import shards
    from sora_jax import checkpointing

    if os.path.isdir(directory):
      return
    tmp = directory + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    src = os.path.join(checkpointing.directory(self.directory), str(self.step))
    dst = os.path.join(checkpointing.directory(tmp), str(self.step))
    shutil.copytree(
      src, dst, ignore=lambda d, names: {"state", "data"} & set(names) if d == src else ()
    )
    shards.atomic_write_json(os.path.join(tmp, "latent_stats.json"), self.stats)
    shards.atomic_write_json(os.path.join(tmp, "config.json"), self.config)
    os.replace(tmp, directory)


def stage_shape(
  latent_cfg: Mapping[str, Any], directory: str | None = None
) -> tuple[tuple[int, int, int], int]:
  """(compression, channels) of the stage a config names, from the autoencoder's config.json."""
  if latent_cfg.get("kind", "pixel") != "autoencoder":
    return PixelStage.compression, PixelStage.channels
  from sora_jax import autoencoder_trainer, config_lib

  directory = directory or latent_cfg.get("autoencoder", "")
  path = os.path.join(directory, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: no autoencoder config (latent.autoencoder={directory!r})")
  with open(path) as f:
    ae = autoencoder_trainer.model_config(config_lib.from_json(json.load(f)))
  return (ae.temporal_factor, ae.spatial_factor, ae.spatial_factor), ae.latent_channels


def make_stage(latent_cfg: Mapping[str, Any], directory: str | None = None) -> LatentStage:
  """The stage a config names; `directory` overrides latent.autoencoder (e.g. the copy
  saved beside a diffusion run)."""
  kind = latent_cfg.get("kind", "pixel")
  if kind == "pixel":
    return PixelStage()
  if kind == "autoencoder":
    directory = directory or latent_cfg.get("autoencoder", "")
    if not directory:
      raise ValueError(
        "latent.kind='autoencoder' needs latent.autoencoder=DIR (a trained autoencoder)"
      )
    stats = "" if directory != latent_cfg.get("autoencoder") else latent_cfg.get("stats_file", "")
    step = latent_cfg.get("step", -1)
    return AutoencoderStage(directory, None if step is None or step < 0 else int(step), stats)
  raise ValueError(f"latent.kind={kind!r}; allowed: 'pixel', 'autoencoder'")


def geometry(stage: LatentStage, patch) -> sizing.Geometry:
  """Token geometry of a stage with the model's patch size."""
  return sizing.Geometry(
    patch=tuple(int(p) for p in patch), compression=stage.compression, channels=stage.channels
  )


def to_uint8(video: np.ndarray) -> np.ndarray:
  """[-1, 1] floats -> uint8 pixels."""
  return np.clip(np.round((np.asarray(video, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)
