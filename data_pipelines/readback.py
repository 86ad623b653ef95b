"""Reads colour, shape, motion, background and style back from the pixels of a synthetic-style clip.

It scores videos a model generated from synthetic captions, so it expects blur
and noise. Steps:

  stripes     the per-row median colour over all frames and columns is the
              background of each row (the object covers under half of any
              row); rows split into a lighter and a darker shade, and two
              shades at least STRIPE_CONTRAST apart in MIN_BANDS bands or more are a
              striped background, whose base shade is the one nearer a
              background colour;
  background  plain: per-channel median of the border pixels of every frame;
              striped: the base shade, with each row's own colour subtracted
              below; matched to the nearest background colour;
  colour      on a 3x3 box-filtered copy (a third of the noise), the top 0.4%
              of pixels by distance from the background lie on the object;
              pixels beyond half that distance are foreground, and their
              per-channel median is matched to the object colour whose blend
              with the background comes nearest (blur dims small objects);
  coverage    projecting each pixel onto the background -> object colour line
              says how much of it the object covers, with zero-mean noise;
  shape       per frame, circle, square and triangle templates of the measured
              area and centroid are drawn with the dataset's own renderer,
              sharp and Gaussian-blurred, and the one that fits best summed
              over up to 8 frames wins;
  outline     background pixels of an object's box enclosed by object pixels
              on its row and its column are a hole: their share of the
              object's filled area is the hole fraction, and above
              OUTLINE_HOLE the object is outlined; holes are filled before
              the shape is fitted;
  motion      the median slope (Theil-Sen) of the per-frame centroids gives the
              displacement over the clip relative to the frame size; below
              `still_threshold` it is "standing still". Images have motion None.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import ndimage

from data_pipelines import render
from data_pipelines.vocab import (
  BACKGROUND_RGB,
  BACKGROUNDS,
  COLOR_RGB,
  COLORS,
  MOTIONS,
  SHAPES,
  STILL,
  STYLES,
  caption_style,
  parse_caption,
)

__all__ = [
  "BACKGROUNDS",
  "COLORS",
  "MOTIONS",
  "SHAPES",
  "STYLES",
  "caption_style",
  "parse_caption",
  "read_attributes",
  "read_style",
  "score",
]

MIN_CONTRAST = 40.0  # RGB distance below which no object is reported.
_TOP_FRACTION = 0.004  # Smallest object area expected, as a fraction of all pixels.
_SHAPE_FRAMES = 8  # Frames the shape is fitted on.
_BLUR = (0.7, 1.4)  # Gaussian blurs (pixels) tried on the templates besides none.
STRIPE_CONTRAST = 40.0  # RGB distance between the background's two shades that makes it striped,
MIN_BANDS = 4  # in at least this many bands (rows crossing a big object make 3 on a plain one).
HOLE_LEVELS = (0.5, 0.7)  # Coverage levels at which holes are looked for.
OUTLINE_HOLE = 0.04  # Hole fraction of the object above which it is outlined (filled: 0).


def _nearest(rgb: np.ndarray, palette: dict[str, tuple[int, int, int]]) -> str:
  names = list(palette)
  d = np.linalg.norm(np.asarray([palette[n] for n in names], np.float32) - rgb, axis=-1)
  return names[int(np.argmin(d))]


def _nearest_blend(rgb: np.ndarray, bg: np.ndarray) -> str:
  """The object colour whose blend with the background (any opacity) comes nearest to `rgb`.

  Blur mixes a small object with the background, so its pixels lie on the line
  from the background towards its colour, short of the colour itself.
  """
  names = list(COLOR_RGB)
  p = np.asarray([COLOR_RGB[n] for n in names], np.float32) - bg  # [K, 3]
  alpha = np.clip(p @ (rgb - bg) / np.maximum((p * p).sum(axis=1), 1e-6), 0.0, 1.0)
  d = np.linalg.norm(alpha[:, None] * p - (rgb - bg), axis=-1)
  return names[int(np.argmin(d))]


def read_attributes(frames: np.ndarray, still_threshold: float = 0.08) -> dict[str, Any]:
  """Estimates the scene attributes of uint8 frames `[T, H, W, 3]` (or one `[H, W, 3]` image).

  Args:
    frames: the clip; any size, possibly blurry and noisy.
    still_threshold: displacement over the clip, as a fraction of the frame
      side, below which the object is "standing still".

  Returns:
    color, shape, motion, background: vocabulary words; color, shape and
      motion are None when no object is found, motion also for 1-frame clips.
    outlined, striped: whether each style shows (see `read_style`).
    hole_fraction: median over up to 8 frames of the object's hole as a fraction of
      its filled area (0 for a filled object, 0.2 to 0.5 for a ring).
    stripe_contrast: RGB distance between the background's two shades (0 if plain).
    found: whether an object stands out from the background.
    contrast: RGB distance between object and background.
    color_rgb, background_rgb: the measured colours.
    shape_errors: per shape, the template misfit normalized by the area (lower is better).
    displacement: (dx / W, dy / H) of the object over the clip, or None.
    detected_frames: fraction of frames in which the object was found.
    objects: median over frames of the separate blobs standing out from the
      background (each at least a tenth of the largest's area): 1 for a clean clip.
    centers: per frame, the object's centroid (x, y) in pixels, or None where it was
      not found; [] when no object stands out.
    area: median over detected frames of the object's area in pixels (0 if none).
  """
  x = np.asarray(frames)
  if x.ndim == 3:
    x = x[None]
  if x.ndim != 4 or x.shape[-1] != 3:
    raise ValueError(f"frames must be [T, H, W, 3]; got {x.shape}")
  x = x.astype(np.float32)
  t, h, w, _ = x.shape

  b = max(1, min(h, w) // 16)
  rows = np.median(x, axis=(0, 2))  # [H, 3]
  stripe_contrast, base = _stripes(rows)
  striped = base is not None
  if striped:
    bg = base
    # Each row's own background, [H, 1, 3], and its 3-row mean to compare the box filter with.
    rows = rows[:, None, :]
    p = np.pad(rows, ((1, 1), (0, 0), (0, 0)), mode="edge")
    bg_img, bg_smooth = rows, (p[:-2] + p[1:-1] + p[2:]) / 3.0
  else:
    border = np.concatenate(
      [
        x[:, :b].reshape(-1, 3),
        x[:, -b:].reshape(-1, 3),
        x[:, b:-b, :b].reshape(-1, 3),
        x[:, b:-b, -b:].reshape(-1, 3),
      ]
    )
    bg = np.median(border, axis=0)
    bg_img = bg_smooth = bg
  out: dict[str, Any] = {
    "color": None,
    "shape": None,
    "motion": None,
    "background": _nearest(bg, BACKGROUND_RGB),
    "found": False,
    "contrast": 0.0,
    "color_rgb": None,
    "background_rgb": tuple(float(v) for v in bg),
    "shape_errors": None,
    "displacement": None,
    "detected_frames": 0.0,
    "objects": 0,
    "outlined": False,
    "striped": striped,
    "hole_fraction": 0.0,
    "stripe_contrast": stripe_contrast,
    "centers": [],
    "area": 0.0,
  }

  # Detection works on a 3x3 box-filtered copy, which cuts pixel noise by 3;
  # centroids and shapes on the unfiltered coverage, where noise is zero-mean.
  smooth = _box3(x)
  dist = np.linalg.norm(smooth - bg_smooth, axis=-1)  # [T, H, W]
  contrast = float(np.quantile(dist, 1.0 - _TOP_FRACTION))
  out["contrast"] = contrast
  if contrast < MIN_CONTRAST:
    return out
  fg_rgb = np.median(smooth[dist > contrast / 2], axis=0)
  out["objects"] = count_blobs(dist > contrast / 2)
  out.update(found=True, color=_nearest_blend(fg_rgb, bg), color_rgb=tuple(map(float, fg_rgb)))

  # Coverage: 0 on the background, 1 on the object; unclipped so noise averages out.
  v = fg_rgb - bg
  if float(v @ v) < 1.0:
    return out
  v = v / float(v @ v)
  if striped:  # Per row, towards the object colour from that row's background.
    v = fg_rgb - bg_img
    v = v / np.maximum((v * v).sum(axis=-1, keepdims=True), 1.0)  # [H, 1, 3]
  cov = ((x - bg_img) * v).sum(axis=-1)  # [T, H, W]
  # Clipping of noise at 0 and 255 shifts the background off 0: measure the
  # shift on border pixels the object does not touch.
  edge = np.concatenate(
    [cov[:, :b].ravel(), cov[:, -b:].ravel(), cov[:, :, :b].ravel(), cov[:, :, -b:].ravel()]
  )
  edge = edge[np.abs(edge) < 0.25]
  bias = float(edge.mean()) if edge.size else 0.0
  cov -= bias
  cov_smooth = ((smooth - bg_smooth) * v).sum(axis=-1) - bias

  objects = [_locate(cov[i], cov_smooth[i]) for i in range(t)]
  detected = [i for i, o in enumerate(objects) if o is not None]
  out["detected_frames"] = len(detected) / t
  out["centers"] = [None if o is None else o[0] for o in objects]
  if not detected:
    return out
  out["area"] = float(np.median([objects[i][1] for i in detected]))

  # Shape and outline on up to _SHAPE_FRAMES detected frames: measure and fill
  # the object's hole, locate the filled object again, and sum each template's
  # misfit. (Motion keeps the unfilled centroids, which move alike.)
  pick = sorted(
    {detected[j] for j in np.linspace(0, len(detected) - 1, _SHAPE_FRAMES).round().astype(int)}
  )
  errors = dict.fromkeys(SHAPES, 0.0)
  holes = []
  for i in pick:
    filled = cov[i].copy()
    holes.append(_fill_hole(filled, objects[i][2]))
    for shape, err in _shape_errors(filled, _locate(filled, cov_smooth[i]) or objects[i]).items():
      errors[shape] += err / len(pick)
  out["hole_fraction"] = float(np.median(holes))
  out["outlined"] = out["hole_fraction"] > OUTLINE_HOLE
  out["shape_errors"] = errors
  out["shape"] = min(errors, key=errors.get)

  if t > 1 and len(detected) >= 2:
    ti = np.asarray(detected, np.float64)
    c = np.asarray([objects[i][0] for i in detected])  # [n, 2] centroid (x, y)
    # Theil-Sen: the median slope over all frame pairs ignores stray detections.
    i, j = np.triu_indices(len(ti), k=1)
    slope = np.median((c[j] - c[i]) / (ti[j] - ti[i])[:, None], axis=0)  # [2] pixels per frame
    dx, dy = slope * (t - 1) / np.asarray([w, h])
    out["displacement"] = (float(dx), float(dy))
    if max(abs(dx), abs(dy)) < still_threshold:
      out["motion"] = STILL
    elif abs(dx) >= abs(dy):
      out["motion"] = "moving right" if dx > 0 else "moving left"
    else:
      out["motion"] = "moving down" if dy > 0 else "moving up"
  return out


def count_blobs(mask: np.ndarray, min_fraction: float = 0.1) -> int:
  """Median over frames of the 8-connected blobs of a boolean mask `[T, H, W]` whose area
  is at least `min_fraction` of that frame's largest blob."""
  counts = []
  for m in mask:
    labels, n = ndimage.label(m, structure=np.ones((3, 3)))
    if n == 0:
      counts.append(0)
      continue
    areas = np.bincount(labels.ravel())[1:]
    counts.append(int((areas >= min_fraction * areas.max()).sum()))
  return int(np.median(counts))


def grid_energy(frames: np.ndarray, period: int) -> tuple[float, float]:
  """(sum of |neighbour differences| across the lines x, y = k * period, their count's
  share of the same sum over all neighbour pairs) pooled parts of a patch-grid score.

  Returns (boundary, everywhere): summed absolute differences between horizontal and
  vertical pixel neighbours that straddle a multiple of `period`, and over all
  neighbours, each divided by its number of pairs. Their ratio, pooled over many clips
  (sum the parts first), is ~1 where edges fall anywhere (real clips) and grows where
  a sampler leaves steps at patch borders.
  """
  x = np.asarray(frames, np.float32)
  if x.ndim == 3:
    x = x[None]
  dx = np.abs(np.diff(x, axis=2)).sum(-1)  # [T, H, W-1]: between columns j and j+1
  dy = np.abs(np.diff(x, axis=1)).sum(-1)  # [T, H-1, W]
  bx = (np.arange(1, x.shape[2]) % period) == 0  # the pair (j-1, j) straddles j = k*period
  by = (np.arange(1, x.shape[1]) % period) == 0
  boundary = dx[:, :, bx].sum() + dy[:, by, :].sum()
  n_boundary = dx[:, :, bx].size + dy[:, by, :].size
  everywhere = dx.sum() + dy.sum()
  n_all = dx.size + dy.size
  if n_boundary == 0:
    return 0.0, 0.0
  return float(boundary / n_boundary), float(everywhere / n_all)


def _stripes(rows: np.ndarray) -> tuple[float, np.ndarray | None]:
  """(contrast, base colour) of a striped background from its row colours `[H, 3]`.

  The base colour is None unless the rows form at least MIN_BANDS bands of two shades
  at least STRIPE_CONTRAST apart; contrast is their RGB distance (0 with one band).
  """
  light = rows.mean(axis=-1)  # [H]
  lo, hi = np.quantile(light, [0.05, 0.95])
  upper = light > (lo + hi) / 2
  if upper.all() or not upper.any():
    return 0.0, None
  shades = np.median(rows[upper], axis=0), np.median(rows[~upper], axis=0)
  contrast = float(np.linalg.norm(shades[0] - shades[1]))
  bands = 1 + int(np.count_nonzero(upper[1:] != upper[:-1]))
  if contrast < STRIPE_CONTRAST or bands < MIN_BANDS:
    return contrast, None
  palette = np.asarray(list(BACKGROUND_RGB.values()), np.float32)
  near = [float(np.linalg.norm(palette - s, axis=-1).min()) for s in shades]
  return contrast, shades[int(np.argmin(near))]


def _fill_hole(cov: np.ndarray, box: tuple[int, int, int, int]) -> float:
  """Sets the hole of the object in `box` of one frame's coverage `[H, W]` to 1, in place.

  At a coverage level, a hole pixel is below it with pixels above it left and
  right in its row and above and below in its column. Every level set of a
  convex shape, blurred or not, is convex, so a filled one has none; blur makes
  a small ring's hole shallow, so the levels of HOLE_LEVELS with the largest
  hole counts. The hole grown by a pixel (its blurred rim) is filled.
  Returns the hole's share of the filled object's pixels.
  """
  y0, y1, x0, x1 = box
  roi = cov[y0:y1, x0:x1]
  best, fraction = None, 0.0
  for level in HOLE_LEVELS:
    m = roi > level
    hole = ~m
    for axis in (0, 1):
      hole &= np.logical_or.accumulate(m, axis=axis)
      hole &= np.flip(np.logical_or.accumulate(np.flip(m, axis), axis=axis), axis)
    n = int(hole.sum())
    if n and n / (n + int(m.sum())) > fraction:
      best, fraction = hole, n / (n + int(m.sum()))
  if best is None:
    return 0.0
  grown = np.pad(best, 1)
  grown = grown[:-2] | grown[1:-1] | grown[2:]
  grown = grown[:, :-2] | grown[:, 1:-1] | grown[:, 2:]
  roi[grown] = np.maximum(roi[grown], 1.0)
  return fraction


def _box3(x: np.ndarray) -> np.ndarray:
  """3x3 mean filter of `[T, H, W, C]` with edge padding."""
  h, w = x.shape[1:3]
  p = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
  rows = p[:, :-2] + p[:, 1:-1] + p[:, 2:]  # [T, H, W + 2, C]
  return (rows[:, :, :-2] + rows[:, :, 1:-1] + rows[:, :, 2:])[:, :h, :w] / 9.0


def _locate(cov: np.ndarray, cov_smooth: np.ndarray):
  """((cx, cy), area, (y0, y1, x0, x1)) of the object in one frame, or None.

  `cov` and `cov_smooth` are the frame's coverage `[H, W]`, unfiltered and box-filtered.
  """
  hard = cov_smooth > 0.5
  n = int(hard.sum())
  if n < 2:
    return None
  ys, xs = np.nonzero(hard)
  my, mx = np.median(ys), np.median(xs)
  r = 1.5 * math.sqrt(n) + 2  # Holds the whole object (and some blur) around its median.
  h, w = cov.shape
  y0, y1 = max(0, int(my - r)), min(h, int(my + r) + 2)
  x0, x1 = max(0, int(mx - r)), min(w, int(mx + r) + 2)
  roi = cov[y0:y1, x0:x1]
  area = float(roi.sum())
  if area < 1.0:
    return None
  gy = np.arange(y0, y1, dtype=np.float64) + 0.5
  gx = np.arange(x0, x1, dtype=np.float64) + 0.5
  cx = float(roi.sum(axis=0) @ gx) / area
  cy = float(roi.sum(axis=1) @ gy) / area
  return (cx, cy), area, (y0, y1, x0, x1)


# Area of each shape as a fraction of its bounding box, and its centroid's
# offset below the box centre as a fraction of the side.
_FILL = {"circle": math.pi / 4, "square": 1.0, "triangle": 0.5}
_CENTROID_DY = {"circle": 0.0, "square": 0.0, "triangle": 1.0 / 6.0}


def _blur(image: np.ndarray, sigma: float) -> np.ndarray:
  """Gaussian blur of `[H, W]`, zero outside (shifted sums: small BLAS calls are slow under load)."""
  r = max(1, math.ceil(3 * sigma))
  k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2).astype(np.float32)
  k /= k.sum()
  h, w = image.shape
  p = np.pad(image, r)
  rows = sum(k[j] * p[j : j + h] for j in range(2 * r + 1))  # [H, W + 2r]
  return sum(k[j] * rows[:, j : j + w] for j in range(2 * r + 1))


