r"""Reconstruction quality and speed of a trained video autoencoder.

`evaluate(stage, data_dir)` returns, and with an output directory writes as
autoencoder_benchmark.json beside a PNG of originals above reconstructions:

  dataset   PSNR and SSIM (posterior mean, decoded) over `num_clips` clips of
            the split at their native size, cut to multiples of 8 pixels and
            1 + 4k frames (at most `max_frames`); images and videos separately.
  photos    the same over clips that pan and zoom across the photographs that
            ship inside scikit-image (skipped, with a note, when it is not
            installed): each photo gives a pan and a zoom of `max_frames` frames
            at `photo_size` pixels.
  speed     encode and decode frames/s of one max_frames x photo_size clip,
            one shot and chunked, after compiling.
"""

from __future__ import annotations

import os
import time

import jax
import numpy as np
from PIL import Image

from data_pipelines import contact_sheet, media, pipeline, shards
from sora_jax.core import image_metrics
from sora_jax.diffusion.latent import AutoencoderStage, to_uint8

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field")


def fit_clip(frames: np.ndarray, max_frames: int, temporal: int, spatial: int) -> np.ndarray:
  """uint8 [T, H, W, 3] -> float32 in [-1, 1], cut to 1 + k*temporal frames and multiples of spatial."""
  t = 1 + (min(len(frames), max_frames) - 1) // temporal * temporal
  h = max(spatial, frames.shape[1] // spatial * spatial)
  w = max(spatial, frames.shape[2] // spatial * spatial)
  clip = frames[:t]
  if clip.shape[1] < h or clip.shape[2] < w:  # Smaller than one multiple: upscale.
    clip = pipeline.resize_frames(clip, max(h, clip.shape[1]), max(w, clip.shape[2]))
  return pipeline.to_unit_range(clip[:, :h, :w])


def pan_and_zoom(photo: np.ndarray, frames: int, size: int) -> list[np.ndarray]:
  """Two uint8 clips over one photo: a horizontal pan and a zoom toward the centre."""
  h, w = photo.shape[:2]
  side = min(h, w)
  out = []
  crop = int(side * 0.6)
  pan = [
    photo[(h - crop) // 2 : (h - crop) // 2 + crop, x : x + crop]
    for x in np.linspace(0, w - crop, frames).round().astype(int)
  ]
  out.append(pan)
  zoom = []
  for s in np.linspace(side, side * 0.5, frames).round().astype(int):
    y, x = (h - s) // 2, (w - s) // 2
    zoom.append(photo[y : y + s, x : x + s])
  out.append(zoom)
  return [
    np.stack([np.asarray(Image.fromarray(f).resize((size, size), Image.BICUBIC)) for f in clip])
    for clip in out
  ]


def photos() -> list[tuple[str, np.ndarray]]:
  try:
    import skimage.data
  except ImportError:
    return []
  out = []
  for name in PHOTOS:
    img = np.asarray(getattr(skimage.data, name)())
    if img.ndim == 2:
      img = np.stack([img] * 3, axis=-1)
    out.append((name, img[..., :3].astype(np.uint8)))
  return out


def reconstruct(stage: AutoencoderStage, clip: np.ndarray) -> tuple[np.ndarray, float, float]:
  recon = stage.decode(stage.from_moments(*stage.moments(clip)))  # The posterior mean.
  p = float(image_metrics.psnr(recon[None], clip[None])[0])
  s = float(image_metrics.ssim(recon[None], clip[None])[0])
  return recon, p, s


def summarize(values: list[float]) -> dict[str, float]:
  if not values:
    return {"n": 0}
  return {"n": len(values), "mean": float(np.mean(values)), "min": float(np.min(values))}


def speed(stage: AutoencoderStage, clip: np.ndarray, repeats: int = 3) -> dict[str, float]:
  """Frames/s of encoding and decoding one clip, one shot and chunked (after compiling)."""

  def timed(fn):
    jax.block_until_ready(fn())  # Compile.
    t0 = time.perf_counter()
    for _ in range(repeats):
      jax.block_until_ready(fn())
    return (time.perf_counter() - t0) / repeats

  mean, logvar = stage.moments(clip)
  z = stage.from_moments(mean, logvar)
  n = clip.shape[0]
  out = {
    "clip": list(clip.shape[:3]),
    "encode_frames_per_s": n / timed(lambda: stage.moments(clip)),
    "decode_frames_per_s": n / timed(lambda: stage.decode(z)),
  }
  if n > 1:
    model = stage.module()
    x, zj = jax.numpy.asarray(clip[None]), jax.numpy.asarray(mean[None])
    out["encode_chunked_frames_per_s"] = n / timed(lambda: model.encode_chunked(x, 4)[0])
    out["decode_chunked_frames_per_s"] = n / timed(lambda: model.decode_chunked(zj, 1))
  return out


def evaluate(
  stage: AutoencoderStage,
  data_dir: str,
  *,
  split: str = "eval",
  num_clips: int = 128,
  max_frames: int = 17,
  photo_size: int = 128,
  output: str | None = None,
) -> dict:
  """Reconstruction quality and speed of `stage` (see the module docstring); with `output`,
  writes autoencoder_benchmark.json and reconstructions.png there."""
  tf, sf, _ = stage.compression
  if (max_frames - 1) % tf:
    raise ValueError(f"--max_frames={max_frames}: must be 1 + a multiple of {tf}")
  if photo_size % sf or photo_size <= 0:
    raise ValueError(f"--photo_size={photo_size}: must be a positive multiple of {sf}")
  sheet, data = [], {"image": ([], []), "video": ([], [])}
  files = shards.split_files(data_dir, split)
  count = 0
  for path in files:
    for ex in shards.read_shard(path):
      if count >= num_clips:
        break
      clip = fit_clip(media.decode(ex), max_frames, tf, sf)
      recon, p, s = reconstruct(stage, clip)
      kind = "image" if clip.shape[0] == 1 else "video"
      data[kind][0].append(p)
      data[kind][1].append(s)
      if count < 6:
        sheet += [(to_uint8(clip), ex.captions[0]), (to_uint8(recon), f"reconstruction {p:.1f} dB")]
      count += 1
  result = {
    "autoencoder": os.path.abspath(stage.directory),
    "step": stage.step,
    "dataset": {
      "split": split,
      **{f"{k}_psnr": summarize(v[0]) for k, v in data.items()},
      **{f"{k}_ssim": summarize(v[1]) for k, v in data.items()},
      "psnr": summarize(data["image"][0] + data["video"][0]),
      "ssim": summarize(data["image"][1] + data["video"][1]),
    },
  }
  ph = photos()
  if ph:
    ps, ss = [], []
    for name, img in ph:
      for kind, clip in zip(
        ("pan", "zoom"), pan_and_zoom(img, max_frames, photo_size), strict=True
      ):
        x = pipeline.to_unit_range(clip)
        recon, p, s = reconstruct(stage, x)
        ps.append(p)
        ss.append(s)
        if kind == "pan" and len(sheet) < 20:
          sheet += [(clip, f"{name} {kind}"), (to_uint8(recon), f"reconstruction {p:.1f} dB")]
    result["photos"] = {"clips": 2 * len(ph), "psnr": summarize(ps), "ssim": summarize(ss)}
  else:
    result["photos"] = {"note": "scikit-image is not installed (pip install scikit-image)"}
  probe = (
    pipeline.to_unit_range(pan_and_zoom(ph[0][1], max_frames, photo_size)[0])
    if ph
    else (np.zeros((max_frames, photo_size, photo_size, 3), np.float32))
  )
  result["speed"] = {"device": jax.devices()[0].device_kind, **speed(stage, probe)}
  if output:
    os.makedirs(output, exist_ok=True)
    shards.atomic_write_json(os.path.join(output, "autoencoder_benchmark.json"), result)
    media.write_png(os.path.join(output, "reconstructions.png"), contact_sheet.contact_sheet(sheet))
  return result
