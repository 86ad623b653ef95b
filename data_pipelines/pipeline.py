"""The grain training pipeline: records -> spacetime patches -> packed rows -> batches.

  source (ArrayRecord or TFDS)
    -> this process's shard (process_index::process_count)
    -> repeat, seeded shuffle (a new order every epoch)
    -> decode, resize to a token budget, patchify, drop tokens, tokenize a caption
    -> first-fit pack into rows of `seq_len` tokens (NaViT Patch n' Pack)
    -> batch -> optional worker processes

Every row of a batch is a dict of static shapes (K = max_examples_per_row,
Lt = text_tokens_per_row, by default K * max_text_len):

  tokens            float32 [B, L, patch_dim]  patch values in [-1, 1]
  coords            int32   [B, L, 3]          (t, h, w) patch-grid coordinates
  segment_ids       int32   [B, L]             1..K per example, 0 = padding
  text_ids          int32   [B, Lt]            each example's caption tokens
  text_segment_ids  int32   [B, Lt]            the segment id of the example they caption

The segment ids of a row's tokens and text agree: text with segment id s
captions the patches with segment id s. Any further per-token feature with the
tokens' leading dimension is packed the same way. The stream is deterministic
for a seed: the same seed, process layout and step give the same batch, and
`get_state`/`set_state` of the iterator resume it exactly.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import grain
import numpy as np
from absl import logging
from PIL import Image

from data_pipelines import media, patchify, schema, shards, sizing
from data_pipelines.tokenizer import Tokenizer

# Keys every packed batch holds, with their dtypes.
BATCH_KEYS = {
  "tokens": np.float32,
  "coords": np.int32,
  "segment_ids": np.int32,
  "text_ids": np.int32,
  "text_segment_ids": np.int32,
}


@dataclasses.dataclass(frozen=True)
class Options:
  """Everything the pipeline needs besides the geometry; mirrors `config.data`."""

  seq_len: int = 1024  # L: tokens per packed row.
  max_examples_per_row: int = 8  # K: cap on segments per row.
  max_tokens_per_example: int = 512  # Token budget each example is resized to fit.
  max_frames: int = 16  # Pixel frames taken from a video at most.
  frame_stride: int = 1  # Take every k-th frame (at most k; less when a clip is short).
  min_frame_tokens: int = 16  # Below this many patches per frame, drop frames instead.
  min_token_fraction: float = 1.0  # < 1: NaViT random resolution, budget ~ U[f, 1].
  token_drop_rate: float = 0.0  # > 0: drop up to this fraction of each example's tokens.
  max_text_len: int = 32  # Caption tokens per example, eos included.
  # Caption tokens per row. 0: max_examples_per_row * max_text_len, room for every
  # caption whatever the row holds. Smaller packs the captions as tightly as the tokens
  # (a row also closes when its captions fill it): the caption encoder and the
  # cross-attention keys then run on fewer padding tokens.
  text_tokens_per_row: int = 0
  caption_dropout: float = 0.1  # Probability of an empty caption (classifier-free guidance).
  # Probability of dropping each word of a caption, independently ("a circle on a gray
  # background" from "a red circle ..."): each word must carry its meaning without the
  # others, for prompts that pair words never seen together (held-out compositions).
  word_dropout: float = 0.0
  # Use examples' time-stamped captions (schema caption_windows): each caption token then
  # carries the token-frame window it is seen from (`text_frames` in the batch).
  caption_windows: bool = False
  # Probability of a descriptive caption (schema descriptive_captions, written by
  # data_pipelines.recaption) instead of a short one, for examples that have them.
  descriptive_captions: float = 0.0
  num_packing_bins: int = 16  # Rows packed at once by first fit; more = less padding.
  num_workers: int = 0  # Grain worker processes (0: decode in this process).
  worker_buffer_size: int = 2
  # Threads reading and transforming records ahead of packing, per pipeline (grain's
  # ReadOptions; its default is 16). 0 reads in the consuming thread: on a machine whose
  # cores all run the training step, reader threads only compete with it.
  read_threads: int = 16

  @classmethod
  def from_config(cls, cfg: Mapping[str, Any]) -> Options:
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in dict(cfg).items() if k in names})

  @property
  def text_len(self) -> int:
    """Lt: caption tokens per packed row."""
    return self.text_tokens_per_row or self.max_examples_per_row * self.max_text_len

  @property
  def num_segments(self) -> int:
    """Segment ids 0 (padding) .. K (max examples per row)."""
    return self.max_examples_per_row + 1

  def validate(self) -> None:
    if self.max_tokens_per_example > self.seq_len:
      raise ValueError(
        f"data.max_tokens_per_example={self.max_tokens_per_example} exceeds "
        f"data.seq_len={self.seq_len}; an example must fit in one row"
      )
    if not 0.0 <= self.caption_dropout <= 1.0:
      raise ValueError(f"data.caption_dropout={self.caption_dropout}; allowed [0, 1]")
    if not 0.0 <= self.word_dropout < 1.0:
      raise ValueError(f"data.word_dropout={self.word_dropout}; allowed [0, 1)")
    if not 0.0 <= self.descriptive_captions <= 1.0:
      raise ValueError(f"data.descriptive_captions={self.descriptive_captions}; allowed [0, 1]")
    if not 0.0 <= self.token_drop_rate < 1.0:
      raise ValueError(f"data.token_drop_rate={self.token_drop_rate}; allowed [0, 1)")
    if not 0.0 < self.min_token_fraction <= 1.0:
      raise ValueError(f"data.min_token_fraction={self.min_token_fraction}; allowed (0, 1]")
    if self.text_tokens_per_row and not (
      self.max_text_len <= self.text_tokens_per_row and not self.caption_windows
    ):
      raise ValueError(
        f"data.text_tokens_per_row={self.text_tokens_per_row}: allowed 0 (room for every "
        f"caption) or at least data.max_text_len={self.max_text_len}, and only 0 with "
        "caption_windows (an example's windows may hold several captions)"
      )
    if self.read_threads < 0:
      raise ValueError(f"data.read_threads={self.read_threads}; allowed >= 0")
    if min(self.max_examples_per_row, self.max_text_len, self.max_frames, self.frame_stride) < 1:
      raise ValueError(
        "data.max_examples_per_row, max_text_len, max_frames and frame_stride must be >= 1"
      )


# ------------------------------------------------------------------------------
# Sources.
# ------------------------------------------------------------------------------


def open_source(
  kind: str, data_dir: str, split: str, tfds_name: str = "sora_jax"
) -> tuple[Any, Callable[[Any], schema.Example]]:
  """A random-access source and the function that turns its records into Examples.

  Args:
    kind: "array_record" (a sora_jax dataset directory) or "tfds" (a TFDS
      data_dir holding the `tfds_name` dataset built by data_pipelines.tfds_builder).
    data_dir: the directory.
    split: split name, e.g. "train".
    tfds_name: registered TFDS builder name.
  """
  if kind == "array_record":
    return grain.sources.ArrayRecordDataSource(shards.split_files(data_dir, split)), to_example
  if kind == "tfds":
    from data_pipelines import tfds_builder  # TFDS is imported only when used.

    return tfds_builder.data_source(data_dir, split, name=tfds_name), to_example
  raise ValueError(f"data.source={kind!r}; allowed: 'array_record', 'tfds'")


def to_example(record: Any) -> schema.Example:
  """An Example from an ArrayRecord record (bytes) or a TFDS record (dict)."""
  if isinstance(record, bytes | bytearray):
    return schema.deserialize(record)
  from data_pipelines import tfds_builder

  return tfds_builder.example_from_tfds(record)


# ------------------------------------------------------------------------------
# One example -> tokens.
# ------------------------------------------------------------------------------


def resize_frames(frames: np.ndarray, height: int, width: int) -> np.ndarray:
  """Antialiased bilinear resize of uint8 `[T, H, W, 3]` to `[T, height, width, 3]`."""
  if frames.shape[1:3] == (height, width):
    return frames
  return np.stack(
    [np.asarray(Image.fromarray(f).resize((width, height), Image.BILINEAR)) for f in frames]
  )


def to_unit_range(frames: np.ndarray) -> np.ndarray:
  """uint8 pixels -> float32 in [-1, 1]."""
  return frames.astype(np.float32) * (2.0 / 255.0) - 1.0


class Tokenize:
  """Turns one record into the unpacked features of one example.

  Returns a dict with `tokens` [n, D] float32, `coords` [n, 3] int32 and
  `text_ids` [m] int32 (m <= max_text_len, eos-terminated), or None when the
  record cannot be decoded (the pipeline then skips it and logs why).
  """

  def __init__(
    self,
    opts: Options,
    geom: sizing.Geometry,
    tokenizer: Tokenizer,
    decode_record: Callable[[Any], schema.Example] = to_example,
    to_moments: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None,
    from_moments: Callable[..., np.ndarray] | None = None,
  ):
    """`to_moments` (video [T, H, W, 3] in [-1, 1] -> posterior mean, logvar [t, h, w, C])
    and `from_moments` ((mean, logvar, rng) -> latent) make a latent stage; with neither,
    the tokens are pixels. Cached-latent records need only `from_moments`."""
    self.opts = opts
    self.geom = geom
    self.tokenizer = tokenizer
    self.decode_record = decode_record
    self.to_moments = to_moments
    self.from_moments = from_moments

  def choose_size(self, ex: schema.Example, rng: np.random.Generator) -> tuple[int, int, int]:
    o = self.opts
    return sizing.target_size(
      self.geom,
      ex.num_frames,
      ex.height,
      ex.width,
      max_tokens=o.max_tokens_per_example,
      max_frames=o.max_frames,
      min_frame_tokens=o.min_frame_tokens,
      rng=rng,
      min_token_fraction=o.min_token_fraction,
    )

  def cached_latent(
    self, ex: schema.Example, size: tuple[int, int, int], rng: np.random.Generator
  ) -> np.ndarray:
    """The latent of a cached record, which must have been cached at the size chosen now."""
    if self.from_moments is None:
      raise media.MediaError(
        f"{ex.source_id}: a cached-latent record needs latent.kind='autoencoder'"
      )
    if size != (ex.num_frames, ex.height, ex.width):
      raise ValueError(
        f"{ex.source_id}: cached at {ex.num_frames}x{ex.height}x{ex.width} (frames x height x "
        f"width) but this config's data options choose {size[0]}x{size[1]}x{size[2]}; cache "
        "again with this config (sora_jax.cache_latents --config=...)"
      )
    want = (*self.geom.latent_shape(*size), 2 * self.geom.channels)
    if tuple(ex.latent_shape) != want:
      raise ValueError(
        f"{ex.source_id}: cached latent {tuple(ex.latent_shape)} is not the {want} of this "
        "config's autoencoder; cache again with it"
      )
    mean, logvar = media.decode_latent(ex)
    return self.from_moments(mean, logvar, rng)

  def caption(self, ex: schema.Example, rng: np.random.Generator) -> str:
    caption = ex.captions[int(rng.integers(len(ex.captions)))]
    # (No extra draw without descriptive captions: such streams stay what they were.)
    p = self.opts.descriptive_captions
    if ex.descriptive_captions and p > 0.0 and rng.random() < p:
      caption = ex.descriptive_captions[int(rng.integers(len(ex.descriptive_captions)))]
    if self.opts.word_dropout > 0.0:  # (No draw without it, as above.)
      words = caption.split()
      kept = rng.random(len(words)) >= self.opts.word_dropout
      caption = " ".join(w for w, k in zip(words, kept, strict=True) if k)
    return "" if rng.random() < self.opts.caption_dropout else caption

  def text(
    self, ex: schema.Example, rng: np.random.Generator, start: int, stride: int, frames: int
  ) -> dict[str, np.ndarray]:
    """`text_ids` of the example's caption and, with `caption_windows`, `text_frames`: each
    caption token's token-frame window (a time-stamped caption's windows, mapped from the
    source clip's frames to the `frames` taken from `start` every `stride`)."""
    caption = self.caption(ex, rng)
    if not self.opts.caption_windows:
      return {"text_ids": np.asarray(self.tokenizer.ids(caption, self.opts.max_text_len), np.int32)}
    windows = [(caption, 0, frames)]
    if caption and ex.caption_windows and ex.media_format != schema.LATENT_FORMAT:
      chosen = ex.caption_windows[int(rng.integers(len(ex.caption_windows)))]
      first = lambda f: min(max(-(-(f - start) // stride), 0), frames)  # First frame >= f.
      mapped = [(text, first(a), first(b)) for text, a, b in chosen]
      windows = [w for w in mapped if w[1] < w[2]] or windows
    ids, spans = [], []
    runs = self.geom.token_windows([(a, b) for _, a, b in windows], frames)
    whole = len(runs) == 1
    for i, j0, j1 in runs:
      x = self.tokenizer.ids(windows[i][0], self.opts.max_text_len)
      ids.extend(x)
      spans.extend([(0, sizing.ALL_FRAMES) if whole else (j0, j1)] * len(x))
    return {
      "text_ids": np.asarray(ids, np.int32),
      "text_frames": np.asarray(spans, np.int32).reshape(-1, 2),
    }

  def __call__(self, record: Any, rng: np.random.Generator) -> dict[str, np.ndarray] | None:
    try:
      ex = self.decode_record(record)
      frames, height, width = self.choose_size(ex, rng)
      stride = max(1, min(self.opts.frame_stride, (ex.num_frames - 1) // max(frames - 1, 1)))
      span = (frames - 1) * stride + 1
      start = int(rng.integers(ex.num_frames - span + 1))
      if ex.media_format == schema.LATENT_FORMAT:
        video = self.cached_latent(ex, (frames, height, width), rng)
      else:
        pixels = media.decode(ex, start_frame=start, max_frames=span)[::stride]
        video = None
    except (schema.SchemaError, media.MediaError) as e:
      logging.warning("skipping a record that does not decode: %s", e)
      return None
    if video is None:
      if pixels.shape[0] != frames:  # A video shorter than its header said.
        frames = self.geom.pixel_frames(self.geom.latent_frames(pixels.shape[0]))
        pixels = pixels[:frames]
      video = to_unit_range(resize_frames(pixels, height, width))
      if self.to_moments is not None:
        video = self.from_moments(*self.to_moments(video), rng)
      else:
        video = video[: self.geom.latent_frames(frames)]  # Pixel stage: T = latent T.
    grid = patchify.grid_shape(video.shape[:3], self.geom.patch)
    tokens = patchify.patchify(video, self.geom.patch)
    coords = patchify.coordinates(grid)
    if self.opts.token_drop_rate > 0:
      rate = rng.uniform(0.0, self.opts.token_drop_rate)
      keep = np.sort(rng.permutation(len(tokens))[: max(1, round(len(tokens) * (1 - rate)))])
      tokens, coords = tokens[keep], coords[keep]
    text = self.text(ex, rng, start, stride, frames)
    return {"tokens": tokens.astype(np.float32), "coords": coords, **text}


# ------------------------------------------------------------------------------
# Packing.
# ------------------------------------------------------------------------------


def pack(
  ds: grain.IterDataset,
  opts: Options,
  seed: int,
  shuffle_bins: bool = True,
  extra_token_keys: tuple[str, ...] = (),
  extra_text_keys: tuple[str, ...] = (),
):
  """First-fit packs example dicts into rows (see the module docstring for keys).

  `extra_token_keys` name further per-token features (leading dim = the
  example's token count) to pack alongside the tokens and keep in the rows;
  `extra_text_keys` the same per caption token (e.g. `text_frames`, caption windows).
  """
  token_keys = ("tokens", "coords", *extra_token_keys)
  text_keys = ("text_ids", *extra_text_keys)
  packed = grain.experimental.FirstFitPackIterDataset(
    ds,
    length_struct={
      **{k: opts.seq_len for k in token_keys},
      **{k: opts.text_len for k in text_keys},
    },
    num_packing_bins=opts.num_packing_bins,
    seed=seed,
    shuffle_bins=shuffle_bins,
    max_sequences_per_bin=opts.max_examples_per_row,
  )
  keys = token_keys + tuple(extra_text_keys)
  return packed.map(functools.partial(_clean_packed_row, keys=keys))


def _clean_packed_row(row: dict[str, np.ndarray], keys: tuple[str, ...]) -> dict[str, np.ndarray]:
  return {
    **{k: row[k] for k in keys},
    "segment_ids": row["tokens_segment_ids"].astype(np.int32),
    "text_ids": row["text_ids"],
    "text_segment_ids": row["text_ids_segment_ids"].astype(np.int32),
  }


# ------------------------------------------------------------------------------
# The training dataset.
# ------------------------------------------------------------------------------


def make_dataset(
  source: Any,
  tokenize: Tokenize,
  *,
  batch_size: int,
  seed: int,
  process_index: int = 0,
  process_count: int = 1,
  num_epochs: int | None = None,
  shuffle: bool = True,
) -> grain.IterDataset:
  """The packed, batched training stream of one process.

  Args:
    source: a random-access source (`open_source`).
    tokenize: the per-example transform.
    batch_size: rows per batch on this process.
    seed: seeds the shuffle, the per-example randomness and bin shuffling.
    process_index, process_count: this process's shard of the source.
    num_epochs: None repeats forever.
    shuffle: shuffle records (a new order each epoch).
  """
  opts = tokenize.opts
  opts.validate()
  ds = grain.MapDataset.source(source)
  if process_count > 1:
    ds = ds[process_index::process_count]
  if len(ds) == 0:
    raise ValueError(f"process {process_index} of {process_count} has no records to read")
  if shuffle:
    ds = ds.shuffle(seed=seed)
  ds = ds.seed(seed + 1).random_map(tokenize).filter(_is_example)
  ds = ds.repeat(num_epochs)  # Reseeds the shuffle and random_map every epoch.
  text_keys = ("text_frames",) if opts.caption_windows else ()
  ds = pack(
    ds.to_iter_dataset(grain.ReadOptions(num_threads=opts.read_threads)),
    opts,
    seed=seed + 2,
    shuffle_bins=shuffle,
    extra_text_keys=text_keys,
  )
  ds = ds.batch(batch_size, drop_remainder=True)
  if opts.num_workers > 0:
    ds = ds.mp_prefetch(
      grain.MultiprocessingOptions(
        num_workers=opts.num_workers, per_worker_buffer_size=opts.worker_buffer_size
      )
    )
  return ds


def _is_example(x) -> bool:
  return x is not None


def batch_keys(opts: Options) -> tuple[str, ...]:
  """The keys of a packed batch under `opts` (`text_frames` with caption windows)."""
  return (*BATCH_KEYS, *(("text_frames",) if opts.caption_windows else ()))


def batch_spec(opts: Options, geom: sizing.Geometry, batch_size: int) -> dict[str, tuple]:
  """Static (shape, dtype) of every batch key, known before any data is read."""
  L, Lt = opts.seq_len, opts.text_len
  return {
    "tokens": ((batch_size, L, geom.patch_dim), np.float32),
    "coords": ((batch_size, L, 3), np.int32),
    "segment_ids": ((batch_size, L), np.int32),
    "text_ids": ((batch_size, Lt), np.int32),
    "text_segment_ids": ((batch_size, Lt), np.int32),
    **({"text_frames": ((batch_size, Lt, 2), np.int32)} if opts.caption_windows else {}),
  }


def real_token_fraction(batch: Mapping[str, np.ndarray]) -> float:
  """Fraction of row positions that hold real (non-padding) tokens."""
  return float(np.mean(np.asarray(batch["segment_ids"]) > 0))


# ------------------------------------------------------------------------------
# The comparison: one example per row, padded to a bucket length.
# ------------------------------------------------------------------------------


def bucket_lengths(seq_len: int, num_buckets: int = 4) -> list[int]:
  """Bucket row lengths seq_len / 2^k, as bucketing systems use."""
  return sorted({max(1, seq_len >> k) for k in range(num_buckets)})


def bucketed_batches(
  examples: Iterator[dict[str, np.ndarray]], opts: Options, batch_size: int, buckets: list[int]
) -> Iterator[dict[str, np.ndarray]]:
  """Groups examples by the smallest bucket they fit and pads each to it, one per row.

  Yields batches with the same keys as packed batches; the row length varies by
  bucket, which is what forces a bucketing trainer to compile one step per bucket.
  """
  pending: dict[int, list[dict[str, np.ndarray]]] = {b: [] for b in buckets}
  for ex in examples:
    n = len(ex["tokens"])
    bucket = next((b for b in buckets if b >= n), None)
    if bucket is None:
      continue
    pending[bucket].append(ex)
    if len(pending[bucket]) == batch_size:
      rows = pending[bucket]
      pending[bucket] = []
      yield {
        k: np.stack([_pad_single(r, bucket, opts.max_text_len)[k] for r in rows])
        for k in BATCH_KEYS
      }


def _pad_single(ex: dict[str, np.ndarray], length: int, text_len: int) -> dict[str, np.ndarray]:
  n, m = len(ex["tokens"]), len(ex["text_ids"])
  seg = np.zeros(length, np.int32)
  seg[:n] = 1
  tseg = np.zeros(text_len, np.int32)
  tseg[:m] = 1
  return {
    "tokens": np.pad(ex["tokens"], ((0, length - n), (0, 0))),
    "coords": np.pad(ex["coords"], ((0, length - n), (0, 0))),
    "segment_ids": seg,
    "text_ids": np.pad(ex["text_ids"], (0, text_len - m)),
    "text_segment_ids": tseg,
  }
