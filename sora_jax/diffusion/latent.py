"""The latent stage: maps video to the space the transformer denoises, and back.

  stage.encode(video [T, H, W, 3] in [-1, 1]) -> latent [t, h, w, C]
  stage.decode(latent [t, h, w, C]) -> video [T, H, W, 3] in [-1, 1]

with `compression = (ct, ch, cw)`: time is causal, so T = 1 + ct * (t - 1), and
H = ch * h, W = cw * w. `PixelStage` is the identity (compression 1).
`PCAStage` is a linear latent learned from the data in seconds (`fit_pca`,
`python -m sora_jax.fit_pca`): each frame's ch x cw pixel blocks projected on
the top principal components of the data's blocks (time is not compressed).
`AutoencoderStage` is the learned video autoencoder (sora_jax.models.autoencoder)
restored from a directory written by `sora_jax.train_autoencoder` (or a copy
exported beside a diffusion run, or the safetensors autoencoder/ of an exported model).
Its latents are normalized per channel,

  latent = (z - shift) * scale,   z ~ q(z | video) = N(mean, exp(logvar)),

with `shift` and `scale` from the directory's latent_stats.json (or a file
named by `latent.stats_file`, e.g. the one `sora_jax.cache_latents` writes),
so the diffusion transformer sees roughly unit-variance inputs. `LatentStats`
estimates them; `stage_for` and `geometry_for` give a diffusion config's stage
and token geometry.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from typing import Any, Protocol

import jax
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import SingleDeviceSharding

from data_pipelines import shards, sizing
from sora_jax.core import checkpointing, safetensors_io
from sora_jax.models import autoencoder

AUTOENCODER_COPY = "autoencoder"  # The autoencoder's copy inside a diffusion workdir.
PCA_COPY = "pca"  # The PCA stage's copy inside a diffusion workdir (and an export).
PCA_FILE = "pca.npz"
KINDS = ("pixel", "pca", "autoencoder")
STATS_FILE = (
  "latent_stats.json"  # Per-channel shift and scale, beside an autoencoder's checkpoints.
)


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
    self.directory = directory
    exported = os.path.exists(os.path.join(directory, "model" + safetensors_io.SUFFIX))
    if exported:  # An exported model's autoencoder/ (sora_jax.model_io): safetensors.
      self.step, config = None, _read_json(os.path.join(directory, "config.json"))
    else:
      self.step, config = checkpointing.restore_config(directory, step)
    self.config = config
    self.ae_cfg = autoencoder.AutoencoderConfig.from_config(config["model"])
    abstract = nnx.eval_shape(lambda: autoencoder.VideoAutoencoder(self.ae_cfg, rngs=nnx.Rngs(0)))
    graphdef, abstract_params = nnx.split(abstract, nnx.Param)
    device = jax.local_devices()[0]
    target = jax.tree.map(
      lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=SingleDeviceSharding(device)),
      nnx.to_pure_dict(abstract_params),
    )
    if exported:
      self.params = safetensors_io.read_tree(directory, target)
    else:
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
      self.stats_file = stats_file or os.path.join(directory, STATS_FILE)
      if not os.path.exists(self.stats_file):
        raise FileNotFoundError(
          f"{self.stats_file}: no latent statistics; finish training the autoencoder or run "
          "sora_jax.cache_latents, and name its file with latent.stats_file"
        )
      self.stats = read_stats(self.stats_file)
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
    if os.path.isdir(directory):
      return
    tmp = directory + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    src = os.path.join(checkpointing.directory(self.directory), str(self.step))
    dst = os.path.join(checkpointing.directory(tmp), str(self.step))
    shutil.copytree(
      src, dst, ignore=lambda d, names: {"state", "data"} & set(names) if d == src else ()
    )
    shards.atomic_write_json(os.path.join(tmp, STATS_FILE), self.stats)
    shards.atomic_write_json(os.path.join(tmp, "config.json"), self.config)
    os.replace(tmp, directory)


class PCAStage:
  """A linear latent: per frame, each `block` x `block` x 3 pixel block (D values) is
  projected on the top `channels` principal components of the data's blocks,

    latent = ((block - mean) @ basis) * scale,     block ~= (latent / scale) @ basis.T + mean

  with `scale` 1 (pixel units) or, whitened, making each channel unit-variance over
  the data. Fitted in seconds
  (`fit_pca`); encode and decode are one matmul each, so the data pipeline runs it on
  the host. Time is not compressed (compression (1, block, block)).
  """

  def __init__(
    self,
    directory: str,
    block: int | None = None,
    channels: int | None = None,
    whiten: bool | None = None,
  ):
    """`block`, `channels`, `whiten`: what the config expects (checked against the directory)."""
    self.directory = directory
    self.config = _read_json(os.path.join(directory, "config.json"))
    if self.config.get("kind") != "pca":
      raise ValueError(
        f"{directory}: not a PCA stage (config.json kind {self.config.get('kind')!r})"
      )
    for name, want in (("block", block), ("channels", channels), ("whiten", whiten)):
      have = self.config.get(name, False if name == "whiten" else None)
      if want is not None and have != want:
        raise ValueError(
          f"config.latent.pca_{name}={want} but the PCA stage in {directory} has "
          f"{name} {self.config[name]}; fit it again or set the field to match"
        )
    path = os.path.join(directory, PCA_FILE)
    if not os.path.exists(path):
      raise FileNotFoundError(f"{path}: missing; fit one with python -m sora_jax.fit_pca")
    with np.load(path) as f:
      self.mean, self.basis, self.scale = (
        np.asarray(f[k], np.float32) for k in ("mean", "basis", "scale")
      )
    self.block = int(self.config["block"])
    self.channels = int(self.basis.shape[1])
    self.compression = (1, self.block, self.block)

  def _blocks(self, video: np.ndarray) -> tuple[np.ndarray, tuple[int, int, int]]:
    t, h, w, c = video.shape
    b = self.block
    if h % b or w % b:
      raise ValueError(f"video {h}x{w} is not a multiple of the PCA block {b}")
    x = np.asarray(video, np.float32).reshape(t, h // b, b, w // b, b, c)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(t, h // b, w // b, b * b * c), (t, h // b, w // b)

  def moments(self, video: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the unnormalized projection, zeros): a deterministic latent, in the
    autoencoder's (mean, logvar) form the data pipeline consumes."""
    x, _ = self._blocks(video)
    z = (x - self.mean) @ self.basis
    return z, np.full_like(z, -np.inf)

  def from_moments(self, mean, logvar=None, rng=None) -> np.ndarray:
    del logvar, rng
    return np.asarray(mean, np.float32) * self.scale

  def encode(self, video: np.ndarray) -> np.ndarray:
    return self.from_moments(self.moments(video)[0])

  def decode(self, latent: np.ndarray) -> np.ndarray:
    z = np.asarray(latent, np.float32)
    t, h, w, _ = z.shape
    b = self.block
    x = (z / self.scale) @ self.basis.T + self.mean
    x = x.reshape(t, h, w, b, b, 3).transpose(0, 1, 3, 2, 4, 5).reshape(t, h * b, w * b, 3)
    return np.clip(x, -1.0, 1.0)

  def export(self, directory: str) -> None:
    """Copies the stage (config.json and pca.npz) into `directory`; an existing copy stays."""
    if os.path.isdir(directory):
      return
    tmp = directory + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    for name in ("config.json", PCA_FILE):
      shutil.copyfile(os.path.join(self.directory, name), os.path.join(tmp, name))
    os.replace(tmp, directory)


