"""Spacetime patches: video `[T, H, W, C]` <-> tokens `[n, pt*ph*pw*C]` with (t, h, w) coordinates.

Tokens are ordered t-major, then h, then w; each token's features are ordered
(pt, ph, pw, C). Coordinates are patch-grid indices, int32 `[n, 3]`. When T is
not a multiple of pt, time is padded by repeating the last frame, and
`unpatchify` crops it off again, so the round trip is exact for every size.

The functions use only array methods, so they work on numpy and jax arrays.
"""

from __future__ import annotations

import numpy as np


def grid_shape(shape: tuple[int, int, int], patch: tuple[int, int, int]) -> tuple[int, int, int]:
  """Patch grid (nt, nh, nw) of a `(T, H, W)` volume; H and W must divide."""
  t, h, w = shape
  pt, ph, pw = patch
  if h % ph or w % pw:
    raise ValueError(f"height {h} and width {w} must be multiples of the patch {ph}x{pw}")
  return -(-t // pt), h // ph, w // pw


def patchify(video, patch: tuple[int, int, int]):
  """Cuts `[T, H, W, C]` into tokens `[nt*nh*nw, pt*ph*pw*C]`."""
  t, h, w, c = video.shape
  pt, ph, pw = patch
  nt, nh, nw = grid_shape((t, h, w), patch)
  if nt * pt != t:  # Pad time by repeating the last frame.
    pad = video[-1:].repeat(nt * pt - t, axis=0)
    video = _concat(video, pad)
  x = video.reshape(nt, pt, nh, ph, nw, pw, c)
  x = x.transpose(0, 2, 4, 1, 3, 5, 6)
  return x.reshape(nt * nh * nw, pt * ph * pw * c)


def unpatchify(
  tokens, grid: tuple[int, int, int], patch: tuple[int, int, int], frames: int | None = None
):
  """Inverse of `patchify`: tokens `[nt*nh*nw, D]` -> `[T, H, W, C]`, cropped to `frames`."""
  nt, nh, nw = grid
  pt, ph, pw = patch
  c = tokens.shape[-1] // (pt * ph * pw)
  if c * pt * ph * pw != tokens.shape[-1] or tokens.shape[0] != nt * nh * nw:
    raise ValueError(f"tokens {tokens.shape} do not match grid {grid} and patch {patch}")
  x = tokens.reshape(nt, nh, nw, pt, ph, pw, c).transpose(0, 3, 1, 4, 2, 5, 6)
  x = x.reshape(nt * pt, nh * ph, nw * pw, c)
  return x if frames is None else x[:frames]


def coordinates(grid: tuple[int, int, int]) -> np.ndarray:
  """int32 `[nt*nh*nw, 3]` (t, h, w) grid indices in token order."""
  return np.indices(grid, dtype=np.int32).reshape(3, -1).T.copy()


def grid_from_coordinates(coords: np.ndarray) -> tuple[int, int, int]:
  """The grid (nt, nh, nw) spanned by a full example's coordinates."""
  return tuple(int(v) + 1 for v in np.max(coords, axis=0))


def _concat(a, b):
  if isinstance(a, np.ndarray):
    return np.concatenate([a, b], axis=0)
  import jax.numpy as jnp  # Only for jax inputs.

  return jnp.concatenate([a, b], axis=0)
