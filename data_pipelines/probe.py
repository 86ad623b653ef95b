"""Turns one media file into validated examples, or says why it cannot.

`examples_from_file` reads one image or video, checks what it really is,
decodes every frame it keeps, optionally resamples the frame rate and cuts
clips, and returns `schema.Example`s whose num_frames/height/width come from
what was decoded. Anything wrong with the file raises `Skip(reason, detail)`;
the caller records it and moves on. Memory use is one clip of frames at a time:
a video stored whole is decoded frame by frame without keeping the frames.
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
import stat
import warnings

import av
import numpy as np
from PIL import Image

from data_pipelines import media, schema

VIDEO_EXTENSIONS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "mkv", ".webm": "webm"}
IMAGE_EXTENSIONS = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".webp": "webp"}

# Skip reasons for the file itself (captions.py defines the caption ones).
UNSUPPORTED_EXTENSION = "unsupported-extension"  # Not a media extension we ingest.
UNREADABLE = "unreadable"  # Broken symlink, directory, not a regular file, I/O error.
ZERO_BYTE = "zero-byte"
WRONG_TYPE = "wrong-type"  # Content is not what the extension says (text, image as video...).
CORRUPT = "corrupt"  # Fails to decode completely, including truncated files.
UNSUPPORTED_CONTENT = "unsupported-content"  # Animated image, size change mid-video, no fps.
TOO_SMALL = "too-small"  # A side below --min_side.
TOO_LARGE = "too-large"  # A side above --max_side or more pixels than --max_pixels.
TOO_MANY_FRAMES = "too-many-frames"  # More source frames than --max_frames.
TOO_SHORT = "too-short"  # No clip reaches --min_clip_frames.
INTERNAL_ERROR = "internal-error"  # A bug in ingest; the traceback is logged.

_PIL_FORMATS = {"PNG": "png", "JPEG": "jpeg", "MPO": "jpeg", "WEBP": "webp"}
_MOV_FAMILY = "mov,mp4,m4a,3gp,3g2,mj2"
_MATROSKA_FAMILY = "matroska,webm"
_WEBM_CODECS = ("vp8", "vp9", "av1")
_EPS = 1e-6


class Skip(Exception):  # A control-flow signal: the file is reported, not raised.
  """The file yields no example; `reason` is one of the constants above."""

  def __init__(self, reason: str, detail: str):
    super().__init__(f"{reason}: {detail}")
    self.reason = reason
    self.detail = detail


@dataclasses.dataclass(frozen=True)
class Options:
  """What to keep of each file and how to store it (the ingest flags)."""

  fps: float = 0.0  # Resample videos to this rate; 0 keeps the source rate.
  max_clip_frames: int = 0  # Frames per clip; 0 keeps whole videos.
  split_clips: bool = False  # Cut the whole video into consecutive clips, else keep the first.
  min_clip_frames: int = 1  # Shorter clips (the tail of a split) are dropped.
  clip_format: str = "mp4"  # How re-encoded clips are stored: "mp4" or "raw" (raw+zlib).
  store: str = "original"  # "original" keeps file bytes when frames are unchanged; "raw" never.
  min_side: int = 16
  max_side: int = 4096
  max_pixels: int = 4096 * 4096
  max_frames: int = schema.MAX_FRAMES  # Source frames decoded before a video is refused.
  decoder_threads: int = 0  # 0: ffmpeg's choice.


def kind_of(path: str) -> str | None:
  """'video', 'image' or None, from the extension."""
  ext = os.path.splitext(path)[1].lower()
  if ext in VIDEO_EXTENSIONS:
    return "video"
  if ext in IMAGE_EXTENSIONS:
    return "image"
  return None


def examples_from_file(
  path: str,
  source_id: str,
  captions: tuple[str, ...],
  opts: Options,
  caption_problem: tuple[str, str] | None = None,
  windows: tuple[tuple[str, int, int], ...] = (),
) -> list[schema.Example]:
  """Validated examples of one media file; raises Skip when there are none.

  `caption_problem` (reason, detail) is raised once the file itself is known to
  be a readable media file, so that a missing file is reported as such first.
  `windows` (text, start, end) in the video's frames become each clip's
  `caption_windows`, mapped through the clip's start time and frame rate.
  """
  kind = kind_of(path)
  if kind is None:
    ext = os.path.splitext(path)[1] or "(none)"
    raise Skip(UNSUPPORTED_EXTENSION, f"extension {ext}; allowed: {_allowed()}")
  data = read_file(path)
  if caption_problem:
    raise Skip(*caption_problem)
  sniffed = sniff(data)
  if sniffed == "text":
    raise Skip(WRONG_TYPE, f"named as {kind} but holds text")
  if sniffed is not None and sniffed[0] != kind:
    raise Skip(WRONG_TYPE, f"named as {kind} but holds {sniffed[1]} data")
  attributes = {"source_path": source_id}
  if kind == "image":
    return [_image_example(data, source_id, captions, attributes, opts)]
  ext_format = VIDEO_EXTENSIONS[os.path.splitext(path)[1].lower()]
  examples = _video_examples(data, ext_format, source_id, captions, attributes, opts)
  if not windows:
    return examples
  src_fps = float(examples[0].attributes.get("source_fps", examples[0].fps))
  out = []
  for e in examples:
    clip = clip_windows(windows, src_fps, e.clip_start, e.fps, e.num_frames)
    out.append(dataclasses.replace(e, caption_windows=(clip,) if clip else ()).validate())
  return out


def clip_windows(
  windows: tuple[tuple[str, int, int], ...],
  src_fps: float,
  clip_start: float,
  fps: float,
  num_frames: int,
) -> tuple[tuple[str, int, int], ...]:
  """Source-frame windows as frames of a clip starting `clip_start` s in at `fps`: frame i
  (time clip_start + i / fps) is in a window when the window's times hold it. Windows that
  miss the clip are dropped; () when none remains."""
  out = []
  for text, start, end in windows:
    t0, t1 = start / src_fps, end / src_fps
    first = lambda t: min(max(math.ceil((t - clip_start) * fps - 1e-6), 0), num_frames)
    i0, i1 = first(t0), first(t1)
    if i0 < i1:
      out.append((text, i0, i1))
  return tuple(out)


def _allowed() -> str:
  return " ".join(sorted(VIDEO_EXTENSIONS) + sorted(IMAGE_EXTENSIONS))


def read_file(path: str) -> bytes:
  """The file's bytes; refuses anything but a non-empty regular file."""
  try:
    st = os.stat(path)
  except FileNotFoundError:
    if os.path.islink(path):
      raise Skip(UNREADABLE, f"broken symlink to {os.readlink(path)!r}") from None
    raise Skip(UNREADABLE, "file vanished") from None
  except OSError as e:
    raise Skip(UNREADABLE, f"cannot stat: {e.strerror or e}") from None
  if stat.S_ISDIR(st.st_mode):
    raise Skip(UNREADABLE, "is a directory")
  if not stat.S_ISREG(st.st_mode):  # A fifo or device would block or never end.
    raise Skip(UNREADABLE, "not a regular file")
  if st.st_size == 0:
    raise Skip(ZERO_BYTE, "file is empty")
  try:
    with open(path, "rb") as f:
      data = f.read()
  except OSError as e:
    raise Skip(UNREADABLE, f"cannot read: {e.strerror or e}") from None
  if not data:
    raise Skip(ZERO_BYTE, "file is empty")
  return data


