"""ArrayRecord shards and the JSON manifest that describes a dataset directory.

Layout of a dataset directory:

  DIR/manifest.json                       counts, size histograms, splits, tokenizer
  DIR/{split}-{i:05d}-of-{n:05d}.array_record

Shards are written to a temporary name and renamed into place only when
complete, so a crashed or killed writer never leaves a partial shard under its
final name, and a rerun can skip every shard that exists.
"""

from __future__ import annotations

import collections
import contextlib
import json
import math
import os
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from array_record.python import array_record_module

from data_pipelines import schema

MANIFEST = "manifest.json"
WRITER_OPTIONS = "group_size:1"  # Random access by index, as grain reads.


def shard_name(split: str, index: int, count: int) -> str:
  return f"{split}-{index:05d}-of-{count:05d}.array_record"


def atomic_write_bytes(path: str, data: bytes) -> None:
  """Writes `data` to `path` so that readers see the old file or the whole new one."""
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "wb") as f:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def atomic_write_json(path: str, obj: Any) -> None:
  atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


class DatasetError(ValueError):
  """A dataset directory is missing or malformed."""


@contextlib.contextmanager
def shard_writer(path: str) -> Iterator[ArrayRecordShard]:
  """Writes one shard atomically: nothing appears at `path` unless the block succeeds."""
  tmp = f"{path}.tmp-{os.getpid()}"
  writer = array_record_module.ArrayRecordWriter(tmp, WRITER_OPTIONS)
  shard = ArrayRecordShard(writer)
  try:
    yield shard
    writer.close()
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(Exception):
      writer.close()
    with contextlib.suppress(FileNotFoundError):
      os.remove(tmp)
    raise


class ArrayRecordShard:
  """The handle `shard_writer` yields: add examples, count them."""

  def __init__(self, writer):
    self._writer = writer
    self.num_records = 0

  def add(self, example: schema.Example) -> None:
    self._writer.write(schema.serialize(example))
    self.num_records += 1


def read_shard(path: str) -> Iterator[schema.Example]:
  """Yields every example of one shard in order (for tools, not training)."""
  try:
    reader = array_record_module.ArrayRecordReader(path)
  except (RuntimeError, OSError) as e:
    raise DatasetError(f"{path} is not a readable ArrayRecord shard: {e}") from None
  try:
    n = reader.num_records()
    for start in range(0, n, 64):
      for record in reader.read(list(range(start, min(n, start + 64)))):
        yield schema.deserialize(record)
  finally:
    reader.close()


def count_records(path: str) -> int:
  """Records in one shard, without reading them."""
  try:
    reader = array_record_module.ArrayRecordReader(path)
  except (RuntimeError, OSError) as e:
    raise DatasetError(f"{path} is not a readable ArrayRecord shard: {e}") from None
  try:
    return reader.num_records()
  finally:
    reader.close()


# ------------------------------------------------------------------------------
# Manifest.
# ------------------------------------------------------------------------------


def read_manifest(data_dir: str, flag: str = "--data_dir") -> dict[str, Any]:
  """The manifest of a dataset directory; errors name `flag` as the culprit."""
  path = os.path.join(data_dir, MANIFEST)
  if not os.path.exists(path):
    raise DatasetError(
      f"{flag}={data_dir}: no {MANIFEST} found; build a dataset first "
      "(python -m data_pipelines.synthetic or data_pipelines.ingest)"
    )
  with open(path) as f:
    try:
      manifest = json.load(f)
    except json.JSONDecodeError as e:
      raise DatasetError(f"{path} is not valid JSON: {e}") from None
  if "splits" not in manifest:
    raise DatasetError(f"{path} has no 'splits' entry")
  return manifest


def write_manifest(data_dir: str, manifest: Mapping[str, Any]) -> None:
  atomic_write_json(os.path.join(data_dir, MANIFEST), dict(manifest))


def update_manifest(data_dir: str, **fields: Any) -> dict[str, Any]:
  manifest = read_manifest(data_dir)
  manifest.update(fields)
  write_manifest(data_dir, manifest)
  return manifest


def split_files(data_dir: str, split: str) -> list[str]:
  """Absolute paths of a split's shards, in order; raises DatasetError if absent."""
  manifest = read_manifest(data_dir)
  splits = manifest["splits"]
  if split not in splits:
    raise DatasetError(f"split={split!r} not in {data_dir}; available: {sorted(splits)}")
  files = [os.path.join(data_dir, s) for s in splits[split]["shards"]]
  missing = [f for f in files if not os.path.exists(f)]
  if missing:
    raise DatasetError(f"{len(missing)} shard(s) of split {split!r} are missing, e.g. {missing[0]}")
  return files


# ------------------------------------------------------------------------------
# Size statistics shared by every writer.
# ------------------------------------------------------------------------------

_NAMED_RATIOS = {"1:1": 1.0, "16:9": 16 / 9, "9:16": 9 / 16, "4:3": 4 / 3, "3:4": 3 / 4}


def aspect_label(height: int, width: int) -> str:
  """The common aspect ratio name within 3%, else the reduced W:H."""
  r = width / height
  for name, value in _NAMED_RATIOS.items():
    if abs(r / value - 1) < 0.03:
      return name
  g = math.gcd(width, height)
  return f"{width // g}:{height // g}"


class SizeStats:
  """Accumulates the size histogram written into the manifest."""

  def __init__(self):
    self.num_examples = 0
    self.num_images = 0
    self.resolution = collections.Counter()
    self.num_frames = collections.Counter()
    self.aspect_ratio = collections.Counter()

  def add(self, height: int, width: int, num_frames: int) -> None:
    self.num_examples += 1
    self.num_images += num_frames == 1
    self.resolution[f"{width}x{height}"] += 1
    self.num_frames[str(num_frames)] += 1
    self.aspect_ratio[aspect_label(height, width)] += 1

  def merge(self, other: SizeStats | Mapping[str, Any]) -> None:
    d = other.to_dict() if isinstance(other, SizeStats) else other
    self.num_examples += d["num_examples"]
    self.num_images += d["num_images"]
    self.resolution.update(d["resolution"])
    self.num_frames.update(d["num_frames"])
    self.aspect_ratio.update(d["aspect_ratio"])

  def to_dict(self) -> dict[str, Any]:
    return {
      "num_examples": self.num_examples,
      "num_images": self.num_images,
      "num_videos": self.num_examples - self.num_images,
      "resolution": dict(sorted(self.resolution.items())),
      "num_frames": dict(sorted(self.num_frames.items(), key=lambda kv: int(kv[0]))),
      "aspect_ratio": dict(sorted(self.aspect_ratio.items())),
    }

  @classmethod
  def of(cls, examples: Iterable[schema.Example]) -> SizeStats:
    s = cls()
    for e in examples:
      s.add(e.height, e.width, e.num_frames)
    return s


def split_entry(shards: list[str], stats: SizeStats) -> dict[str, Any]:
  """The manifest entry of one split."""
  d = stats.to_dict()
  return {
    "shards": [os.path.basename(s) for s in shards],
    "num_examples": d["num_examples"],
    "num_images": d["num_images"],
    "num_videos": d["num_videos"],
    "size_histogram": {k: d[k] for k in ("resolution", "num_frames", "aspect_ratio")},
  }
