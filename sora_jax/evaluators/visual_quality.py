"""Visual quality without a learned judge: patch grids, sharpness, and whether a clip looks
like the data to the autoencoder.

  grid_ratio      data_pipelines.readback.grid_energy pooled over clips: the mean absolute
                  neighbour difference across the lines at the patch period over that
                  everywhere; ~1 when edges fall anywhere (real clips), > 1 for a visible
                  grid of patches
  sharpness       per frame, the mean of the 1% largest grey-level gradient magnitudes
                  (Sobel, 0-1 scale per pixel): edges blur, so it falls with blur
  autoencoder     with an autoencoder (AutoencoderStage): the PSNR of each clip's round
                  trip through it, on the longest 1 + 4k frames and the largest crop the
                  compression divides; clips like the data it was trained on come back well
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from data_pipelines import readback
from sora_jax.diffusion import latent


def sharpness(video: np.ndarray) -> float:
  g = video.astype(np.float32).mean(axis=-1) / 255.0
  values = []
  for f in g:
    mag = np.hypot(ndimage.sobel(f, axis=0), ndimage.sobel(f, axis=1)) / 8.0
    top = np.sort(mag.ravel())[-max(1, mag.size // 100) :]
    values.append(float(top.mean()))
  return float(np.mean(values))


def round_trip_psnr(video: np.ndarray, stage) -> float | None:
  ct, ch, cw = stage.compression
  t = 1 + (len(video) - 1) // ct * ct
  h, w = video.shape[1] // ch * ch, video.shape[2] // cw * cw
  if min(t, h, w) < 1:
    return None
  clip = video[:t, :h, :w]
  x = clip.astype(np.float32) / 127.5 - 1.0
  back = latent.to_uint8(stage.decode(stage.encode(x)))[:t]
  mse = float(np.mean((back.astype(np.float64) - clip) ** 2))
  return 100.0 if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def evaluate(videos, period: int, stage=None) -> dict:
  boundary = everywhere = 0.0
  for v in videos:
    b, e = readback.grid_energy(v, period)
    boundary, everywhere = boundary + b, everywhere + e
  out = {
    "grid_ratio": boundary / max(everywhere, 1e-9),
    "sharpness": float(np.mean([sharpness(v) for v in videos])) if videos else None,
    "n": len(videos),
  }
  if stage is not None:
    psnrs = [p for v in videos if (p := round_trip_psnr(v, stage)) is not None]
    out["autoencoder_psnr"] = float(np.mean(psnrs)) if psnrs else None
  return out
