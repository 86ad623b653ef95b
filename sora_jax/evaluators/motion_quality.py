"""Motion quality: how much clips move, and whether as fast as their prompts ask.

Optical flow between consecutive frames is scikit-image's iterative Lucas-Kanade
(`optical_flow_ilk`, on grey levels), a classical method with no learned weights.
Per clip:

  flow          mean flow magnitude over the moving pixels (those whose flow is at least
                MOVING_PIXELS px per frame), in frame sides per second
  moves         whether the clip moves at all: its 95th-percentile flow magnitude is at
                least MOVING_PIXELS px per frame (the fraction of such clips is reported)
  speed         the flow of the moving pixels as one of data_pipelines.recaption's
                speed words (slowly / at a steady pace / quickly), compared with the speed
                the prompt asks for, where it asks (descriptive prompts)
"""

from __future__ import annotations

import math

import numpy as np
from skimage.registration import optical_flow_ilk

from data_pipelines import describe

MOVING_PIXELS = 0.5  # Flow (pixels per frame) from which a pixel, or a clip, moves.


def grey(video: np.ndarray) -> np.ndarray:
  return video.astype(np.float32).mean(axis=-1) / 255.0


def flows(video: np.ndarray) -> np.ndarray:
  """Flow (v, u) from each frame to the next, `[T - 1, 2, H, W]` pixels per frame."""
  g = grey(video)
  if len(g) < 2:
    return np.zeros((0, 2, *g.shape[1:]), np.float32)
  return np.stack([optical_flow_ilk(g[i], g[i + 1]) for i in range(len(g) - 1)])


def clip_motion(video: np.ndarray, fps: float, flow: np.ndarray | None = None) -> dict:
  """{"moves", "flow" (sides per second, None if nothing moves), "speed" (word or None)}."""
  flow = flows(video) if flow is None else flow
  if not len(flow):
    return {"moves": False, "flow": None, "speed": None}
  mag = np.hypot(flow[:, 0], flow[:, 1])
  moves = bool(np.percentile(mag, 95) >= MOVING_PIXELS)
  moving = mag[mag >= MOVING_PIXELS]
  if not moves or not moving.size:
    return {"moves": moves, "flow": None, "speed": None}
  side = math.sqrt(video.shape[1] * video.shape[2])
  per_second = float(np.median(moving)) / side * fps
  return {
    "moves": True,
    "flow": per_second,
    "speed": describe.speed_word(per_second),
  }


def evaluate(videos, fps: float, asked_speeds=None, flows_=None) -> dict:
  """Over clips: the fraction that moves, the mean flow of those that do, and (given
  `asked_speeds`, a word or None per clip) how often the speed read is the one asked."""
  rows = [clip_motion(v, fps, None if flows_ is None else flows_[i]) for i, v in enumerate(videos)]
  moving = [r["flow"] for r in rows if r["flow"] is not None]
  out = {
    "moving_fraction": float(np.mean([r["moves"] for r in rows])) if rows else None,
    "flow": float(np.mean(moving)) if moving else None,
    "n": len(rows),
  }
  if asked_speeds is not None:
    hits = [r["speed"] == a for r, a in zip(rows, asked_speeds, strict=True) if a]
    out["speed_accuracy"] = float(np.mean(hits)) if hits else None
    out["n_speed"] = len(hits)
  return out
