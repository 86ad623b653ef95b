"""Editing plans: images and clips placed on a request's output timeline, as per-token keep values.

A request (`sampler.Request`) may carry `context`: `Given` frames (an image, or a
clip) placed at an output frame, each with a keep value or a keep curve over
output time (sora_jax/diffusion/conditioning.py defines keep). Every editing
mode is a small function here that builds such a request; the sampler runs them
all the same way, packed like training.

  animate(...)   an image held at frame F (default 0): image-to-video
  extend(...)    a clip kept, new frames generated after (forward) or before it
  remix(...)     a clip as a starting point (keep < 1) under a new prompt
  loop=True      the last frame is given the first frame's content

**Frames to tokens.** Pixel frame f lies in latent frame ceil(f / ct) (the
autoencoder is causal: latent frame 0 is pixel frame 0 alone, latent frame j >= 1
covers pixel frames (j-1)ct+1 .. j ct) and token frame latent // pt. A token
frame's keep is the smallest keep of the pixel frames it covers (0 where nothing
is given), so a token is only held where all of its frames are given. An image
is held over the whole token frame it falls in (in pixel space with pt = 4 an
image at frame 0 fills frames 0-3); in latent space it is encoded alone, as a
first-frame latent. Clips are encoded together with the output's other given
frames on the output's own temporal grid.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os

import numpy as np

from data_pipelines import media, patchify, pipeline, sizing


class RequestError(ValueError):
  """A request the model cannot serve; the message names the field."""


@dataclasses.dataclass(frozen=True, eq=False)
class Given:
  """Frames given to the sampler: uint8 `[n, H, W, 3]` (any size) from output frame `start`."""

  frames: np.ndarray
  start: int = 0
  keep: float = 1.0  # Used where `curve` is None.
  curve: tuple[tuple[float, float], ...] | None = None  # (output time in [0, 1], keep) points.
  values: np.ndarray | None = None  # Keep per output frame `[T]` (blends); overrides both.
  image: bool = False
  name: str = "--video"  # The flag it came from, for error messages.


def parse_curve(text: str, name: str = "--keep_curve") -> tuple[tuple[float, float], ...]:
  """`"0:1,0.5:0.2,1:0"` -> ((0, 1), (0.5, 0.2), (1, 0)): time in [0, 1], increasing; value in [0, 1]."""
  points = []
  for part in text.split(","):
    try:
      x, y = (float(v) for v in part.split(":"))
    except ValueError:
      raise RequestError(f"{name}={text!r}: write time:value pairs, e.g. 0:1,0.5:0.2,1:0") from None
    if not (0.0 <= x <= 1.0 and 0.0 <= y <= 1.0):
      raise RequestError(f"{name}={text!r}: times and values must lie in [0, 1]; got {x}:{y}")
    points.append((x, y))
  if any(b[0] <= a[0] for a, b in zip(points, points[1:], strict=False)):
    raise RequestError(f"{name}={text!r}: times must increase")
  return tuple(points)


def curve_values(curve: tuple[tuple[float, float], ...], num_frames: int) -> np.ndarray:
  """The piecewise-linear curve at each output frame (time f / (T - 1)), held flat past its ends."""
  x = np.arange(num_frames) / max(num_frames - 1, 1)
  xs, ys = zip(*curve, strict=True)
  return np.interp(x, xs, ys).astype(np.float32)


def check_keep(value: float, name: str) -> None:
  if not 0.0 <= value <= 1.0 or math.isnan(value):
    raise RequestError(f"{name}={value}: keep must lie in [0, 1] (1 = kept exactly, 0 = free)")


def read_image(path: str, name: str = "--image") -> np.ndarray:
  if not os.path.isfile(path):
    raise RequestError(f"{name}={path}: no such file")
  with open(path, "rb") as f:
    data = f.read()
  try:
    return media.decode_image(data)[None]
  except media.MediaError as e:
    raise RequestError(f"{name}={path}: {e}") from None


def read_video(path: str, name: str = "--video") -> np.ndarray:
  if not os.path.isfile(path):
    raise RequestError(f"{name}={path}: no such file")
  if os.path.splitext(path)[1].lower() in (".png", ".jpg", ".jpeg", ".webp", ".bmp"):
    return read_image(path, name)
  try:
    return media.decode_video(path)
  except media.MediaError as e:
    raise RequestError(f"{name}={path}: {e}") from None


def split_frame(spec: str, name: str) -> tuple[str, int | None]:
  """`PATH@FRAME` -> (PATH, FRAME); a plain PATH -> (PATH, None)."""
  path, sep, frame = spec.rpartition("@")
  if not sep:
    return spec, None
  try:
    return path, int(frame)
  except ValueError:
    raise RequestError(f"{name}={spec}: the part after @ must be a frame number") from None


# ------------------------------------------------------------------------------
# Frames <-> tokens.
# ------------------------------------------------------------------------------


def token_frame_span(geom: sizing.Geometry, frame: int, num_frames: int) -> range:
  """The pixel frames (of an output of `num_frames`) that token frame `frame` covers."""
  frames = [f for f in range(num_frames) if geom.token_frame(f) == frame]
  return range(frames[0], frames[-1] + 1) if frames else range(0)


def starts_token_frame(geom: sizing.Geometry, f: int) -> bool:
  """Whether pixel frame f is the first of its token frame."""
  return f == 0 or geom.token_frame(f - 1) != geom.token_frame(f)


def _nearest_fill(video: np.ndarray, covered: np.ndarray) -> np.ndarray:
  """Frames not covered take the nearest covered frame (so an encoder sees no black cuts)."""
  idx = np.flatnonzero(covered)
  if len(idx) == 0 or covered.all():
    return video
  nearest = idx[np.abs(np.arange(len(video))[:, None] - idx[None, :]).argmin(axis=1)]
  return video[nearest]


def given_frames(req, geom: sizing.Geometry):
  """What `req.context` places on the output: (frames uint8 `[T, H, W, 3]`, covered `[T]`
  bool, keep per pixel frame `[T]`, images as (token frame, frame `[1, H, W, 3]`))."""
  t, h, w = req.num_frames, req.height, req.width
  pixel_keep = np.zeros((t,), np.float32)
  canvas = np.zeros((t, h, w, 3), np.uint8)
  covered = np.zeros((t,), bool)
  images = []
  for g in req.context:
    frames = pipeline.resize_frames(np.asarray(g.frames, np.uint8), h, w)
    if g.image:
      if not 0 <= g.start < t:
        raise RequestError(f"{g.name}: frame {g.start} is outside the output's frames 0..{t - 1}")
      span = token_frame_span(geom, geom.token_frame(g.start), t)
      frames = np.repeat(frames[:1], len(span), axis=0)
      images.append((geom.token_frame(g.start), frames[:1]))
    else:
      if g.start < 0 or g.start + len(frames) > t:
        raise RequestError(
          f"{g.name}: its {len(frames)} frames placed at frame {g.start} leave the output's "
          f"frames 0..{t - 1}"
        )
      span = range(g.start, g.start + len(frames))
    if g.values is not None:
      keep = np.asarray(g.values, np.float32)[span.start : span.stop]
    elif g.curve:
      keep = curve_values(g.curve, t)[span.start : span.stop]
    else:
      keep = np.full((len(span),), g.keep, np.float32)
    # Where givens overlap, each frame shows the one with the larger keep (the first on ties).
    sl = slice(span.start, span.stop)
    wins = ~covered[sl] | (keep > pixel_keep[sl])
    canvas[sl][wins] = frames[wins]
    covered[sl] = True
    pixel_keep[sl] = np.maximum(pixel_keep[sl], keep)
  return canvas, covered, pixel_keep, images


def frame_keep(req, geom: sizing.Geometry) -> np.ndarray:
  """The keep value each output frame gets `[T]`: its token frame's, the smallest keep of
  the pixel frames that token frame covers."""
  _, _, pixel_keep, _ = given_frames(req, geom)
  t = req.num_frames
  frames = [geom.token_frame(f) for f in range(t)]
  token_keep = {j: min(pixel_keep[f] for f in range(t) if frames[f] == j) for j in set(frames)}
  return np.asarray([token_keep[j] for j in frames], np.float32)


def token_context(req, geom: sizing.Geometry, stage) -> tuple[np.ndarray, np.ndarray]:
  """Per-token keep `[n]` and given values `[n, patch_dim]` of request `req`, in token order."""
  t, h, w = req.num_frames, req.height, req.width
  grid = geom.grid(t, h, w)
  n = int(np.prod(grid))
  if not req.context:
    return np.zeros((n,), np.float32), np.zeros((n, geom.patch_dim), np.float32)
  canvas, covered, _, images = given_frames(req, geom)
  video = pipeline.to_unit_range(_nearest_fill(canvas, covered))
  z = np.array(stage.encode(video), np.float32)
  if geom.compression[0] > 1:  # Latent space: images alone, as first-frame latents.
    for tf, frame in images:
      zi = stage.encode(pipeline.to_unit_range(frame))
      lo, hi = tf * geom.patch[0], min((tf + 1) * geom.patch[0], z.shape[0])
      z[lo:hi] = zi[:1]
  z = z[: geom.latent_frames(t)]
  keep = frame_keep(req, geom)
  token_keep = np.zeros((grid[0],), np.float32)
  for f in range(t):
    token_keep[geom.token_frame(f)] = keep[f]
  tokens = patchify.patchify(z, geom.patch)
  coords = patchify.coordinates(grid)
  return token_keep[coords[:, 0]], tokens.astype(np.float32)


# ------------------------------------------------------------------------------
# Modes: each builds the context of one request.
# ------------------------------------------------------------------------------


def animate(image: np.ndarray, frame: int, loop: bool, num_frames: int) -> tuple[Given, ...]:
  """An image held at `frame` (and at the last frame too with `loop`)."""
  out = [Given(image, start=frame, image=True, name="--image")]
  if loop:
    out.append(Given(image, start=num_frames - 1, image=True, name="--image (--loop)"))
  return tuple(out)


def extend(
  clip: np.ndarray,
  direction: str,
  new_frames: int,
  geom: sizing.Geometry,
  loop: bool = False,
) -> tuple[tuple[Given, ...], int, str | None]:
  """A clip kept at the start (`forward`) or the end (`backward`), `new_frames` generated.

  A token is only held when all of its frames are given, so the clip is cut to whole
  token frames (forward: its first frames dropped) or more frames are generated
  (backward) so that the seam falls on a token-frame boundary; in latent space the
  output must also be 1 + a multiple of the temporal compression, so forward generates
  up to ct - 1 more frames and backward drops up to ct - 1 of the clip's last frames. With `loop` the far
  end is given the clip's first (forward) or last (backward) frame. Returns (context,
  output frames, a note for the user or None).
  """
  if direction not in ("forward", "backward"):
    raise RequestError(f"--extend={direction!r}; allowed: forward, backward")
  if new_frames < 1:
    raise RequestError(f"--num_frames={new_frames}: the new frames to add must be at least 1")
  note = None
  if direction == "forward":
    kept = len(clip)
    while kept > 0 and not starts_token_frame(geom, kept):
      kept -= 1
    if kept == 0:
      raise RequestError("--video: the clip is shorter than one token frame; give more frames")
    if kept < len(clip):
      note = f"the clip's first {len(clip) - kept} frame(s) were dropped to fill whole patches"
      clip = clip[len(clip) - kept :]
    total = kept + new_frames
    while (total - 1) % geom.compression[0]:  # A frame count the autoencoder can make.
      total += 1
    if total != kept + new_frames:
      more = f"{total - kept - new_frames} more frame(s) generated to fill the last latent frame"
      note = more if note is None else f"{note}; {more}"
    context = [Given(clip, start=0, name="--video")]
    if loop:
      context.append(Given(clip[:1], start=total - 1, image=True, name="--video (--loop)"))
    return tuple(context), total, note
  start = new_frames
  while not starts_token_frame(geom, start):
    start += 1
  if start != new_frames:
    note = f"{start - new_frames} more frame(s) generated so that the clip starts a patch"
  total = start + len(clip)
  dropped = 0
  while (total - 1) % geom.compression[0] and len(clip) > 1:  # The autoencoder's frame grid.
    clip, total, dropped = clip[:-1], total - 1, dropped + 1
  if dropped:
    cut = f"the clip's last {dropped} frame(s) were dropped to end on a latent frame"
    note = cut if note is None else f"{note}; {cut}"
  context = [Given(clip, start=start, name="--video")]
  if loop:
    context.append(Given(clip[-1:], start=0, image=True, name="--video (--loop)"))
  return tuple(context), total, note


def blend(
  a: np.ndarray,
  b: np.ndarray,
  num_frames: int,
  curve: tuple[tuple[float, float], ...],
  strength: float = 1.0,
) -> tuple[Given, ...]:
  """Two clips on one timeline: `curve` (output time -> w in [0, 1]) says how much each frame
  follows B rather than A. A frame is given A's frame at keep strength * (1 - 2w) where
  w < 1/2 and B's at strength * (2w - 1) where w > 1/2, so the frames near w = 1/2 are
  free: the model connects the two under the prompt."""
  check_keep(strength, "--blend_strength")
  for clip, name in ((a, "--blend A"), (b, "--blend B")):
    if len(clip) < num_frames:
      raise RequestError(
        f"{name}: the clip has {len(clip)} frames; --num_frames={num_frames} asks for more"
      )
  w = curve_values(curve, num_frames)
  keep_a = strength * np.clip(1.0 - 2.0 * w, 0.0, 1.0)
  keep_b = strength * np.clip(2.0 * w - 1.0, 0.0, 1.0)
  return (
    Given(a[:num_frames], start=0, values=keep_a, name="--blend A"),
    Given(b[:num_frames], start=0, values=keep_b, name="--blend B"),
  )


def resample(clip: np.ndarray, num_frames: int) -> np.ndarray:
  """The clip stretched or squeezed in time to `num_frames` (nearest frame)."""
  idx = np.round(np.linspace(0, len(clip) - 1, num_frames)).astype(int)
  return clip[idx]


def recut(
  clip: np.ndarray, num_frames: int, keep: float, curve: tuple[tuple[float, float], ...] | None
) -> tuple[Given, ...]:
  """Re-cut: the clip retimed to `num_frames` (and, by the request, resized) as a starting
  point at `keep` (or a curve): a new length, or an upscale at a low keep."""
  return remix(resample(clip, num_frames), num_frames, keep, curve)


def remix(
  clip: np.ndarray, num_frames: int, keep: float, curve: tuple[tuple[float, float], ...] | None
) -> tuple[Given, ...]:
  """A clip's first `num_frames` frames as a starting point (keep, or a keep curve)."""
  check_keep(keep, "--keep")
  if len(clip) < num_frames:
    raise RequestError(
      f"--video: the clip has {len(clip)} frames; --num_frames={num_frames} asks for more"
    )
  return (Given(clip[:num_frames], start=0, keep=keep, curve=curve, name="--video"),)


