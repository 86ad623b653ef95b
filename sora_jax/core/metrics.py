"""Metric logging to stdout and TensorBoard, from process 0 only; TensorFlow is not needed.

TensorBoard event files are written with the `tensorboard` package's own
event writer and protos.
"""

from __future__ import annotations

import io
import json
import os
import time
from collections.abc import Mapping

import jax
import numpy as np
from absl import logging
from PIL import Image


class Writer:
  """Writes scalars and images; every method is a no-op on processes other than 0."""

  def __init__(self, logdir: str | None, *, enabled: bool | None = None):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self._events = None
    self._jsonl = None
    if self.enabled and logdir:
      from tensorboard.summary.writer.event_file_writer import EventFileWriter

      os.makedirs(logdir, exist_ok=True)
      self._events = EventFileWriter(logdir)
      self._jsonl = open(os.path.join(logdir, "metrics.jsonl"), "a")  # noqa: SIM115 (closed in close())

  def scalars(self, step: int, values: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    values = {k: float(v) for k, v in values.items()}
    logging.info("step %d: %s", step, " ".join(f"{k}={_fmt(v)}" for k, v in values.items()))
    if self._events is not None:
      from tensorboard.compat.proto import event_pb2, summary_pb2

      summary = summary_pb2.Summary(
        value=[summary_pb2.Summary.Value(tag=k, simple_value=v) for k, v in values.items()]
      )
      self._events.add_event(event_pb2.Event(wall_time=time.time(), step=step, summary=summary))
      self._jsonl.write(json.dumps({"step": step, **values}) + "\n")

  def image(self, step: int, tag: str, image: np.ndarray) -> None:
    """A uint8 `[H, W, 3]` image."""
    if not self.enabled or self._events is None:
      return
    from tensorboard.compat.proto import event_pb2, summary_pb2

    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, np.uint8)).save(buf, format="PNG")
    h, w = image.shape[:2]
    img = summary_pb2.Summary.Image(
      height=h, width=w, colorspace=3, encoded_image_string=buf.getvalue()
    )
    summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, image=img)])
    self._events.add_event(event_pb2.Event(wall_time=time.time(), step=step, summary=summary))

  def flush(self) -> None:
    if self._events is not None:
      self._events.flush()
      self._jsonl.flush()

  def close(self) -> None:
    if self._events is not None:
      self._events.close()
      self._jsonl.close()
      self._events = None


def read_jsonl(logdir: str) -> list[dict]:
  """The records `Writer.scalars` appended to LOGDIR/metrics.jsonl, in order."""
  with open(os.path.join(logdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f if line.strip()]


def _fmt(v: float) -> str:
  return f"{v:.4g}" if abs(v) < 1e5 else f"{v:.3e}"
