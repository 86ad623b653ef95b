"""Non-finite guards shared by every trainer: a bad step changes nothing, and the host stops.

Inside the jitted step, `guarded` keeps the old state wherever the loss or
gradient was not finite and records the first such step; on the host,
`check_finite` turns that record into a TrainingError naming the step and the
last good checkpoint, which nothing after it has overwritten.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp


class TrainingError(RuntimeError):
  """Training cannot go on; the message says why and what is intact."""


def keep_if(finite: jax.Array, new: Any, old: Any) -> Any:
  return jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)


def guarded(state: Mapping[str, Any], step: jax.Array, finite: jax.Array, **new: Any) -> dict:
  """The next state: `new` items where finite (else the old ones), the step, the first bad step."""
  return {
    "step": step,
    **{k: keep_if(finite, v, state[k]) for k, v in new.items()},
    "nonfinite_step": jnp.where(
      (state["nonfinite_step"] < 0) & ~finite, step, state["nonfinite_step"]
    ),
  }


def check_finite(state: Mapping[str, Any], mngr, step: int) -> None:
  """Raises TrainingError if any step so far was not finite (waits for pending saves first)."""
  bad = int(jax.device_get(state["nonfinite_step"]))
  if bad >= 0:
    mngr.wait_until_finished()
    last = mngr.latest_step()
    raise TrainingError(
      f"non-finite loss or gradient at step {bad}; stopped at step {step} without saving. "
      f"The last good checkpoint ({'step ' + str(last) if last is not None else 'none'}) "
      "is intact; lower config.optim.lr or raise config.optim.warmup_steps."
    )