# ------------------------------------------------------------------------------
# Caption windows and storyboards.
# ------------------------------------------------------------------------------


def check_windows(prompts, num_frames: int, name: str = "prompts") -> None:
  """Windows `(text, start, end)` in output frames: inside the output, start < end, disjoint."""
  for i, (text, start, end) in enumerate(prompts):
    if not text.strip():
      raise RequestError(f"{name}[{i}]: empty text")
    if not 0 <= start < end <= num_frames:
      raise RequestError(
        f"{name}[{i}]: window [{start}, {end}) must satisfy 0 <= start < end <= num_frames "
        f"({num_frames})"
      )
  spans = sorted((s, e, i) for i, (_, s, e) in enumerate(prompts))
  for (s0, e0, i0), (s1, _, i1) in zip(spans, spans[1:], strict=False):
    if s1 < e0:
      raise RequestError(
        f"{name}[{i0}] [{s0}, {e0}) and {name}[{i1}] (from {s1}) overlap; give each frame "
        "at most one prompt"
      )


def caption_windows(req, geom: sizing.Geometry) -> list[tuple[str, int, int]] | None:
  """The captions of `req` with their token-frame windows `[start, end)`, or None when one
  caption sees every frame (a plain request). The rule is training's
  (`sizing.Geometry.token_windows`): token frame j is in a window when its first pixel
  frame is; frames in no window see the first prompt."""
  if len(req.prompts) <= 1:
    return None
  runs = geom.token_windows([(s, e) for _, s, e in req.prompts], req.num_frames)
  if len({i for i, _, _ in runs}) == 1:
    return None
  return [(req.prompts[i][0], j0, j1) for i, j0, j1 in runs]


