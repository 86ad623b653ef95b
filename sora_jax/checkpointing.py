"""Orbax checkpoints of a training run: WORKDIR/checkpoints/STEP/{state,ema,data,config}.

  state   step, parameters, optimizer state (sharded; every process writes its shards)
  ema     the EMA parameters, which the sampling binary restores alone
  data    the grain iterator state, one JSON file per process
  config  the run's config as JSON, so a checkpoint is self-describing

Saves are asynchronous; `CheckpointManager.wait_until_finished` blocks until the
last one is committed. Orbax writes each step to a temporary directory and
renames it when complete, so a killed run never leaves a partial step behind.
"""

from __future__ import annotations

import os
from typing import Any

import grain
import orbax.checkpoint as ocp


class CheckpointError(ValueError):
  """No usable checkpoint where one was asked for."""


def directory(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), "checkpoints")


def manager(workdir: str, *, keep: int = 3, async_save: bool = True, read_only: bool = False):
  options = ocp.CheckpointManagerOptions(
    max_to_keep=keep,
    enable_async_checkpointing=async_save,
    create=not read_only,
    read_only=read_only,
  )
  return ocp.CheckpointManager(directory(workdir), options=options)


def save(mngr, step: int, state: Any, ema: Any, data_iterator: Any, config: dict) -> None:
  items = dict(
    state=ocp.args.StandardSave(state),
    ema=ocp.args.StandardSave(ema),
    config=ocp.args.JsonSave(config),
  )
  if data_iterator is not None:
    items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
  mngr.save(step, args=ocp.args.Composite(**items), force=True)


def restore_train(mngr, step: int, abstract_state: Any, abstract_ema: Any, data_iterator: Any):
  """Restores state and EMA onto the shardings of the abstract trees, and the iterator in place."""
  items = dict(
    state=ocp.args.StandardRestore(abstract_state),
    ema=ocp.args.StandardRestore(abstract_ema),
  )
  if data_iterator is not None:
    items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
  restored = mngr.restore(step, args=ocp.args.Composite(**items))
  return restored["state"], restored["ema"]


def latest_step(workdir: str) -> int | None:
  if not os.path.isdir(directory(workdir)):
    return None
  mngr = manager(workdir, read_only=True)
  try:
    return mngr.latest_step()
  finally:
    mngr.close()


def restore_config(workdir: str, step: int | None = None) -> tuple[int, dict]:
  """(step, config dict) of the given or latest checkpoint in `workdir`."""
  if not os.path.isdir(directory(workdir)):
    raise CheckpointError(f"--workdir={workdir}: no checkpoints found (no {directory(workdir)})")
  mngr = manager(workdir, read_only=True)
  try:
    steps = mngr.all_steps()
    if not steps:
      raise CheckpointError(f"--workdir={workdir}: no checkpoints found")
    if step is None:
      step = max(steps)
    elif step not in steps:
      raise CheckpointError(f"--step={step}: not found in {workdir}; available: {sorted(steps)}")
    config = mngr.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]
    return step, config
  finally:
    mngr.close()


def restore_ema(workdir: str, step: int, abstract_ema: Any) -> Any:
  """The EMA parameters of a step, onto the shardings of `abstract_ema` (e.g. 1 device)."""
  mngr = manager(workdir, read_only=True)
  try:
    restored = mngr.restore(
      step, args=ocp.args.Composite(ema=ocp.args.StandardRestore(abstract_ema))
    )
    return restored["ema"]
  finally:
    mngr.close()
