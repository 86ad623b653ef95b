"""Stopping early and cleanly: preemption, and a wall-clock cap.

Preemption: SIGTERM makes every process save at the same step boundary and exit 0.

In a multi-process job the JAX coordination service's preemption sync manager
(on by default with `jax.distributed`) catches SIGTERM on any host, agrees on a
safe step that every host reaches, and `reached` turns True there on all of
them. A single process simply notes the signal and stops at the next step.
"""

from __future__ import annotations

import signal
import time

import jax
import numpy as np
from absl import logging
from jax._src import distributed as jax_distributed  # Is jax.distributed initialized?
from jax.experimental import multihost_utils


class Preemption:
  """Answers, at each step boundary, whether to save now and stop."""

  def __init__(self):
    self._signalled = False
    self._distributed = jax_distributed.global_state.client is not None
    if not self._distributed:  # The sync manager handles SIGTERM itself otherwise.
      self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)

  def _on_sigterm(self, signum, frame) -> None:
    del signum, frame
    logging.warning("SIGTERM: saving a checkpoint at the next step boundary, then exiting")
    self._signalled = True

  def reached(self, step: int) -> bool:
    if self._distributed:
      return multihost_utils.reached_preemption_sync_point(step)
    return self._signalled

  def close(self) -> None:
    if not self._distributed:
      signal.signal(signal.SIGTERM, self._previous)


class TimeLimit:
  """`reached(step)`: whether `minutes` of wall time have passed since construction.

  Checked every `every` steps; process 0's clock decides and the answer is broadcast,
  so every process stops (and saves) at the same step. `minutes` <= 0: never.
  """

  def __init__(self, minutes: float, every: int = 1):
    self.minutes = float(minutes or 0)
    self.every = max(1, int(every))
    self.end = time.monotonic() + 60.0 * self.minutes

  def reached(self, step: int) -> bool:
    if self.minutes <= 0 or step % self.every:
      return False
    over = time.monotonic() >= self.end
    if jax.process_count() > 1:
      over = bool(multihost_utils.broadcast_one_to_all(np.asarray(over)))
    return over
