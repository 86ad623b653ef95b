"""Temporal consistency: does each frame follow from the last, and do still things stay still?

warping_error   each frame t + 1 warped back onto frame t along the optical flow
                (sora_jax.evaluators.motion_quality), the mean absolute grey-level
                difference to frame t (0-1 scale) over the pixels the flow can explain:
                occluded pixels, where the forward flow and the backward flow at its end
                do not cancel (|f + b| > 0.5 px + 5% of their squared sizes), are left out
flicker         on clips whose prompt asks for no motion ("standing still"): the mean
                absolute difference between consecutive frames (0-1 scale); 0 for a
                still clip that does not flicker
"""

from __future__ import annotations

import numpy as np
from skimage.registration import optical_flow_ilk
from skimage.transform import warp

from sora_jax.evaluators import motion_quality


def warping_error(video: np.ndarray, flow: np.ndarray | None = None) -> float | None:
  g = motion_quality.grey(video)
  if len(g) < 2:
    return None
  flow = motion_quality.flows(video) if flow is None else flow
  h, w = g.shape[1:]
  rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
  errors = []
  for t in range(len(g) - 1):
    v, u = flow[t]
    coords = np.array([rows + v, cols + u])
    back = optical_flow_ilk(g[t + 1], g[t])
    bv = warp(back[0], coords, mode="edge", order=1)
    bu = warp(back[1], coords, mode="edge", order=1)
    mismatch = np.hypot(v + bv, u + bu)
    visible = mismatch <= 0.5 + 0.05 * (v**2 + u**2 + bv**2 + bu**2)
    warped = warp(g[t + 1], coords, mode="edge", order=1)
    if visible.any():
      errors.append(float(np.abs(warped - g[t])[visible].mean()))
  return float(np.mean(errors)) if errors else None


def flicker(video: np.ndarray) -> float | None:
  if len(video) < 2:
    return None
  return float(np.abs(np.diff(video.astype(np.float32), axis=0)).mean() / 255.0)


def evaluate(videos, still: list[bool], flows_=None) -> dict:
  """Mean warping error over clips, and mean flicker over the clips marked `still`."""
  warps = [warping_error(v, None if flows_ is None else flows_[i]) for i, v in enumerate(videos)]
  warps = [e for e in warps if e is not None]
  flick = [flicker(v) for v, s in zip(videos, still, strict=True) if s and len(v) > 1]
  return {
    "warping_error": float(np.mean(warps)) if warps else None,
    "flicker": float(np.mean(flick)) if flick else None,
    "n": len(warps),
    "n_still": len(flick),
  }