def sniff(data: bytes) -> tuple[str, str] | str | None:
  """(kind, format) from magic bytes, 'text' for text, None when unknown."""
  head = data[:64]
  if head.startswith(b"\x89PNG\r\n\x1a\n"):
    return ("image", "png")
  if head.startswith(b"\xff\xd8\xff"):
    return ("image", "jpeg")
  if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
    return ("image", "webp")
  if head[:6] in (b"GIF87a", b"GIF89a"):
    return ("image", "gif")
  if head[:2] == b"BM":
    return ("image", "bmp")
  if head[4:8] in (b"ftyp", b"moov", b"mdat", b"wide", b"free", b"skip"):
    return ("video", "mp4/mov")
  if head.startswith(b"\x1a\x45\xdf\xa3"):
    return ("video", "matroska/webm")
  if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
    return ("video", "avi")
  sample = data[:1024]
  if b"\x00" not in sample:
    try:
      text = sample.decode("utf-8")
    except UnicodeDecodeError as e:
      text = sample[: e.start].decode("utf-8") if e.start > len(sample) - 4 else ""
    if text and sum(c.isprintable() or c in "\t\r\n" for c in text) >= 0.95 * len(text):
      return "text"
  return None


def _check_size(height: int, width: int, opts: Options, where: str = "") -> None:
  if min(height, width) < opts.min_side:
    raise Skip(TOO_SMALL, f"{width}x{height}{where}; --min_side={opts.min_side}")
  if max(height, width) > opts.max_side:
    raise Skip(TOO_LARGE, f"{width}x{height}{where}; --max_side={opts.max_side}")
  if height * width > opts.max_pixels:
    raise Skip(TOO_LARGE, f"{width}x{height}{where}; --max_pixels={opts.max_pixels}")


