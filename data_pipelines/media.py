"""Decoding and encoding of media bytes: raw frames, images (Pillow), videos (PyAV).

Every function returns or takes frames as uint8 arrays `[T, H, W, 3]` (RGB).
"""

from __future__ import annotations

import io
import os
import zlib

import av
import numpy as np
from PIL import Image

from data_pipelines import schema


class MediaError(ValueError):
  """Media bytes cannot be decoded into frames."""


def encode_raw(frames: np.ndarray, compress: bool = True) -> tuple[bytes, str]:
  """Stores frames `[T, H, W, 3]` uint8 losslessly; returns (bytes, media_format)."""
  frames = np.ascontiguousarray(frames, dtype=np.uint8)
  if frames.ndim != 4 or frames.shape[-1] != 3:
    raise ValueError(f"frames must be [T, H, W, 3]; got {frames.shape}")
  if compress:
    return zlib.compress(frames.tobytes(), 1), "raw+zlib"
  return frames.tobytes(), "raw"


def decode(
  example: schema.Example, start_frame: int = 0, max_frames: int | None = None
) -> np.ndarray:
  """Decodes frames `[T, H, W, 3]` uint8 of an example, optionally a window of them.

  Args:
    example: the record.
    start_frame: first frame to return.
    max_frames: at most this many frames (None: to the end).
  """
  fmt = example.media_format
  stop = None if max_frames is None else start_frame + max_frames
  if fmt in schema.RAW_FORMATS:
    data = example.media
    if fmt == "raw+zlib":
      try:
        data = zlib.decompress(data)
      except zlib.error as e:
        raise MediaError(f"{example.source_id}: corrupt zlib media: {e}") from None
    shape = (example.num_frames, example.height, example.width, 3)
    if len(data) != int(np.prod(shape)):
      raise MediaError(f"{example.source_id}: raw media has {len(data)} bytes, not {shape}")
    return np.frombuffer(data, np.uint8).reshape(shape)[start_frame:stop]
  if fmt in schema.IMAGE_FORMATS:
    return decode_image(example.media)[None]
  if fmt in schema.VIDEO_FORMATS:
    return decode_video(example.media, start_frame=start_frame, max_frames=max_frames)
  if fmt == schema.LATENT_FORMAT:
    raise MediaError(f"{example.source_id}: a cached-latent record holds no pixels")
  raise MediaError(f"{example.source_id}: unknown media_format {fmt!r}")


def encode_latent(mean: np.ndarray, logvar: np.ndarray) -> tuple[bytes, tuple[int, ...]]:
  """Posterior moments `[t, h, w, C]` each -> (media bytes, latent_shape) of a latent record."""
  both = np.concatenate([np.asarray(mean, np.float32), np.asarray(logvar, np.float32)], axis=-1)
  return zlib.compress(np.ascontiguousarray(both).tobytes(), 1), tuple(both.shape)


def decode_latent(example: schema.Example) -> tuple[np.ndarray, np.ndarray]:
  """(mean, logvar), float32 `[t, h, w, C]` each, of a cached-latent record."""
  if example.media_format != schema.LATENT_FORMAT:
    raise MediaError(f"{example.source_id}: media_format {example.media_format!r} is not a latent")
  try:
    data = zlib.decompress(example.media)
  except zlib.error as e:
    raise MediaError(f"{example.source_id}: corrupt latent: {e}") from None
  shape = tuple(example.latent_shape)
  if len(data) != 4 * int(np.prod(shape)):
    raise MediaError(f"{example.source_id}: latent has {len(data)} bytes, not float32 {shape}")
  both = np.frombuffer(data, np.float32).reshape(shape)
  c = shape[-1] // 2
  return both[..., :c], both[..., c:]


def decode_image(data: bytes) -> np.ndarray:
  """Decodes png/jpeg/webp bytes to `[H, W, 3]` uint8."""
  try:
    with Image.open(io.BytesIO(data)) as im:
      return np.asarray(im.convert("RGB"))
  except Exception as e:  # Pillow raises many types for bad files.
    raise MediaError(f"cannot decode image: {e}") from None


def decode_video(
  data: bytes | str, start_frame: int = 0, max_frames: int | None = None
) -> np.ndarray:
  """Decodes frames of a video file (bytes or path) to `[T, H, W, 3]` uint8."""
  src = io.BytesIO(data) if isinstance(data, bytes | bytearray) else data
  frames = []
  try:
    with av.open(src) as container:
      if not container.streams.video:
        raise MediaError("no video stream")
      stream = container.streams.video[0]
      stream.thread_type = "AUTO"
      for i, frame in enumerate(container.decode(stream)):
        if i < start_frame:
          continue
        if max_frames is not None and len(frames) >= max_frames:
          break
        frames.append(frame.to_ndarray(format="rgb24"))
  except MediaError:
    raise
  except Exception as e:  # PyAV raises av.error.* and others.
    raise MediaError(f"cannot decode video: {e}") from None
  if not frames:
    raise MediaError("video has no decodable frames in the requested range")
  return np.stack(frames)


# ------------------------------------------------------------------------------
# Writing outputs people look at.
# ------------------------------------------------------------------------------


def write_png(path: str, image: np.ndarray) -> None:
  """Writes `[H, W, 3]` uint8 as PNG."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  Image.fromarray(np.asarray(image, np.uint8)).save(path)


def encode_mp4(frames: np.ndarray, fps: float, crf: int = 18) -> bytes:
  """Encodes `[T, H, W, 3]` uint8 as H.264 mp4 bytes (odd sides are edge-padded)."""
  frames = np.asarray(frames, np.uint8)
  t, h, w, _ = frames.shape
  ph, pw = h % 2, w % 2  # yuv420p needs even sides.
  if ph or pw:
    frames = np.pad(frames, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="edge")
  buf = io.BytesIO()
  with av.open(buf, "w", format="mp4") as container:
    stream = container.add_stream("libx264", rate=max(1, round(fps)))
    stream.width, stream.height = w + pw, h + ph
    stream.pix_fmt = "yuv420p"
    stream.options = {"crf": str(crf), "preset": "veryfast"}
    for f in frames:
      for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)
  return buf.getvalue()


def write_mp4(path: str, frames: np.ndarray, fps: float) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "wb") as f:
    f.write(encode_mp4(frames, fps))
