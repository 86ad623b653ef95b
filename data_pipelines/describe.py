"""What a clip of the built-in domain shows, read from its pixels, and said in sentences:
the readback captioner of `data_pipelines.recaption`, and the parser that reads those
sentences back (prompt expansion's stated speed and start position are scored with it).

  read_facts(frames, fps) -> Facts    object, colour, shape, size, style, background,
                                      start and end position, direction, speed, a turn
  describe(facts, seed, fps) -> str   a few natural sentences, wording drawn from seed
  parse_description(text) -> dict     the facts a description states
"""

from __future__ import annotations

import dataclasses
import math
import re
import zlib

import numpy as np

from data_pipelines import readback, vocab

# Object side as a fraction of the shorter frame side (the built-in data draws 0.2-0.4).
SIZE_WORDS = ((0.27, "small"), (0.33, "medium-sized"), (math.inf, "large"))
# Speed in frame sides per second (the built-in data's terciles at 8 fps).
SPEED_WORDS = ((0.17, "slowly"), (0.27, "at a steady pace"), (math.inf, "quickly"))
DIRECTION_WORDS = {
  "moving left": "to the left",
  "moving right": "to the right",
  "moving up": "upward",
  "moving down": "downward",
}
# Thirds of the frame: (row, column) -> where.
POSITIONS = {
  (0, 0): "the top left corner",
  (0, 1): "the top edge",
  (0, 2): "the top right corner",
  (1, 0): "the left side",
  (1, 1): "the centre",
  (1, 2): "the right side",
  (2, 0): "the bottom left corner",
  (2, 1): "the bottom edge",
  (2, 2): "the bottom right corner",
}
STILL_TRAVEL = 0.08  # Displacement over a segment, in frame sides, below which it is still.
TURN_GAIN = 4.0  # A turn must fit the track this many times better than one straight line.


@dataclasses.dataclass(frozen=True)
class Facts:
  """What one clip shows. Positions are words of POSITIONS; None where unknown."""

  color: str | None
  shape: str | None
  background: str
  size: str | None  # A word of SIZE_WORDS.
  outlined: bool
  striped: bool
  kind: str  # "image" or "video".
  seconds: float  # Duration (0 for images).
  start: str | None
  end: str | None
  motion: str | None  # A vocab.MOTIONS word over the first segment; None for images.
  speed: str | None  # A word of SPEED_WORDS; None when still or an image.
  turn_frame: int | None = None  # The frame the object turns at, if it does.
  turn_motion: str | None = None
  turn_speed: str | None = None


def speed_word(per_second: float) -> str:
  """The SPEED_WORDS word for a speed in frame sides per second."""
  return _word(per_second, SPEED_WORDS)


def _word(value: float, table) -> str:
  return next(word for limit, word in table if value < limit)


def position(x: float, y: float, width: int, height: int) -> str:
  """Where (x, y) lies in a frame, as one of POSITIONS."""
  col = min(2, max(0, int(3 * x / width)))
  row = min(2, max(0, int(3 * y / height)))
  return POSITIONS[(row, col)]


def _segment(track: np.ndarray, times: np.ndarray, width: int, height: int, fps: float):
  """(motion, speed word, residual sum of squares) of the least-squares line through a
  segment of the centre track."""
  a = np.stack([np.ones_like(times), times], axis=1)
  coef, *_ = np.linalg.lstsq(a, track, rcond=None)  # [2, 2]: intercept, slope per axis
  sse = float(np.sum((a @ coef - track) ** 2))
  span = times[-1] - times[0]
  dx, dy = coef[1] * span / np.asarray([width, height])
  if max(abs(dx), abs(dy)) < STILL_TRAVEL:
    return vocab.STILL, None, sse
  if abs(dx) >= abs(dy):
    motion = "moving right" if dx > 0 else "moving left"
  else:
    motion = "moving down" if dy > 0 else "moving up"
  per_second = math.hypot(coef[1][0] / width, coef[1][1] / height) * fps
  return motion, speed_word(per_second), sse


def read_facts(frames: np.ndarray, fps: float) -> Facts:
  """Reads a clip's Facts from uint8 frames `[T, H, W, 3]` (an image: T = 1)."""
  got = readback.read_attributes(frames)
  t, h, w = frames.shape[:3]
  kind = "image" if t == 1 else "video"
  size = None
  if got["shape"] is not None and got["area"] > 0:
    fill = {"circle": math.pi / 4, "square": 1.0, "triangle": 0.5}[got["shape"]]
    size = _word(math.sqrt(got["area"] / fill) / min(h, w), SIZE_WORDS)
  found = [(i, c) for i, c in enumerate(got["centers"]) if c is not None]
  start = end = motion = speed = turn_frame = turn_motion = turn_speed = None
  if found:
    start = position(*found[0][1], w, h)
    end = position(*found[-1][1], w, h)
  if kind == "video" and len(found) >= 2:
    times = np.asarray([i for i, _ in found], np.float64)
    track = np.asarray([c for _, c in found], np.float64)
    motion, speed, sse = _segment(track, times, w, h, fps)
    # A turn: the split of the track into two straight segments that fits far better
    # than one line, with two different motions.
    best = None
    for k in range(2, len(found) - 1):
      m1, s1, e1 = _segment(track[:k], times[:k], w, h, fps)
      m2, s2, e2 = _segment(track[k - 1 :], times[k - 1 :], w, h, fps)
      if m1 != m2 and (best is None or e1 + e2 < best[0]):
        best = (e1 + e2, int(times[k - 1]), m1, s1, m2, s2)
    scale = (w * h) * 1e-4 * len(found)  # A floor: sub-pixel jitter is not a turn.
    if best is not None and sse > TURN_GAIN * (best[0] + scale):
      _, turn_frame, motion, speed, turn_motion, turn_speed = best
    if motion == vocab.STILL:
      speed = None
  return Facts(
    color=got["color"],
    shape=got["shape"],
    background=got["background"],
    size=size,
    outlined=bool(got["outlined"]),
    striped=bool(got["striped"]),
    kind=kind,
    seconds=t / fps if kind == "video" and fps > 0 else 0.0,
    start=start,
    end=end,
    motion=motion,
    speed=speed,
    turn_frame=turn_frame,
    turn_motion=turn_motion,
    turn_speed=turn_speed,
  )