# ------------------------------------------------------------------------------
# Images.
# ------------------------------------------------------------------------------


def _image_example(data, source_id, captions, attributes, opts) -> schema.Example:
  # The size comes from the header alone and is checked before any pixel is
  # decoded, so a decompression bomb stops here; Pillow's own, looser bomb
  # check is off for this header read only, so that the report names our flags.
  limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
  try:
    with Image.open(io.BytesIO(data)) as im:
      pil_format, (width, height) = im.format, im.size
      n_frames = getattr(im, "n_frames", 1)
  except Exception as e:  # Pillow raises many types for bad files.
    raise Skip(CORRUPT, f"cannot read image header: {e}") from None
  finally:
    Image.MAX_IMAGE_PIXELS = limit
  media_format = _PIL_FORMATS.get(pil_format)
  if media_format is None:
    raise Skip(WRONG_TYPE, f"image format {pil_format}; allowed: png, jpeg, webp")
  if n_frames > 1 and pil_format != "MPO":  # MPO: a JPEG with extra views; the first is kept.
    raise Skip(UNSUPPORTED_CONTENT, f"animated {media_format} with {n_frames} frames")
  _check_size(height, width, opts)
  try:
    with warnings.catch_warnings():  # Pillow warns above its own limit; ours passed.
      warnings.simplefilter("ignore", Image.DecompressionBombWarning)
      frame = media.decode_image(data)  # Exactly what readers will run.
  except media.MediaError as e:
    raise Skip(CORRUPT, str(e)) from None
  height, width = frame.shape[:2]
  _check_size(height, width, opts)
  if opts.store == "raw":
    data, media_format = media.encode_raw(frame[None])
  return schema.Example(
    media=data,
    media_format=media_format,
    fps=0.0,
    num_frames=1,
    height=height,
    width=width,
    captions=captions,
    source_id=source_id,
    attributes=attributes,
  ).validate()


# ------------------------------------------------------------------------------
# Videos.
# ------------------------------------------------------------------------------


class _Resampler:
  """Frames at a fixed rate: each output tick takes the nearest source frame."""

  def __init__(self, fps: float):
    self.step = 1.0 / fps
    self.k = 0
    self.prev = None  # (time, frame) of the latest source frame.

  def push(self, t: float, frame: np.ndarray) -> list[tuple[float, np.ndarray]]:
    out = []
    if self.prev is not None:
      tp, fp = self.prev
      while self.k * self.step < t - _EPS:  # Ticks before this frame are decided.
        tick = self.k * self.step
        out.append((tick, fp if tick - tp <= t - tick + _EPS else frame))
        self.k += 1
    self.prev = (t, frame)
    return out

  def finish(self, end: float) -> list[tuple[float, np.ndarray]]:
    """Ticks up to `end`, the time the last source frame stops showing."""
    out = []
    if self.prev is not None:
      while self.k * self.step < end - _EPS:
        out.append((self.k * self.step, self.prev[1]))
        self.k += 1
    return out


def _container_format(container, stream, ext_format: str) -> str:
  """The schema media_format of an opened container, or Skip if not one we store."""
  family = container.format.name
  if family == _MOV_FAMILY:
    return ext_format if ext_format in ("mp4", "mov") else "mp4"
  if family == _MATROSKA_FAMILY:
    if ext_format in ("mkv", "webm"):
      return ext_format
    return "webm" if stream.codec_context.name in _WEBM_CODECS else "mkv"
  raise Skip(WRONG_TYPE, f"container is {family!r}; allowed: mp4, mov, mkv, webm")


