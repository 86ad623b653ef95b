"""The one example schema for images and videos (an image is a 1-frame video).

Every dataset sora_jax reads, built-in, ingested or TFDS, stores records of this
schema. A record is a msgpack map; `docs/data.md` documents each field.

`media` holds either the original compressed file bytes (`media_format` names
the container or image codec: "mp4", "webm", "mov", "mkv", "png", "jpeg",
"webp") or raw uint8 frames `[num_frames, height, width, 3]` in C order
(`media_format` "raw"), optionally zlib-compressed ("raw+zlib"), which the
built-in synthetic clips use because flat colours compress losslessly and decode
far faster than any video codec.

A *cached latent* record (`media_format` "latent", written by
sora_jax.cache_latents) holds instead the autoencoder posterior of the
clip: zlib-compressed float32 `[t, h, w, 2C]`, the mean then the log-variance
on the last axis, with `latent_shape` = (t, h, w, 2C); num_frames, height and
width are the pixel size that was encoded.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import msgpack

SCHEMA_VERSION = 1

VIDEO_FORMATS = ("mp4", "webm", "mov", "mkv")
IMAGE_FORMATS = ("png", "jpeg", "webp")
RAW_FORMATS = ("raw", "raw+zlib")
LATENT_FORMAT = "latent"
MEDIA_FORMATS = VIDEO_FORMATS + IMAGE_FORMATS + RAW_FORMATS + (LATENT_FORMAT,)

# Sanity limits for any stored example; larger or smaller is "absurd" input.
MIN_SIDE = 2
MAX_SIDE = 8192
MAX_FRAMES = 100_000


class SchemaError(ValueError):
  """A record does not satisfy the example schema."""


@dataclasses.dataclass(frozen=True)
class Example:
  """One captioned image or video clip.

  Attributes:
    media: encoded file bytes, or raw uint8 frames (see module docstring).
    media_format: one of MEDIA_FORMATS.
    fps: frames per second (0.0 for still images).
    num_frames: frame count; 1 for images.
    height, width: frame size in pixels.
    captions: one or more captions; training picks one at random.
    source_id: stable id of where the example came from (file path, clip
      range, or generator seed), unique within a dataset.
    clip_start: start time in seconds within the source video (0 for images).
    attributes: small free-form string map (e.g. synthetic ground truth).
    latent_shape: (t, h, w, 2C) of a cached-latent record; () otherwise.
    caption_windows: time-stamped captions, each a sequence of (text, start, end):
      captions restricted to frames [start, end) of the clip (disjoint windows), e.g.
      an object that changes direction at frame k; training uses one when
      `data.caption_windows` is on. () for none.
    descriptive_captions: long captions that describe the clip in detail (what, where it
      starts and ends, how fast, what happens when), written by
      `data_pipelines.recaption` beside the short `captions`; training picks one with
      probability `data.descriptive_captions`. () for none.
  """

  media: bytes
  media_format: str
  fps: float
  num_frames: int
  height: int
  width: int
  captions: tuple[str, ...]
  source_id: str
  clip_start: float = 0.0
  attributes: Mapping[str, str] = dataclasses.field(default_factory=dict)
  latent_shape: tuple[int, ...] = ()
  caption_windows: tuple[tuple[tuple[str, int, int], ...], ...] = ()
  descriptive_captions: tuple[str, ...] = ()

  @property
  def is_image(self) -> bool:
    return self.num_frames == 1

  def validate(self) -> Example:
    """Raises SchemaError naming the field when the example is malformed."""
    if self.media_format not in MEDIA_FORMATS:
      raise SchemaError(f"media_format={self.media_format!r}; allowed: {MEDIA_FORMATS}")
    if not isinstance(self.media, bytes | bytearray) or not self.media:
      raise SchemaError("media is empty")
    for name in ("height", "width"):
      v = getattr(self, name)
      if not (MIN_SIDE <= v <= MAX_SIDE):
        raise SchemaError(f"{name}={v}; allowed {MIN_SIDE}..{MAX_SIDE}")
    if not (1 <= self.num_frames <= MAX_FRAMES):
      raise SchemaError(f"num_frames={self.num_frames}; allowed 1..{MAX_FRAMES}")
    if self.fps < 0 or self.fps != self.fps:
      raise SchemaError(f"fps={self.fps}; must be >= 0")
    if self.num_frames > 1 and self.fps <= 0:
      raise SchemaError(f"fps={self.fps}; a video needs fps > 0")
    if not self.captions or not all(isinstance(c, str) for c in self.captions):
      raise SchemaError("captions must be a non-empty list of strings")
    if not self.source_id:
      raise SchemaError("source_id is empty")
    if (self.media_format == LATENT_FORMAT) != bool(self.latent_shape):
      raise SchemaError("latent_shape is set exactly for media_format 'latent'")
    if self.latent_shape and (
      len(self.latent_shape) != 4 or min(self.latent_shape) <= 0 or self.latent_shape[3] % 2
    ):
      raise SchemaError(f"latent_shape={self.latent_shape}; need (t, h, w, 2C), all positive")
    for i, caption in enumerate(self.caption_windows):
      spans = sorted((int(s), int(e)) for _, s, e in caption)
      if not caption or any(not 0 <= s < e <= self.num_frames for s, e in spans):
        raise SchemaError(
          f"caption_windows[{i}]: each window needs 0 <= start < end <= num_frames "
          f"({self.num_frames}); got {[tuple(w) for w in caption]}"
        )
      if any(b[0] < a[1] for a, b in zip(spans, spans[1:], strict=False)):
        raise SchemaError(f"caption_windows[{i}]: windows overlap: {spans}")
      if not all(isinstance(t, str) and t for t, _, _ in caption):
        raise SchemaError(f"caption_windows[{i}]: every window needs a non-empty text")
    if not all(isinstance(c, str) and c.strip() for c in self.descriptive_captions):
      raise SchemaError("descriptive_captions must be non-empty strings")
    if self.media_format == "raw":
      want = self.num_frames * self.height * self.width * 3
      if len(self.media) != want:
        raise SchemaError(f"raw media has {len(self.media)} bytes; expected {want}")
    return self

  def to_dict(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    d["media"] = bytes(self.media)
    d["captions"] = list(self.captions)
    d["attributes"] = dict(self.attributes)
    d["latent_shape"] = list(self.latent_shape)
    if not self.latent_shape:
      del d["latent_shape"]
    d["caption_windows"] = [[[t, int(s), int(e)] for t, s, e in c] for c in self.caption_windows]
    if not self.caption_windows:  # Records without windows stay byte-identical to before.
      del d["caption_windows"]
    d["descriptive_captions"] = list(self.descriptive_captions)
    if not self.descriptive_captions:  # Records without them stay byte-identical to before.
      del d["descriptive_captions"]
    d["schema_version"] = SCHEMA_VERSION
    return d

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> Example:
    try:
      return cls(
        media=bytes(d["media"]),
        media_format=str(d["media_format"]),
        fps=float(d["fps"]),
        num_frames=int(d["num_frames"]),
        height=int(d["height"]),
        width=int(d["width"]),
        captions=tuple(str(c) for c in d["captions"]),
        source_id=str(d["source_id"]),
        clip_start=float(d.get("clip_start", 0.0)),
        attributes={str(k): str(v) for k, v in dict(d.get("attributes") or {}).items()},
        latent_shape=tuple(int(v) for v in d.get("latent_shape") or ()),
        caption_windows=tuple(
          tuple((str(t), int(s), int(e)) for t, s, e in c) for c in d.get("caption_windows") or ()
        ),
        descriptive_captions=tuple(str(c) for c in d.get("descriptive_captions") or ()),
      )
    except KeyError as e:
      raise SchemaError(f"record is missing field {e.args[0]!r}") from None
    except (TypeError, ValueError) as e:
      raise SchemaError(f"record has a malformed field: {e}") from None


def serialize(example: Example) -> bytes:
  """Encodes an example as one ArrayRecord record."""
  return msgpack.packb(example.validate().to_dict(), use_bin_type=True)


def deserialize(record: bytes) -> Example:
  """Decodes one ArrayRecord record (the inverse of `serialize`)."""
  try:
    d = msgpack.unpackb(record, raw=False)
  except Exception as e:  # msgpack raises several unrelated types.
    raise SchemaError(f"record is not valid msgpack: {e}") from None
  if not isinstance(d, dict):
    raise SchemaError("record is not a map")
  version = d.get("schema_version", SCHEMA_VERSION)
  if version > SCHEMA_VERSION:
    raise SchemaError(f"record has schema_version {version}; this code reads <= {SCHEMA_VERSION}")
  return Example.from_dict(d)


def caption_list(captions: str | Sequence[str]) -> tuple[str, ...]:
  """Normalizes one caption or a list of them into a tuple of strings."""
  if isinstance(captions, str):
    return (captions,)
  return tuple(captions)