@dataclasses.dataclass(frozen=True)
class Storyboard:
  width: int
  height: int
  num_frames: int
  prompts: tuple[tuple[str, int, int], ...]
  context: tuple[Given, ...]
  seed: int = 0
  fps: float | None = None
  loop: bool = False


def _field(d: dict, key: str, kind, where: str, default=None):
  if key not in d:
    if default is None:
      raise RequestError(f"{where}: missing {key!r}")
    return default
  try:
    value = kind(d[key])
  except (TypeError, ValueError):
    raise RequestError(f"{where}.{key}={d[key]!r}: expected {kind.__name__}") from None
  return value


def read_storyboard(path: str, geom: sizing.Geometry) -> Storyboard:
  """A storyboard file (see sora_jax/sample.py); every error is one line naming the field."""
  name = f"--storyboard={path}"
  if not os.path.isfile(path):
    raise RequestError(f"{name}: no such file")
  try:
    with open(path, encoding="utf-8") as f:
      d = json.load(f)
  except (ValueError, UnicodeDecodeError) as e:
    raise RequestError(f"{name}: not JSON ({e})") from None
  if not isinstance(d, dict):
    raise RequestError(f"{name}: expected a JSON object")
  unknown = sorted(
    set(d) - {"width", "height", "num_frames", "fps", "seed", "prompts", "media", "loop"}
  )
  if unknown:
    raise RequestError(f"{name}: unknown field {unknown[0]!r}")
  t = _field(d, "num_frames", int, "storyboard")
  h, w = _field(d, "height", int, "storyboard"), _field(d, "width", int, "storyboard")
  error = geom.size_error(t, h, w)
  if error:
    raise RequestError(f"{name}: {error}")
  prompts = []
  raw = d.get("prompts")
  if not isinstance(raw, list) or not raw:
    raise RequestError(f"{name}: 'prompts' must be a non-empty list of {{text, start, end}}")
  for i, p in enumerate(raw):
    where = f"prompts[{i}]"
    if not isinstance(p, dict):
      raise RequestError(f"{name}: {where} must be an object {{text, start, end}}")
    text = _field(p, "text", str, where)
    prompts.append((text, _field(p, "start", int, where, 0), _field(p, "end", int, where, t)))
  check_windows(prompts, t)
  context = []
  base = os.path.dirname(os.path.abspath(path))
  for i, m in enumerate(d.get("media", [])):
    where = f"media[{i}]"
    if not isinstance(m, dict):
      raise RequestError(f"{name}: {where} must be an object {{path, start, keep}}")
    mpath = _field(m, "path", str, where)
    mpath = mpath if os.path.isabs(mpath) else os.path.join(base, mpath)
    start = _field(m, "start", int, where, 0)
    keep = _field(m, "keep", float, where, 1.0)
    check_keep(keep, f"{where}.keep")
    if not 0 <= start < t:
      raise RequestError(f"{where}.start={start}: outside the output's frames 0..{t - 1}")
    frames = read_video(mpath, f"{where}.path")
    image = len(frames) == 1
    if not image:
      frames = frames[:: _field(m, "stride", int, where, 1)][: t - start]
    context.append(Given(frames, start=start, keep=keep, image=image, name=where))
  loop = bool(d.get("loop", False))
  if loop and context:
    first = [g for g in context if g.start == 0]
    if not first:
      raise RequestError(f"{name}: 'loop' with media needs one at frame 0 (or no media)")
    context.append(Given(first[0].frames[:1], start=t - 1, image=True, name="loop"))
  return Storyboard(
    width=w,
    height=h,
    num_frames=t,
    prompts=tuple(prompts),
    context=tuple(context),
    seed=_field(d, "seed", int, "storyboard", 0),
    fps=float(d["fps"]) if "fps" in d else None,
    loop=loop and not context,
  )