def _expected_duration(container, stream) -> float | None:
  """The video stream's declared duration in seconds, where the file states one."""
  if stream.duration and stream.time_base:
    return float(stream.duration * stream.time_base)
  tag = stream.metadata.get("DURATION")  # Matroska writes it per track.
  if tag:
    try:
      h, m, s = tag.split(":")
      return int(h) * 3600 + int(m) * 60 + float(s)
    except ValueError:
      pass
  if container.duration and len(container.streams) == 1:
    return container.duration / av.time_base
  return None


def _video_examples(data, ext_format, source_id, captions, attributes, opts):
  try:
    container = av.open(io.BytesIO(data))
  except Exception as e:  # PyAV raises av.error.* and others.
    raise Skip(CORRUPT, f"cannot open video: {e}") from None
  with container:
    if not container.streams.video:
      raise Skip(WRONG_TYPE, "no video stream")
    stream = container.streams.video[0]
    media_format = _container_format(container, stream, ext_format)
    cc = stream.codec_context
    if cc.width and cc.height:  # The header size, checked before decoding anything.
      _check_size(cc.height, cc.width, opts, " (header)")
    stream.thread_type = "AUTO"
    if opts.decoder_threads:
      cc.thread_count = opts.decoder_threads
    src_fps = float(stream.average_rate or stream.guessed_rate or 0)
    cutter = _Cutter(source_id, captions, attributes, opts, src_fps)
    n_src = 0
    shape = None
    times = []
    try:
      for frame in container.decode(stream):
        n_src += 1
        if n_src > opts.max_frames:
          raise Skip(TOO_MANY_FRAMES, f"more than --max_frames={opts.max_frames} frames")
        rgb = frame.to_ndarray(format="rgb24")  # [H, W, 3], as readers decode it.
        if shape is None:
          shape = rgb.shape
          _check_size(shape[0], shape[1], opts)
        elif rgb.shape != shape:
          raise Skip(
            UNSUPPORTED_CONTENT,
            f"frame size changes from {shape[1]}x{shape[0]} to "
            f"{rgb.shape[1]}x{rgb.shape[0]} at frame {n_src - 1}",
          )
        t = frame.time
        if t is None or (times and t <= times[-1]):  # No or broken timestamps.
          t = times[-1] + 1 / (src_fps or 30.0) if times else 0.0
        times.append(t)
        if not cutter.push(t - times[0], rgb):
          break  # The one clip we keep is complete.
      else:
        if n_src and container.format.name == _MATROSKA_FAMILY:
          _check_complete(container, stream, times, src_fps)
    except Skip:
      raise
    except Exception as e:  # PyAV raises av.error.* and others.
      raise Skip(CORRUPT, f"decoding failed after {n_src} frames: {e}") from None
  if n_src == 0:
    raise Skip(CORRUPT, "no decodable frames")
  cutter.finish()
  if cutter.whole:
    if n_src < opts.min_clip_frames:
      raise Skip(TOO_SHORT, f"{n_src} frames; --min_clip_frames={opts.min_clip_frames}")
    fps = src_fps or _fps_from_times(times)
    if n_src > 1 and fps <= 0:
      raise Skip(UNSUPPORTED_CONTENT, "no frame rate in the file")
    return [
      schema.Example(
        media=data,
        media_format=media_format,
        fps=fps,
        num_frames=n_src,
        height=shape[0],
        width=shape[1],
        captions=captions,
        source_id=source_id,
        attributes=attributes,
      ).validate()
    ]
  if not cutter.examples:
    raise Skip(TOO_SHORT, f"no clip of at least --min_clip_frames={opts.min_clip_frames} frames")
  return cutter.examples


def _fps_from_times(times: list[float]) -> float:
  if len(times) < 2 or times[-1] <= times[0]:
    return 0.0
  return (len(times) - 1) / (times[-1] - times[0])


def _check_complete(container, stream, times, src_fps) -> None:
  """Refuses a video that decodes to clearly less than its declared duration.

  Matroska/WebM demuxers stop quietly at a truncation, so compare with the
  duration the header states. MP4/MOV truncation fails loudly instead (no moov
  box, or a packet error), and edit lists make its durations unreliable here.
  """
  expected = _expected_duration(container, stream)
  fps = src_fps or _fps_from_times(times)
  if not expected or fps <= 0:
    return
  decoded = times[-1] - times[0] + 1 / fps
  if expected - decoded > max(1.5 / fps, 0.05 * expected):
    raise Skip(CORRUPT, f"truncated: decoded {decoded:.3f} s of the {expected:.3f} s declared")