# ------------------------------------------------------------------------------
# Facts -> sentences.
# ------------------------------------------------------------------------------

_OPENINGS = (
  "A {size}{color} {shape} sits near {start} of a {background}.",
  "On a {background}, a {size}{color} {shape} starts near {start}.",
  "The clip shows a {size}{color} {shape} on a {background}, beginning near {start}.",
  "There is a {size}{color} {shape} near {start} of a {background}.",
)
_IMAGE_OPENINGS = (
  "A {size}{color} {shape} sits near {start} of a {background}.",
  "A still image of a {size}{color} {shape} near {start} of a {background}.",
  "On a {background}, a {size}{color} {shape} rests near {start}.",
)
_MOVES = (
  "It moves {speed} {direction} and ends near {end}.",
  "It travels {speed} {direction}, finishing near {end}.",
  "It glides {speed} {direction} until it reaches {end}.",
)
_TURNS = (
  "After about {when:.1f} seconds it turns and moves {speed} {direction}, ending near {end}.",
  "Around frame {frame} it changes course and heads {direction} {speed}, ending near {end}.",
)
_STILLS = (
  "It stays still for the whole clip.",
  "It does not move at all.",
  "It remains in place, standing still.",
)
_LENGTHS = ("The clip lasts {seconds:.1f} seconds.", "The video is {seconds:.1f} seconds long.")
_NO_OBJECT = "A plain {background} with nothing on it."


def _background(f: Facts) -> str:
  if f.striped:
    return f"{f.background} background with horizontal stripes"
  return f"plain {f.background} background"


def describe(f: Facts, seed: str, fps: float = 0.0) -> str:
  """A few sentences stating the facts; the wording is drawn from `seed` (e.g. the
  record's source id), so the same record always reads the same."""
  rng = np.random.default_rng(zlib.crc32(seed.encode()))
  pick = lambda options: options[int(rng.integers(len(options)))]
  if f.color is None or f.shape is None:
    return _NO_OBJECT.format(background=_background(f)).capitalize()
  shape = f"hollow {f.shape}" if f.outlined else f.shape
  fields = dict(
    size=f"{f.size} " if f.size else "",
    color=f.color,
    shape=shape,
    background=_background(f),
    start=f.start,
  )
  if f.kind == "image":
    return pick(_IMAGE_OPENINGS).format(**fields)
  out = [pick(_OPENINGS).format(**fields)]
  if f.motion == vocab.STILL or f.motion is None:
    out.append(pick(_STILLS))
  elif f.turn_frame is None:
    direction = DIRECTION_WORDS[f.motion]
    out.append(pick(_MOVES).format(speed=f.speed, direction=direction, end=f.end))
  else:
    first = DIRECTION_WORDS.get(f.motion)
    out.append(
      "It stays still at first." if first is None else f"It first moves {f.speed} {first}."
    )
    second = DIRECTION_WORDS.get(f.turn_motion)
    if second is None:
      out.append(f"Around frame {f.turn_frame} it stops and stands still near {f.end}.")
    else:
      when = f.turn_frame / fps if fps > 0 else 0.0
      text = pick(_TURNS) if fps > 0 else _TURNS[1]
      out.append(
        text.format(when=when, frame=f.turn_frame, speed=f.turn_speed, direction=second, end=f.end)
      )
  if f.seconds > 0:
    out.append(pick(_LENGTHS).format(seconds=f.seconds))
  return " ".join(out)


def parse_description(text: str) -> dict[str, str | None]:
  """The facts a description written by `describe` states: color, shape, motion (the
  first), speed (the first), start and end (positions), background; None where absent."""
  low = text.lower()
  first = lambda words: min(
    ((low.find(w), w) for w in words if low.find(w) >= 0), default=(0, None)
  )[1]
  positions = sorted((m.start(), p) for p in POSITIONS.values() for m in re.finditer(p, low))
  motion = first(tuple(DIRECTION_WORDS.values()) + ("still", "does not move", "in place"))
  inverse = {v: k for k, v in DIRECTION_WORDS.items()}
  return {
    "color": first(vocab.COLORS),
    "shape": first(vocab.SHAPES),
    "background": first(vocab.BACKGROUNDS),
    "motion": inverse.get(motion, vocab.STILL if motion else None),
    "speed": first(tuple(w for _, w in SPEED_WORDS)),
    "start": positions[0][1] if positions else None,
    "end": positions[-1][1] if positions else None,
  }
