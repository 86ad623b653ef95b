"""The Fréchet distance between two sets of clip features (Gaussians fitted to each):

  FD = |mu_a - mu_b|^2 + trace(S_a + S_b - 2 (S_a S_b)^(1/2))

measured in the evaluation probe's feature space (sora_jax.evaluators.alignment), our
stand-in for FVD, whose I3D weights would have to be downloaded. Two halves of the same
real data give its floor (finite samples never read 0).
"""

from __future__ import annotations

import numpy as np
from scipy import linalg


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
  """Between feature sets `[N, F]` and `[M, F]` (N, M >= 2)."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if len(a) < 2 or len(b) < 2:
    raise ValueError(f"need at least 2 clips on each side; got {len(a)} and {len(b)}")
  mu_a, mu_b = a.mean(0), b.mean(0)
  s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
  root = linalg.sqrtm(s_a @ s_b)
  if not np.isfinite(root).all():  # Near-singular products: regularize, as FID does.
    eps = 1e-6 * np.eye(len(s_a))
    root = linalg.sqrtm((s_a + eps) @ (s_b + eps))
  root = np.real(root)
  return float(max(0.0, np.sum((mu_a - mu_b) ** 2) + np.trace(s_a + s_b - 2.0 * root)))
