"""Scenes of the synthetic dataset: sampling them and drawing their frames with numpy.

A scene is one object (circle, square or triangle, apex up) of a pure colour on
a plain background, moving in a straight line at constant speed, or standing
still. The object's side is a fraction of the frame's shorter side, and its
start is chosen so it stays wholly inside the frame for the whole clip, so the
one direction the caption states holds on every frame, and any window of frames
is captioned correctly too.

Drawing is vectorized over all frames: each pixel's signed distance to the
shape's edge gives a coverage in [0, 1] (one pixel of anti-aliasing), which
blends the object colour over the background.

Styles (vocab.STYLES, --style; none by default) change the look, never the
scene: "outlined" draws only a ring of the object (OUTLINE_FRACTION of its
side wide), "striped" the background in horizontal bands alternating its colour
with STRIPE_RGB. Both scale with the object or frame, so they survive resizing.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from data_pipelines import schema, shards, vocab

ASPECT_RATIOS = ("1:1", "16:9", "9:16", "4:3", "3:4")  # width:height
STYLES = vocab.STYLES  # Style -> the phrase its captions end in.

OUTLINE_FRACTION = 0.16  # Ring width of "outlined", as a fraction of the object's side,
MIN_OUTLINE = 2.0  # but at least this many pixels, and at most half the shape's inradius.
# Inradius of each shape as a fraction of its side (the triangle's base and height are the side).
INRADIUS = {"circle": 0.5, "square": 0.5, "triangle": 1 / (1 + math.sqrt(5))}
# The second shade of each background in "striped": 111 (RGB distance) from both
# background colours, so the base shade is the one nearest a background colour,
# and over 100 from every object colour.
STRIPE_RGB: dict[str, vocab.Rgb] = {"black": (64, 64, 64), "gray": (192, 192, 192)}
MIN_STRIPE = 4  # Band height in pixels at least; else an eighth of the frame's shorter side.


def outline_width(shape: str, size: float) -> float:
  """Ring width in pixels of an "outlined" `shape` of side `size`.

  OUTLINE_FRACTION of the side, at least MIN_OUTLINE pixels, but at most half
  the inradius (a quarter of a circle's or square's side, 15.5% of a
  triangle's), so the hole is at least half the shape's scale and shows even
  on small objects.
  """
  return min(max(MIN_OUTLINE, OUTLINE_FRACTION * size), INRADIUS[shape] * size / 2)


def stripe_band(height: int, width: int) -> int:
  """Height in pixels of each band of a "striped" background (the period is twice that)."""
  return max(MIN_STRIPE, round(min(height, width) / 8))


@dataclasses.dataclass(frozen=True)
class SceneConfig:
  """How scenes are sampled; each field is the generator flag of the same name."""

  min_side: int = 16
  max_side: int = 128
  min_frames: int = 8  # Of videos; images have 1.
  max_frames: int = 32
  image_fraction: float = 0.25
  aspect_ratios: tuple[str, ...] = ASPECT_RATIOS
  min_object: float = 0.2  # Object side as a fraction of the frame's shorter side.
  max_object: float = 0.4
  min_travel: float = 0.4  # Distance moved over the clip, as a fraction of the free range.
  max_travel: float = 0.9
  style: str = ""  # One of STYLES, or "" for none.

  def validate(self) -> SceneConfig:
    """Raises ValueError naming the flag, the value and what is allowed."""
    if not (schema.MIN_SIDE <= self.min_side <= self.max_side <= schema.MAX_SIDE):
      raise ValueError(
        f"--min_side={self.min_side} --max_side={self.max_side}; need "
        f"{schema.MIN_SIDE} <= min_side <= max_side <= {schema.MAX_SIDE}"
      )
    if not (0.0 <= self.image_fraction <= 1.0):
      raise ValueError(f"--image_fraction={self.image_fraction}; allowed 0..1")
    if self.image_fraction < 1.0 and not (2 <= self.min_frames <= self.max_frames):
      raise ValueError(
        f"--min_frames={self.min_frames} --max_frames={self.max_frames}; "
        "need 2 <= min_frames <= max_frames"
      )
    if self.max_frames > schema.MAX_FRAMES:
      raise ValueError(f"--max_frames={self.max_frames}; at most {schema.MAX_FRAMES}")
    if not self.aspect_ratios:
      raise ValueError("--aspect_ratios is empty; give e.g. 1:1,16:9")
    for ratio in self.aspect_ratios:
      lo, hi = size_range(ratio, self.min_side, self.max_side)
      if lo > hi:
        raise ValueError(
          f"--aspect_ratios={ratio}: no size with both sides in "
          f"--min_side={self.min_side}..--max_side={self.max_side}"
        )
    if not (0.0 < self.min_object <= self.max_object <= 0.9):
      raise ValueError(
        f"--min_object={self.min_object} --max_object={self.max_object}; "
        "need 0 < min_object <= max_object <= 0.9"
      )
    if not (0.0 <= self.min_travel <= self.max_travel <= 1.0):
      raise ValueError(
        f"--min_travel={self.min_travel} --max_travel={self.max_travel}; "
        "need 0 <= min_travel <= max_travel <= 1"
      )
    if self.style and self.style not in STYLES:
      raise ValueError(f"--style={self.style!r}; allowed: {', '.join(STYLES)} or '' (none)")
    return self


def parse_ratio(ratio: str) -> tuple[int, int]:
  """'16:9' -> (16, 9), reduced; raises ValueError on anything else."""
  try:
    w, h = (int(v) for v in ratio.split(":"))
  except ValueError:
    raise ValueError(f"--aspect_ratios={ratio!r}; expected width:height, e.g. 16:9") from None
  if w <= 0 or h <= 0:
    raise ValueError(f"--aspect_ratios={ratio!r}; both terms must be positive")
  g = math.gcd(w, h)
  return w // g, h // g


def size_range(ratio: str, min_side: int, max_side: int) -> tuple[int, int]:
  """The multipliers k for which (k*w, k*h) of the ratio lie within [min_side, max_side]."""
  w, h = parse_ratio(ratio)
  return max(-(-min_side // w), -(-min_side // h)), min(max_side // w, max_side // h)


@dataclasses.dataclass(frozen=True)
class Scene:
  """Everything that determines one clip's pixels and caption."""

  color: str
  shape: str
  motion: str | None  # None for a still image.
  background: str
  height: int
  width: int
  num_frames: int
  size: float  # Side of the object's bounding box, pixels.
  start: tuple[float, float]  # (x, y) centre of the bounding box in frame 0, pixels.
  velocity: tuple[float, float]  # (dx, dy) pixels per frame.
  style: str = ""  # One of STYLES, or "" for none.
  # A change of motion: (frame k, motion from frame k on, its (dx, dy) per frame); None: none.
  event: tuple[int, str, tuple[float, float]] | None = None

  def centers(self) -> np.ndarray:
    """Bounding-box centre (x, y) in every frame, float64 `[T, 2]`."""
    t = np.arange(self.num_frames, dtype=np.float64)[:, None]
    if self.event is None:
      return np.asarray(self.start) + t * np.asarray(self.velocity)
    k, _, v2 = self.event
    before, after = np.minimum(t, k), np.maximum(t - k, 0.0)
    return np.asarray(self.start) + before * np.asarray(self.velocity) + after * np.asarray(v2)

  @property
  def caption_windows(self) -> tuple[tuple[str, int, int], ...]:
    """With an event, the time-stamped caption: the first motion on frames [0, k), the
    second on [k, T); () without."""
    if self.event is None:
      return ()
    k, motion2, _ = self.event
    second = vocab.caption(self.color, self.shape, motion2, self.background, self.style)
    return ((self.caption, 0, k), (second, k, self.num_frames))

  @property
  def caption(self) -> str:
    return vocab.caption(self.color, self.shape, self.motion, self.background, self.style)

  def attributes(self) -> dict[str, str]:
    """Ground truth stored with the example; every value a string.

    speed: pixels per frame as a fraction of the frame side along the motion;
    travel: the whole clip's displacement as the same fraction; motion is ""
    for images. Styled scenes add style and its size: outline_width or
    stripe_band, in pixels.
    """
    side = self.width if self.velocity[0] else self.height
    speed = math.hypot(*self.velocity) / side
    end = self.centers()[-1]
    out = {
      "color": self.color,
      "shape": self.shape,
      "motion": self.motion or "",
      "background": self.background,
      "speed": f"{speed:.4f}",
      "travel": f"{speed * (self.num_frames - 1):.4f}",
      "object_size": f"{self.size:.2f}",
      "object_fraction": f"{self.size / min(self.height, self.width):.3f}",
      "start": f"{self.start[0]:.2f},{self.start[1]:.2f}",
      "end": f"{end[0]:.2f},{end[1]:.2f}",
      "aspect_ratio": shards.aspect_label(self.height, self.width),
    }
    if self.event is not None:  # Examples without events keep exactly their attributes.
      out["event_frame"] = str(self.event[0])
      out["event_motion"] = self.event[1]
      out["end"] = "{:.2f},{:.2f}".format(*self.centers()[-1])
    if self.style:  # Unstyled examples keep exactly the attributes they had before styles.
      out["style"] = self.style
      if self.style == "outlined":
        out["outline_width"] = f"{outline_width(self.shape, self.size):.2f}"
      elif self.style == "striped":
        out["stripe_band"] = str(stripe_band(self.height, self.width))
    return out


def sample_scene(
  rng: np.random.Generator, config: SceneConfig, combos: Sequence[tuple[str, str]]
) -> Scene:
  """Draws one scene; `combos` are the (color, shape) pairs allowed in this split.

  The style draws nothing from `rng`: a styled scene is the unstyled one restyled.
  """
  is_image = rng.random() < config.image_fraction
  num_frames = 1 if is_image else int(rng.integers(config.min_frames, config.max_frames + 1))
  ratio = config.aspect_ratios[rng.integers(len(config.aspect_ratios))]
  rw, rh = parse_ratio(ratio)
  k = int(rng.integers(*size_range(ratio, config.min_side, config.max_side), endpoint=True))
  width, height = rw * k, rh * k
  color, shape = combos[rng.integers(len(combos))]
  background = vocab.BACKGROUNDS[rng.integers(len(vocab.BACKGROUNDS))]
  motion = None if is_image else vocab.MOTIONS[rng.integers(len(vocab.MOTIONS))]
  size = rng.uniform(config.min_object, config.max_object) * min(width, height)

  # Along each axis the centre ranges over [size/2, side - size/2]; the clip's
  # displacement d is a fraction of that free range, and the start leaves room for it.
  direction = vocab.MOTION_DIRECTION[motion or vocab.STILL]
  travel = rng.uniform(config.min_travel, config.max_travel) if any(direction) else 0.0
  start, velocity = [], []
  for side, u in zip((width, height), direction, strict=True):
    free = side - size
    d = travel * free * u
    lo = size / 2 + max(0.0, -d)
    hi = side - size / 2 - max(0.0, d)
    start.append(float(rng.uniform(lo, hi)))
    velocity.append(d / (num_frames - 1) if num_frames > 1 else 0.0)
  return Scene(
    color=color,
    shape=shape,
    motion=motion,
    background=background,
    height=height,
    width=width,
    num_frames=num_frames,
    size=float(size),
    start=(start[0], start[1]),
    velocity=(velocity[0], velocity[1]),
    style=config.style,
  )


def with_event(scene: Scene, rng: np.random.Generator) -> Scene:
  """The scene with its object changing direction once, at a frame in the middle third,
  to one of the other moving directions at the same speed; the start is drawn again so
  that the whole path stays inside the frame. A still object or an image is returned as
  it is."""
  direction = vocab.MOTION_DIRECTION[scene.motion or vocab.STILL]
  if not any(direction) or scene.num_frames < 6:
    return scene
  t = scene.num_frames
  k = int(rng.integers(t // 3, 2 * t // 3 + 1))
  others = [m for m in vocab.MOTIONS if m not in (scene.motion, vocab.STILL)]
  motion2 = others[int(rng.integers(len(others)))]
  speed = math.hypot(*scene.velocity)
  d2 = vocab.MOTION_DIRECTION[motion2]
  v2 = (speed * d2[0], speed * d2[1])
  start = []
  for axis, side in enumerate((scene.width, scene.height)):
    a, b = scene.velocity[axis] * k, v2[axis] * (t - 1 - k)
    low, high = min(0.0, a, a + b), max(0.0, a, a + b)
    lo, hi = scene.size / 2 - low, side - scene.size / 2 - high
    if lo > hi:  # The path does not fit: slow both parts down until it does.
      scale = max(side - scene.size, 0.0) / max(high - low, 1e-9)
      return with_event(
        dataclasses.replace(scene, velocity=(scene.velocity[0] * scale, scene.velocity[1] * scale)),
        rng,
      )
    start.append(float(rng.uniform(lo, hi)))
  return dataclasses.replace(scene, start=(start[0], start[1]), event=(k, motion2, v2))


_SQRT5 = math.sqrt(5.0)


def coverage(
  shape: str,
  cx: np.ndarray,
  cy: np.ndarray,
  size: float,
  xs: np.ndarray,
  ys: np.ndarray,
  softness: float = 1.0,
  outline: float = 0.0,
) -> np.ndarray:
  """Fraction of each pixel the shape covers, float32 `[T, len(ys), len(xs)]`.

  Args:
    shape: one of vocab.SHAPES.
    cx, cy: bounding-box centre per frame, `[T]`.
    size: side of the bounding box in pixels.
    xs, ys: pixel-centre coordinates of the columns and rows to evaluate.
    softness: width in pixels of the linear ramp across the edge (1 = anti-aliased).
    outline: > 0: only a ring this many pixels wide inside the edge (the
      distances are exact inside these convex shapes, so the ring's width is even).
  """
  dx = np.asarray(xs, np.float32)[None, None, :] - np.asarray(cx, np.float32)[:, None, None]
  dy = np.asarray(ys, np.float32)[None, :, None] - np.asarray(cy, np.float32)[:, None, None]
  r = np.float32(size / 2)
  if shape == "circle":
    d = np.sqrt(dx * dx + dy * dy) - r
  elif shape == "square":
    d = np.maximum(np.abs(dx), np.abs(dy)) - r
  elif shape == "triangle":  # Apex (0, -r), base from (-r, r) to (r, r); y grows down.
    from_apex = dy + r
    d = np.maximum(dy - r, (np.abs(2 * dx) - from_apex) / np.float32(_SQRT5))
  else:
    raise ValueError(f"unknown shape {shape!r}; allowed: {vocab.SHAPES}")
  cov = np.clip(0.5 - d / np.float32(softness), 0.0, 1.0)
  if outline > 0:
    cov -= np.clip(0.5 - (d + np.float32(outline)) / np.float32(softness), 0.0, 1.0)
  return cov


def background(scene: Scene) -> np.ndarray:
  """The background of the scene's frames, float32: `[3]`, or `[H, 1, 3]` per row if striped."""
  bg = np.asarray(vocab.BACKGROUND_RGB[scene.background], np.float32)
  if scene.style != "striped":
    return bg
  band = stripe_band(scene.height, scene.width)
  tint = np.asarray(STRIPE_RGB[scene.background], np.float32)
  odd = (np.arange(scene.height) // band) % 2 == 1  # Bands of the base colour first.
  return np.where(odd[:, None, None], tint, bg)


def draw(scene: Scene) -> np.ndarray:
  """The scene's frames, uint8 `[T, H, W, 3]`."""
  t, h, w = scene.num_frames, scene.height, scene.width
  bg = background(scene)  # [3] or [H, 1, 3]
  fg = np.asarray(vocab.COLOR_RGB[scene.color], np.float32)
  frames = np.empty((t, h, w, 3), np.uint8)
  frames[...] = bg.astype(np.uint8)

  # Only the box the object sweeps over needs drawing.
  c = scene.centers()  # [T, 2]
  pad = scene.size / 2 + 1
  x0, y0 = (max(0, math.floor(v)) for v in c.min(axis=0) - pad)
  x1 = min(w, math.ceil(c[:, 0].max() + pad))
  y1 = min(h, math.ceil(c[:, 1].max() + pad))
  xs = np.arange(x0, x1, dtype=np.float32) + 0.5
  ys = np.arange(y0, y1, dtype=np.float32) + 0.5
  outline = outline_width(scene.shape, scene.size) if scene.style == "outlined" else 0.0
  cov = coverage(scene.shape, c[:, 0], c[:, 1], scene.size, xs, ys, outline=outline)  # [T, h', w']
  if bg.ndim == 3:
    bg = bg[y0:y1]  # [h', 1, 3]
  box = bg + cov[..., None] * (fg - bg)
  frames[:, y0:y1, x0:x1] = np.rint(box).astype(np.uint8)
  return frames
