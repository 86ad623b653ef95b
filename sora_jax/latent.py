"""The latent stage: maps video to the space the transformer denoises, and back.

  stage.encode(video [T, H, W, 3] in [-1, 1]) -> latent [t, h, w, C]
  stage.decode(latent [t, h, w, C]) -> video [T, H, W, 3] in [-1, 1]

with `compression = (ct, ch, cw)`: time is causal, so T = 1 + ct * (t - 1), and
H = ch * h, W = cw * w. `PixelStage` is the identity (compression 1); the
learned video autoencoder implements the same interface.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np

from data_pipelines import sizing


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


def make_stage(latent_cfg: Mapping[str, Any]) -> LatentStage:
  kind = latent_cfg.get("kind", "pixel")
  if kind == "pixel":
    return PixelStage()
  raise ValueError(f"latent.kind={kind!r}; allowed: 'pixel'")


def geometry(stage: LatentStage, patch) -> sizing.Geometry:
  """Token geometry of a stage with the model's patch size."""
  return sizing.Geometry(
    patch=tuple(int(p) for p in patch), compression=stage.compression, channels=stage.channels
  )


def to_uint8(video: np.ndarray) -> np.ndarray:
  """[-1, 1] floats -> uint8 pixels."""
  return np.clip(np.round((np.asarray(video, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)