class _Cutter:
  """Receives decoded frames in order; builds the clips the options ask for.

  When the frames stay unchanged (no resampling, the video fits one clip, store
  original) it ends with `whole` True and no examples: the caller stores the
  original file bytes. Until it knows, it holds at most one clip of frames.
  """

  def __init__(self, source_id, captions, attributes, opts: Options, src_fps: float):
    self.source_id = source_id
    self.captions = captions
    self.attributes = attributes
    self.opts = opts
    self.src_fps = src_fps
    resample = opts.fps > 0 and abs(opts.fps - src_fps) > 1e-3 * max(src_fps, _EPS)
    self.resampler = _Resampler(opts.fps) if resample else None
    self.limit = opts.max_clip_frames
    # Frames must be kept unless the file can only end up stored whole.
    self.keep = bool(resample or self.limit or opts.store == "raw")
    self.buf: list[tuple[float, np.ndarray]] = []  # (time, [H, W, 3]) of the open clip.
    self.examples: list[schema.Example] = []
    self.cut = False  # The video did not fit one clip.
    self.stopped = False  # The one clip we keep was complete before the end.
    self.last_t = 0.0

  @property
  def whole(self) -> bool:
    return not self.keep

  @property
  def out_fps(self) -> float:
    return self.opts.fps if self.resampler else self.src_fps

  def push(self, t: float, frame: np.ndarray) -> bool:
    """Takes one source frame at time t (s from the first); False: stop decoding."""
    self.last_t = t
    if not self.keep:
      return True
    return self._add(self.resampler.push(t, frame) if self.resampler else [(t, frame)])

  def _add(self, outs) -> bool:
    for t, frame in outs:
      if self.limit and len(self.buf) == self.limit:
        self.cut = True
        self._emit()
        if not self.opts.split_clips:
          self.stopped = True
          return False
      self.buf.append((t, frame))
    return True

  def finish(self) -> None:
    """Called after the last frame: flushes resampler ticks and the last clip."""
    if not self.keep:
      return
    if self.resampler:
      self._add(self.resampler.finish(self.last_t + 1 / (self.src_fps or 30.0)))
    if self.stopped:
      return
    if not self.cut and not self.resampler and self.opts.store == "original":
      self.keep = False  # It all fit one clip unchanged: store the original bytes.
    elif len(self.buf) >= self.opts.min_clip_frames:
      self._emit()
    self.buf = []

  def _emit(self) -> None:
    frames, self.buf = self.buf, []
    self.examples.append(self._encode(frames, len(self.examples)))

  def _encode(self, frames, index: int) -> schema.Example:
    fps = self.out_fps
    video = np.stack([f for _, f in frames])  # [T, H, W, 3]
    if self.opts.store == "raw" or self.opts.clip_format == "raw":
      data, media_format = media.encode_raw(video)
    else:
      data, media_format = media.encode_mp4(video, fps), "mp4"
    start = frames[0][0]
    whole = not self.cut and not self.resampler  # Only re-stored (--store=raw).
    example = schema.Example(
      media=data,
      media_format=media_format,
      fps=fps,
      num_frames=len(frames),
      height=video.shape[1],
      width=video.shape[2],
      captions=self.captions,
      source_id=self.source_id if whole else f"{self.source_id}#clip={index}",
      clip_start=round(start, 6),
      attributes=self.attributes
      if whole
      else {
        **self.attributes,
        "clip_index": str(index),
        "clip_end": f"{start + len(frames) / fps:.6f}",
        "source_fps": f"{self.src_fps:.6g}",
      },
    )
    try:  # Decode what we store, exactly as readers will; describe what came out.
      decoded = media.decode(example)  # [T, H, W, 3]
    except media.MediaError as e:
      raise Skip(CORRUPT, f"re-encoded clip {index} does not decode: {e}") from None
    return dataclasses.replace(
      example,
      num_frames=decoded.shape[0],
      height=decoded.shape[1],
      width=decoded.shape[2],
    ).validate()
