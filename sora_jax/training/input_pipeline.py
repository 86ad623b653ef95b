"""The training input: the global batch as virtual data shards, so any host count reproduces it.

The records are cut into V = `data.num_shards` virtual shards (record i belongs
to shard i mod V), each an independent grain pipeline (shuffle, tokenize, pack)
that contributes B / V rows to every global batch of B rows, in shard order.
A job of P processes (P must divide V) gives process p the shards
[p V / P, (p + 1) V / P), so its rows are exactly its slice of the global batch.
Because the global batch does not depend on P, a run saved by 2 hosts resumes
on 1 (or 4) with identical batches: every shard's iterator state is saved, and
the processes of the resumed job each pick up the shards they now own.

`BatchIterator` prefetches in a background thread and moves batches to the
devices; its `get_state` describes the batches handed out, not the prefetched
ones.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

import ml_collections
import numpy as np

from data_pipelines import pipeline
from data_pipelines import tokenizer as tokenizer_lib
from data_pipelines.tokenizer import Tokenizer
from sora_jax.diffusion import latent


def load_tokenizer(cfg: ml_collections.ConfigDict) -> Tokenizer:
  """`config.data.tokenizer`, or the one in the data directory's manifest when unset."""
  if cfg.data.tokenizer:
    return Tokenizer(cfg.data.tokenizer)
  return tokenizer_lib.load(cfg.data.data_dir)


def num_shards(cfg: ml_collections.ConfigDict) -> int:
  """V: `data.num_shards`, or one shard per row of the global batch when 0."""
  return int(cfg.data.num_shards) or int(cfg.train.global_batch_size)


def check_shards(cfg: ml_collections.ConfigDict, process_count: int) -> None:
  """Raises ValueError naming the fields when shards, rows and processes do not divide."""
  v, b = num_shards(cfg), cfg.train.global_batch_size
  if b % v:
    raise ValueError(
      f"config.train.global_batch_size={b} must be a multiple of config.data.num_shards={v}"
    )
  if v % process_count:
    raise ValueError(
      f"config.data.num_shards={v} must be a multiple of the {process_count} processes "
      "(each process reads whole virtual shards)"
    )


class ShardedStream:
  """The global batch stream, restricted to the virtual shards this process owns."""

  def __init__(
    self,
    cfg: ml_collections.ConfigDict,
    tokenizer: Tokenizer,
    stage: latent.LatentStage,
    process_index: int = 0,
    process_count: int = 1,
    *,
    split: str | None = None,
    seed: int | None = None,
  ):
    check_shards(cfg, process_count)
    self.num_shards = v = num_shards(cfg)
    per_process = v // process_count
    self.shards = list(range(process_index * per_process, (process_index + 1) * per_process))
    source, decode = pipeline.open_source(
      cfg.data.source, cfg.data.data_dir, split or cfg.data.split, cfg.data.tfds_name
    )
    tokenize = pipeline.Tokenize(
      pipeline.Options.from_config(cfg.data),
      latent.geometry_for(cfg, stage),
      tokenizer,
      decode_record=decode,
      to_moments=getattr(stage, "moments", None),
      from_moments=getattr(stage, "from_moments", None),
    )
    seed = cfg.seed if seed is None else seed
    rows = cfg.train.global_batch_size // v
    self.datasets = {
      s: pipeline.make_dataset(
        source,
        tokenize,
        batch_size=rows,
        seed=seed + 7919 * s,
        process_index=s,
        process_count=v,
      )
      for s in self.shards
    }

  def __iter__(self) -> ShardedIterator:
    return ShardedIterator(self.num_shards, {s: iter(d) for s, d in self.datasets.items()})


class ShardedIterator:
  """Concatenates one batch of each owned shard, in shard order; checkpointable per shard."""

  def __init__(self, num_shards: int, iterators: dict[int, Any]):
    self.num_shards = num_shards
    self.iterators = iterators

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    batches = [next(self.iterators[s]) for s in sorted(self.iterators)]
    return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}

  def get_state(self) -> dict[str, Any]:
    return {
      "num_shards": self.num_shards,
      "shards": {str(s): it.get_state() for s, it in self.iterators.items()},
    }

  def set_state(self, state: dict[str, Any]) -> None:
    """Restores the owned shards from a state holding them (possibly among others)."""
    if state["num_shards"] != self.num_shards:
      raise ValueError(
        f"the checkpoint's data stream has {state['num_shards']} virtual shards but "
        f"config.data.num_shards gives {self.num_shards}; keep it unchanged to resume"
      )
    missing = [s for s in self.iterators if str(s) not in state["shards"]]
    if missing:
      raise ValueError(f"the checkpoint holds no state for data shards {missing}")
    for s, it in self.iterators.items():
      it.set_state(state["shards"][str(s)])


def make_dataset(cfg, tokenizer, stage, process_index: int = 0, process_count: int = 1, **kw):
  """This process's stream of batches (global batch / processes rows each)."""
  return ShardedStream(cfg, tokenizer, stage, process_index, process_count, **kw)


class BatchIterator:
  """Prefetches batches in a background thread, optionally moving them to devices.

  `get_state` returns the stream state after the last batch handed out (not
  the prefetched ones), so a checkpoint resumes exactly at the next unseen batch.
  """

  def __init__(self, dataset, *, prefetch: int = 2, transform: Callable[[Any], Any] | None = None):
    self._it = iter(dataset)
    self._prefetch = prefetch
    self._transform = transform or (lambda b: b)
    self._state = self._it.get_state()
    self._thread = None
    self._start()

  def _start(self) -> None:
    self._queue: queue.Queue = queue.Queue(maxsize=self._prefetch)
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, args=(self._queue, self._stop), daemon=True)
    self._thread.start()

  def _run(self, q: queue.Queue, stop: threading.Event) -> None:
    while not stop.is_set():
      try:
        batch = next(self._it)
        item = (self._transform(batch), self._it.get_state(), None)
      except BaseException as e:  # Re-raised in the consumer.
        item = (None, None, e)
      while not stop.is_set():
        try:
          q.put(item, timeout=0.1)
          break
        except queue.Full:
          continue
      if item[2] is not None:
        return

  def __iter__(self):
    return self

  def __next__(self):
    batch, state, error = self._queue.get()
    if error is not None:
      raise error
    self._state = state
    return batch

  def _halt(self) -> None:
    if self._thread is not None:
      self._stop.set()
      self._thread.join()
      self._thread = None

  def get_state(self) -> dict[str, Any]:
    return self._state

  def set_state(self, state: dict[str, Any]) -> None:
    self._halt()
    self._it.set_state(state)
    self._state = self._it.get_state()
    self._start()

  def close(self) -> None:
    self._halt()