def _shape_errors(cov: np.ndarray, obj) -> dict[str, float]:
  """Squared misfit of each shape's template (best blur) divided by the area."""
  (cx, cy), area, (y0, y1, x0, x1) = obj
  roi = cov[y0:y1, x0:x1]
  xs = np.arange(x0, x1, dtype=np.float32) + 0.5
  ys = np.arange(y0, y1, dtype=np.float32) + 0.5
  errors = {}
  for shape in SHAPES:
    size = math.sqrt(area / _FILL[shape])
    by = cy - _CENTROID_DY[shape] * size
    sharp = render.coverage(shape, [cx], [by], size, xs, ys)[0]
    templates = [sharp] + [_blur(sharp, s) for s in _BLUR]
    errors[shape] = min(float(np.sum((roi - t) ** 2)) for t in templates) / area
  return errors


def read_style(frames: np.ndarray) -> dict[str, float | bool]:
  """Which styles (vocab.STYLES) uint8 frames `[T, H, W, 3]` show, from their pixels alone.

  Returns, for each style, whether it shows and a `{style}_score`:
  outlined_score is the object's hole fraction (0 filled, ~0.2-0.5 a ring;
  outlined above OUTLINE_HOLE), striped_score the RGB distance between the
  background's two shades (0 plain, 111 as drawn; striped from STRIPE_CONTRAST).
  """
  got = read_attributes(frames)
  return {
    "outlined": bool(got["outlined"]),
    "outlined_score": got["hole_fraction"],
    "striped": bool(got["striped"]),
    "striped_score": got["stripe_contrast"],
  }


def score(frames: np.ndarray, caption: str, still_threshold: float = 0.08) -> dict[str, bool]:
  """Whether each attribute a canonical caption names is what the frames show.

  Returns color, shape, background, motion (videos only), style (captions with
  a style phrase only: whether that style shows) and all.
  """
  want = parse_caption(caption)
  got = read_attributes(frames, still_threshold)
  keys = ["color", "shape", "background"] + (["motion"] if want["motion"] else [])
  result = {k: got[k] == want[k] for k in keys}
  if want["style"]:
    result["style"] = bool(got[want["style"]])
  result["all"] = all(result.values())
  return result
