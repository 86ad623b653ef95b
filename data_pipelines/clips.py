"""Fixed-shape clip batches for convolutional models (the video autoencoder).

A convolutional network compiles once per input shape, so instead of packing,
each global batch is one *bucket* (frames, height, width), and the buckets mix
resolutions and durations across steps:

  batch i:  bucket = buckets[choice(seed, i)]            (weighted by `bucket_weights`)
            rows   = records perm_e[(i * B + r) mod N]   (a new permutation per epoch e)
            each record -> a random window of `frames` frames (a still image, or
            a clip shorter than the window, repeats its last frame), resized so
            it covers the bucket, randomly cropped to it, scaled to [-1, 1].

Batch i depends only on the seed and i, never on the process layout: process
p of P gets rows [p B / P, (p + 1) B / P) of every global batch, so a run
resumes on a different host count with identical batches. The dataset is a
grain `MapDataset` indexed by batch number, so its iterator state is one
integer and worker processes (`mp_prefetch`) can build batches in parallel.

Every batch is a dict:

  video   float32 [B / P, frames, height, width, 3] in [-1, 1]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import grain
import numpy as np
from absl import logging
from PIL import Image

from data_pipelines import media, pipeline, schema


@dataclasses.dataclass(frozen=True)
class ClipOptions:
  """Mirrors the autoencoder config's `data` section."""

  buckets: tuple[tuple[int, int, int], ...] = ((1, 64, 64), (9, 64, 64))
  bucket_weights: tuple[float, ...] = ()  # Empty: uniform.
  frame_stride: int = 1
  num_workers: int = 0
  worker_buffer_size: int = 2

  @classmethod
  def from_config(cls, cfg: Mapping[str, Any]) -> ClipOptions:
    names = {f.name for f in dataclasses.fields(cls)}
    d = {k: v for k, v in dict(cfg).items() if k in names}
    if "buckets" in d:
      d["buckets"] = tuple(tuple(int(v) for v in b) for b in d["buckets"])
    if "bucket_weights" in d:
      d["bucket_weights"] = tuple(float(w) for w in d["bucket_weights"])
    return cls(**d)

  def validate(self, temporal: int = 1, spatial: int = 1) -> None:
    """Raises ValueError naming the field; sizes must suit the model's compression."""
    if not self.buckets:
      raise ValueError("data.buckets is empty; give e.g. ((1, 64, 64), (9, 64, 64))")
    for b in self.buckets:
      if len(b) != 3 or min(b) <= 0:
        raise ValueError(f"data.buckets entry {b}: must be (frames, height, width), all positive")
      t, h, w = b
      if (t - 1) % temporal or h % spatial or w % spatial:
        raise ValueError(
          f"data.buckets entry {b}: frames must be 1 + a multiple of {temporal} and "
          f"height, width multiples of {spatial}"
        )
    if self.bucket_weights and (
      len(self.bucket_weights) != len(self.buckets) or min(self.bucket_weights) < 0
    ):
      raise ValueError(
        f"data.bucket_weights={self.bucket_weights}: need one non-negative weight per bucket"
      )
    if self.bucket_weights and sum(self.bucket_weights) <= 0:
      raise ValueError("data.bucket_weights must not all be zero")
    if self.frame_stride < 1:
      raise ValueError(f"data.frame_stride={self.frame_stride}: must be >= 1")