def fit_pca(
  clips, block: int, channels: int, whiten: bool = False
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
  """Principal components of the `block` x `block` x 3 pixel blocks of `clips`.

  `whiten`: scale each channel to unit variance; otherwise the coefficients stay in
  pixel units (scale 1: an orthonormal projection, so noise and errors in the latent
  are the same size in pixels).

  `clips`: an iterable of videos `[T, H, W, 3]` in [-1, 1] (sides multiples of
  `block`). Accumulates the blocks' sum and Gram matrix in float64 (one pass, any
  number of clips), then eigendecomposes. Returns the arrays PCAStage reads and a
  report: blocks seen, variance kept, and the PSNR of the projection on the fitting
  blocks (from the discarded eigenvalues).
  """
  d = block * block * 3
  if not 1 <= channels <= d:
    raise ValueError(f"channels={channels}: allowed 1..{d} for {block}x{block}x3 blocks")
  n, total, gram = 0, np.zeros(d), np.zeros((d, d))
  for video in clips:
    v = np.asarray(video, np.float64)
    t, h, w, _ = v.shape
    x = v.reshape(t, h // block, block, w // block, block, 3).transpose(0, 1, 3, 2, 4, 5)
    x = x.reshape(-1, d)
    n, total, gram = n + len(x), total + x.sum(0), gram + x.T @ x
  if n == 0:
    raise ValueError("no clips to fit the PCA stage on")
  mean = total / n
  cov = gram / n - np.outer(mean, mean)
  eigvals, eigvecs = np.linalg.eigh(cov)
  order = np.argsort(eigvals)[::-1]
  eigvals, eigvecs = np.clip(eigvals[order], 0.0, None), eigvecs[:, order]
  basis = eigvecs[:, :channels]
  # Sign convention: each component's largest entry positive (a deterministic basis).
  basis = basis * np.sign(basis[np.argmax(np.abs(basis), axis=0), np.arange(channels)])
  std = np.sqrt(np.maximum(eigvals[:channels], 1e-12))
  mse = eigvals[channels:].sum() / d
  arrays = {
    "mean": mean.astype(np.float32),
    "basis": basis.astype(np.float32),
    "scale": (1.0 / std if whiten else np.ones(channels)).astype(np.float32),
  }
  report = {
    "whiten": bool(whiten),
    "blocks": int(n),
    "variance_kept": float(eigvals[:channels].sum() / max(eigvals.sum(), 1e-12)),
    "psnr_db": float(10 * np.log10(4.0 / max(mse, 1e-12))),  # Pixels span [-1, 1]: peak 2.
    "channel_std": [float(v) for v in std],
  }
  return arrays, report


def write_pca(
  directory: str, block: int, arrays: Mapping[str, np.ndarray], report: Mapping
) -> None:
  """Writes a PCAStage directory (config.json with the fit's report, pca.npz)."""
  os.makedirs(directory, exist_ok=True)
  np.savez(os.path.join(directory, PCA_FILE), **arrays)
  channels = int(arrays["basis"].shape[1])
  shards.atomic_write_json(
    os.path.join(directory, "config.json"),
    {"kind": "pca", "block": int(block), "channels": channels, **report},
  )


def _read_json(path: str) -> dict[str, Any]:
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: missing")
  with open(path) as f:
    return json.load(f)


def stage_shape(
  latent_cfg: Mapping[str, Any], directory: str | None = None
) -> tuple[tuple[int, int, int], int]:
  """(compression, channels) of the stage a config names, from its directory's config.json."""
  kind = latent_cfg.get("kind", "pixel")
  if kind == "pca":  # The config states the shape; the directory must match it.
    b = int(latent_cfg["pca_block"])
    return (1, b, b), int(latent_cfg["pca_channels"])
  if kind != "autoencoder":
    return PixelStage.compression, PixelStage.channels
  directory = directory or latent_cfg.get("autoencoder", "")
  path = os.path.join(directory, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: no autoencoder config (latent.autoencoder={directory!r})")
  with open(path) as f:
    ae = autoencoder.AutoencoderConfig.from_config(json.load(f)["model"])
  return (ae.temporal_factor, ae.spatial_factor, ae.spatial_factor), ae.latent_channels


def make_stage(latent_cfg: Mapping[str, Any], directory: str | None = None) -> LatentStage:
  """The stage a config names; `directory` overrides latent.autoencoder or latent.pca
  (e.g. the copy saved beside a diffusion run)."""
  kind = latent_cfg.get("kind", "pixel")
  if kind == "pixel":
    return PixelStage()
  if kind == "pca":
    directory = directory or latent_cfg.get("pca", "")
    if not directory:
      raise ValueError("latent.kind='pca' needs latent.pca=DIR (python -m sora_jax.fit_pca)")
    return PCAStage(
      directory,
      latent_cfg.get("pca_block"),
      latent_cfg.get("pca_channels"),
      latent_cfg.get("pca_whiten"),
    )
  if kind == "autoencoder":
    directory = directory or latent_cfg.get("autoencoder", "")
    if not directory:
      raise ValueError(
        "latent.kind='autoencoder' needs latent.autoencoder=DIR (a trained autoencoder)"
      )
    stats = "" if directory != latent_cfg.get("autoencoder") else latent_cfg.get("stats_file", "")
    step = latent_cfg.get("step", -1)
    return AutoencoderStage(directory, None if step is None or step < 0 else int(step), stats)
  raise ValueError(f"latent.kind={kind!r}; allowed: {', '.join(map(repr, KINDS))}")


def geometry(stage: LatentStage, patch) -> sizing.Geometry:
  """Token geometry of a stage with the model's patch size."""
  return sizing.Geometry(
    patch=tuple(int(p) for p in patch), compression=stage.compression, channels=stage.channels
  )


def to_uint8(video: np.ndarray) -> np.ndarray:
  """[-1, 1] floats -> uint8 pixels."""
  return np.clip(np.round((np.asarray(video, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------
# A diffusion config's stage and token geometry.
# ------------------------------------------------------------------------------


def cached_latents(cfg: ml_collections.ConfigDict) -> dict[str, Any] | None:
  """The "latent" entry of a cached-latent dataset's manifest, or None."""
  d = cfg.data
  if d.source != "array_record" or not d.data_dir:
    return None
  try:
    return shards.read_manifest(d.data_dir).get("latent")
  except shards.DatasetError:
    return None


def stage_for(cfg: ml_collections.ConfigDict, directory: str | None = None) -> LatentStage:
  """The config's latent stage; `directory` overrides the autoencoder (e.g. a run's copy).

  Training on cached latents without latent.stats_file normalizes with the
  statistics the cache was made with.
  """
  lat = dict(cfg.latent)
  if lat.get("kind") == "autoencoder" and not lat.get("stats_file") and directory is None:
    cached = cached_latents(cfg)
    if cached:
      lat["stats_file"] = os.path.join(cfg.data.data_dir, cached["stats_file"])
  return make_stage(lat, directory)


def geometry_for(
  cfg: ml_collections.ConfigDict, stage: LatentStage | None = None
) -> sizing.Geometry:
  """Token geometry; without a stage, read from the latent stage's config (no weights loaded)."""
  if stage is not None:
    return geometry(stage, cfg.model.patch)
  compression, channels = stage_shape(cfg.latent)
  return sizing.Geometry(tuple(int(p) for p in cfg.model.patch), compression, channels)


# ------------------------------------------------------------------------------
# Latent statistics.
# ------------------------------------------------------------------------------


class LatentStats:
  """Running per-channel mean and variance of latent samples (Chan et al.'s parallel update)."""

  def __init__(self, channels: int):
    self.n = 0
    self.mean = np.zeros(channels, np.float64)
    self.m2 = np.zeros(channels, np.float64)

  def merge(self, n: int, mean: np.ndarray, m2: np.ndarray) -> None:
    """Adds another accumulator's (count, mean, sum of squared deviations)."""
    total = self.n + n
    if total == 0:
      return
    delta = np.asarray(mean, np.float64) - self.mean
    self.mean = self.mean + delta * n / total
    self.m2 = self.m2 + np.asarray(m2, np.float64) + delta**2 * self.n * n / total
    self.n = total

  def add(self, z: np.ndarray) -> None:
    """Adds latents `[..., C]`."""
    x = np.asarray(z, np.float64).reshape(-1, self.mean.size)
    mean = x.mean(0)
    self.merge(x.shape[0], mean, ((x - mean) ** 2).sum(0))

  def add_moments(self, mean: np.ndarray, logvar: np.ndarray) -> None:
    """Adds the posterior q(z|x) = N(mean, exp(logvar)): its mean plus its spread."""
    self.add(mean)
    # Var[z] = Var[mean] + E[exp(logvar)]; the second term enters as extra spread.
    extra = np.exp(np.asarray(logvar, np.float64)).reshape(-1, self.mean.size).mean(0)
    n = np.asarray(mean).reshape(-1, self.mean.size).shape[0]
    self.m2 = self.m2 + extra * n

  def to_json(self) -> dict[str, Any]:
    std = np.sqrt(self.m2 / max(self.n, 1))
    return {
      "shift": [float(v) for v in self.mean],
      "scale": [float(1.0 / max(s, 1e-6)) for s in std],
      "count": int(self.n),
    }


def write_stats(path: str, stats: Mapping[str, Any], **extra: Any) -> None:
  shards.atomic_write_json(path, {**stats, **extra})


def read_stats(path: str) -> dict[str, Any]:
  with open(path) as f:
    d = json.load(f)
  if "shift" not in d or "scale" not in d:
    raise ValueError(f"{path}: not a latent statistics file (needs 'shift' and 'scale')")
  return d


def copy_name(latent_cfg: Mapping[str, Any]) -> str | None:
  """Where a run keeps its stage's copy (WORKDIR/NAME, and NAME/ in an export); None for pixels."""
  return {"autoencoder": AUTOENCODER_COPY, "pca": PCA_COPY}.get(latent_cfg.get("kind", "pixel"))
