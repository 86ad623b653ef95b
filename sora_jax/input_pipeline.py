"""The training input of one process: the grain pipeline behind a prefetching, checkpointable iterator."""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Callable
from typing import Any

import ml_collections

from data_pipelines import pipeline
from data_pipelines.tokenizer import Tokenizer
from sora_jax import factory, latent


def make_dataset(
  cfg: ml_collections.ConfigDict,
  tokenizer: Tokenizer,
  stage: latent.LatentStage,
  process_index: int,
  process_count: int,
  *,
  split: str | None = None,
  seed: int | None = None,
):
  """This process's packed, batched grain dataset for `cfg` (rows = global batch / processes)."""
  source, decode = pipeline.open_source(
    cfg.data.source, cfg.data.data_dir, split or cfg.data.split, cfg.data.tfds_name
  )
  tokenize = pipeline.Tokenize(
    factory.options(cfg),
    factory.geometry(cfg, stage),
    tokenizer,
    decode_record=decode,
    to_latent=None if isinstance(stage, latent.PixelStage) else stage.encode,
  )
  return pipeline.make_dataset(
    source,
    tokenize,
    batch_size=cfg.train.global_batch_size // process_count,
    seed=cfg.seed if seed is None else seed,
    process_index=process_index,
    process_count=process_count,
  )


class BatchIterator:
  """Prefetches batches in a background thread, optionally moving them to devices.

  `get_state` returns the grain state after the last batch handed out (not the
  prefetched ones), so a checkpoint resumes exactly at the next unseen batch.
  It speaks the protocol of `grain.checkpoint.CheckpointSave/CheckpointRestore`
  (bytes state, `start_prefetch`).
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

  def get_state(self) -> bytes:
    return json.dumps(self._state).encode()

  def set_state(self, state: bytes) -> None:
    self._halt()
    self._state = json.loads(state)
    self._it.set_state(self._state)
    self._start()

  def start_prefetch(self) -> None:  # grain's restore hook; prefetching already runs.
    pass

  def close(self) -> None:
    self._halt()