def crop_clip(
  frames: np.ndarray, size: tuple[int, int, int], rng: np.random.Generator, stride: int = 1
) -> np.ndarray:
  """uint8 `[T, H, W, 3]` -> float32 `[t, h, w, 3]` in [-1, 1] for bucket `size` = (t, h, w).

  A random window of t frames at `stride` (shorter clips repeat their last
  frame), resized so that it covers h x w with its aspect kept, then a random
  h x w crop.
  """
  t, h, w = size
  n = frames.shape[0]
  stride = max(1, min(stride, (n - 1) // max(t - 1, 1))) if n > 1 else 1
  span = (t - 1) * stride + 1
  start = int(rng.integers(max(n - span, 0) + 1))
  idx = np.minimum(start + np.arange(t) * stride, n - 1)
  window = frames[idx]
  fh, fw = window.shape[1:3]
  scale = max(h / fh, w / fw)
  rh, rw = max(h, round(fh * scale)), max(w, round(fw * scale))
  if (rh, rw) != (fh, fw):
    window = np.stack(
      [np.asarray(Image.fromarray(f).resize((rw, rh), Image.BILINEAR)) for f in window]
    )
  y = int(rng.integers(rh - h + 1))
  x = int(rng.integers(rw - w + 1))
  return pipeline.to_unit_range(window[:, y : y + h, x : x + w])


class ClipBatches(grain.MapDataset):
  """Global batch i restricted to this process's rows (see the module docstring)."""

  def __init__(
    self,
    source: Any,
    opts: ClipOptions,
    *,
    global_batch_size: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
    decode_record=pipeline.to_example,
  ):
    super().__init__()
    if global_batch_size % process_count:
      raise ValueError(
        f"global batch {global_batch_size} does not divide over {process_count} processes"
      )
    self.source = source
    self.num_records = len(source)
    if self.num_records == 0:
      raise ValueError("the dataset split has no records")
    self.opts = opts
    self.global_batch_size = global_batch_size
    self.rows = global_batch_size // process_count
    self.first_row = process_index * self.rows
    self.seed = seed
    self.decode_record = decode_record
    w = np.asarray(opts.bucket_weights or [1.0] * len(opts.buckets), np.float64)
    self.bucket_p = w / w.sum()
    self._perm_epoch, self._perm = -1, None

  def __len__(self) -> int:
    return np.iinfo(np.int64).max // 2  # Endless; batch numbers index it.

  def bucket(self, index: int) -> tuple[int, int, int]:
    rng = np.random.default_rng([self.seed, index, 1])
    return self.opts.buckets[int(rng.choice(len(self.opts.buckets), p=self.bucket_p))]

  def _record_index(self, k: int) -> int:
    epoch, pos = divmod(k, self.num_records)
    if epoch != self._perm_epoch:
      self._perm = np.random.default_rng([self.seed, epoch, 2]).permutation(self.num_records)
      self._perm_epoch = epoch
    return int(self._perm[pos])

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    size = self.bucket(index)
    out = []
    for r in range(self.first_row, self.first_row + self.rows):
      k = index * self.global_batch_size + r
      rng = np.random.default_rng([self.seed, index, r, 3])
      # A record that does not decode is replaced by the next one in the order.
      for attempt in range(16):
        try:
          ex = self.decode_record(self.source[self._record_index(k + attempt)])
          frames = media.decode(ex)
          break
        except (schema.SchemaError, media.MediaError) as e:
          logging.warning("skipping a record that does not decode: %s", e)
      else:
        raise media.MediaError(f"16 records in a row from batch {index} do not decode")
      out.append(crop_clip(frames, size, rng, self.opts.frame_stride))
    return {"video": np.stack(out)}

  def __str__(self) -> str:
    return f"ClipBatches(buckets={self.opts.buckets}, rows={self.rows})"


def make_dataset(
  source: Any,
  opts: ClipOptions,
  *,
  global_batch_size: int,
  seed: int,
  process_index: int = 0,
  process_count: int = 1,
  decode_record=pipeline.to_example,
) -> grain.IterDataset:
  """This process's stream of clip batches (checkpointable)."""
  ds = ClipBatches(
    source,
    opts,
    global_batch_size=global_batch_size,
    seed=seed,
    process_index=process_index,
    process_count=process_count,
    decode_record=decode_record,
  )
  ds = ds.to_iter_dataset()
  if opts.num_workers > 0:
    ds = ds.mp_prefetch(
      grain.MultiprocessingOptions(
        num_workers=opts.num_workers, per_worker_buffer_size=opts.worker_buffer_size
      )
    )
  return ds


class Stream:
  """A clip-batch iterator with the `{"num_shards", "shards"}` state the checkpoints store.

  Every process reads the same batch numbers, so one shared entry describes them all.
  """

  def __init__(self, dataset: grain.IterDataset):
    self._it = iter(dataset)

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    return next(self._it)

  def get_state(self) -> dict[str, Any]:
    return {"num_shards": 1, "shards": {"clips": self._it.get_state()}}

  def set_state(self, state: dict[str, Any]) -> None:
    self._it.set_state(state["shards"]["clips"])


def batch_shapes(opts: ClipOptions, rows: int) -> list[tuple[int, ...]]:
  """Every shape a batch can take (one per bucket), e.g. to compile ahead."""
  return [(rows, *b, 3) for b in opts.buckets]
