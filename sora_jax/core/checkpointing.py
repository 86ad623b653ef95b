"""Orbax checkpoints of a training run: WORKDIR/checkpoints/STEP/{state,ema,data,config}.

  state   step, parameters, optimizer state (sharded; every process writes its shards)
  ema     the EMA parameters, which the sampling binary restores alone
  data    the input stream state: one JSON file per process with the states of
          the virtual data shards it owns (see sora_jax.training.input_pipeline)
  config  the run's config as JSON, so a checkpoint is self-describing

Restoring onto another mesh or process count works: arrays are resharded onto
the shardings of the abstract target, and each process of the new job reads
the data-shard states it now owns from all the old processes' files (the
workdir is shared storage on multi-host jobs).

Saves are asynchronous; `CheckpointManager.wait_until_finished` blocks until the
last one is committed. Orbax writes each step to a temporary directory and
renames it when complete, so a killed run never leaves a partial step behind.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath


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
    items["data"] = DataSave(data_iterator)
  mngr.save(step, args=ocp.args.Composite(**items), force=True)


def restore_train(
  mngr,
  step: int,
  abstract_state: Any,
  abstract_ema: Any,
  data_iterator: Any,
  config: dict | None = None,
):
  """Restores state and EMA onto the shardings of the abstract trees, and the iterator in place.

  A checkpoint that does not fit (another model: checked from its metadata before
  any array is read; or another data-stream layout) raises CheckpointError, one
  line naming the mismatch and, given the current `config` as JSON, the fields
  changed since the save. The checkpoint is left as it is.
  """
  problem = state_mismatch(mngr.directory / str(step) / "state", abstract_state)
  if problem:
    raise CheckpointError(_cannot_resume(mngr, step, problem, config))
  items = dict(
    state=ocp.args.StandardRestore(abstract_state),
    ema=ocp.args.StandardRestore(abstract_ema),
  )
  if data_iterator is not None:
    items["data"] = DataRestore(data_iterator)
  try:
    restored = mngr.restore(step, args=ocp.args.Composite(**items))
  except (ValueError, TypeError) as e:  # E.g. the data stream's layout differs.
    raise CheckpointError(_cannot_resume(mngr, step, e, config)) from None
  return restored["state"], restored["ema"]


def config_diff(saved: dict, current: dict) -> list[str]:
  """'config.a.b: saved -> now' for each field of two JSON configs that differs."""
  out = []

  def walk(a, b, path):
    if isinstance(a, dict) and isinstance(b, dict):
      for k in sorted(set(a) | set(b)):
        walk(a.get(k, "<unset>"), b.get(k, "<unset>"), f"{path}.{k}")
    elif a != b:
      out.append(f"{path}: {a!r} -> {b!r}")

  walk(saved, current, "config")
  return out


def _cannot_resume(mngr, step: int, error: Exception | str, config: dict | None) -> str:
  reason = str(error).strip().splitlines()[0][:300] if str(error).strip() else repr(error)
  workdir = mngr.directory.parent  # See directory().
  msg = f"--workdir={workdir}: its checkpoint (step {step}) does not fit this config ({reason})."
  if config is not None:
    saved = mngr.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]
    changed = [d for d in config_diff(saved, config) if not d.startswith("config.data.data_dir")]
    more = f"; and {len(changed) - 8} more" if len(changed) > 8 else ""
    msg += f" Changed since it was saved: {'; '.join(changed[:8]) + more or 'nothing'}."
  return (
    msg + " Resume with the config it was saved with, or use a new --workdir; "
    "the checkpoint is left as it is."
  )


def _key_path(path) -> str:
  parts = []
  for k in path:
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        parts.append(str(getattr(k, attr)))
        break
  return "/".join(parts)


def state_mismatch(step_dir, abstract_state: Any) -> str | None:
  """Why the train state saved in `step_dir` cannot restore onto `abstract_state`, or None.

  Reads only the checkpoint's metadata (array paths and shapes).
  """
  handler = ocp.StandardCheckpointHandler()
  try:
    saved = handler.metadata(epath.Path(step_dir))
  finally:
    handler.close()
  have = {_key_path(p): tuple(x.shape) for p, x in jax.tree_util.tree_leaves_with_path(saved)}
  want = {
    _key_path(p): tuple(x.shape) for p, x in jax.tree_util.tree_leaves_with_path(abstract_state)
  }
  only_now, only_saved = sorted(set(want) - set(have)), sorted(set(have) - set(want))
  if only_now or only_saved:
    example = only_now[0] if only_now else only_saved[0]
    return (
      f"the parameter tree differs: {len(only_now)} arrays only in this config, "
      f"{len(only_saved)} only in the checkpoint, e.g. {example}"
    )
  changed = [k for k in want if want[k] != have[k]]
  if changed:
    k = changed[0]
    return (
      f"{len(changed)} arrays differ in shape, e.g. {k}: {have[k]} in the checkpoint, "
      f"{want[k]} in this config"
    )
  return None


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


# ------------------------------------------------------------------------------
# The input stream's state.
# ------------------------------------------------------------------------------


class DataStateHandler(ocp.CheckpointHandler):
  """Saves each process's data-shard states; restores from all processes' files.

  The item is anything with `get_state() -> {"num_shards", "shards": {id: state}}`
  and `set_state(...)` (sora_jax.training.input_pipeline.BatchIterator).
  """

  def save(self, directory, args) -> None:
    name = f"process_{jax.process_index()}-of-{jax.process_count()}.json"
    (directory / name).write_text(json.dumps(args.item.get_state()))

  def restore(self, directory, args):
    files = sorted(directory.glob("process_*-of-*.json"))
    if not files:
      raise CheckpointError(f"{directory} holds no data-stream state")
    states = [json.loads(f.read_text()) for f in files]
    counts = {s["num_shards"] for s in states}
    if len(counts) != 1:
      raise CheckpointError(f"{directory}: data-stream files disagree on the shard count {counts}")
    merged = {"num_shards": counts.pop(), "shards": {}}
    for s in states:
      merged["shards"].update(s["shards"])
    args.item.set_state(merged)
    return args.item


@ocp.args.register_with_handler(DataStateHandler, for_save=True)
@dataclasses.dataclass
class DataSave(ocp.args.CheckpointArgs):
  item: Any


@ocp.args.register_with_handler(DataStateHandler, for_restore=True)
@dataclasses.dataclass
class DataRestore(ocp.args.CheckpointArgs):
  item: Any
