"""What exports and adapters share: errors, per-layer names, fingerprints, streaming restore.

`stream_params` reads a checkpoint's parameters a group at a time (orbax's
partial restore: the rest of the tree is never read), so host memory stays near
one group (GROUP_BYTES, or the largest array) whatever the model's size.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import ml_dtypes
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx

from sora_jax.core import checkpointing, safetensors_io
from sora_jax.models import dit
from sora_jax.models import lora as lora_lib

DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16}
GROUP_BYTES = 256 * 2**20  # Arrays restored from the checkpoint at a time (at least one).


class ExportError(ValueError):
  """A bad export request or an unreadable model or adapter directory (one line)."""


# ------------------------------------------------------------------------------
# Names and fingerprints.
# ------------------------------------------------------------------------------


def abstract_params(build, cfg) -> dict[str, Any]:
  abstract = nnx.eval_shape(lambda: build(cfg, rngs=nnx.Rngs(0)))
  return nnx.to_pure_dict(nnx.state(abstract, nnx.Param))


def layer_positions(dit_cfg: dit.DiTConfig) -> dict[str, int]:
  """Where the layer index goes in each scanned parameter's name (see safetensors_io)."""
  if not dit_cfg.scan_layers:
    return {}
  scanned = safetensors_io.flatten(abstract_params(dit.DiT, dit_cfg))
  unrolled = dataclasses.replace(dit_cfg, scan_layers=False)
  return safetensors_io.layer_positions(
    scanned, safetensors_io.flatten(abstract_params(dit.DiT, unrolled))
  )


def unstacked_arrays(
  flat: Mapping[str, Any], positions: Mapping[str, int]
) -> Iterator[tuple[str, Any]]:
  for name, array in flat.items():
    yield from safetensors_io.unstacked(name, array, positions.get(name))


class Fingerprint:
  """Identifies a set of base weights whatever their dtype: names, shapes and the first
  256 values of each tensor rounded to bfloat16. Adapters record their base's."""

  HEAD = 256

  def __init__(self):
    self._h = hashlib.sha256()

  def add(self, name: str, shape: tuple[int, ...], head: Any) -> None:
    """One tensor: its name, full shape and its first HEAD values (flattened)."""
    values = np.asarray(head, np.float32).reshape(-1)[: self.HEAD].astype(ml_dtypes.bfloat16)
    self._h.update(f"{name}:{tuple(int(d) for d in shape)};".encode())
    self._h.update(values.tobytes())

  def add_array(self, name: str, array: Any) -> None:
    self.add(name, array.shape, array.reshape(-1)[: self.HEAD])

  def hexdigest(self) -> str:
    return self._h.hexdigest()[:16]


def fingerprint(params: Mapping[str, Any], positions: Mapping[str, int]) -> str:
  """The fingerprint of a parameter tree (base weights only: adapters are left out)."""
  base, _ = lora_lib.split(params)
  fp = Fingerprint()
  for name, array in unstacked_arrays(safetensors_io.flatten(base), positions):
    fp.add(name, array.shape, jax.device_get(array.reshape(-1)[: Fingerprint.HEAD]))
  return fp.hexdigest()


# ------------------------------------------------------------------------------
# Streaming restore from an orbax checkpoint.
# ------------------------------------------------------------------------------


def _metadata(item_dir: str) -> Any:
  handler = ocp.StandardCheckpointHandler()
  try:
    return handler.metadata(epath.Path(item_dir))
  finally:
    handler.close()


def stream_params(
  workdir: str, step: int, weights: str, *, group_bytes: int = GROUP_BYTES
) -> Iterator[tuple[str, np.ndarray]]:
  """(dotted name, host array) of each parameter of a checkpoint, restored a group at a time.

  `weights`: "ema" (the EMA parameters) or "raw" (the train state's parameters).
  """
  step_dir = os.path.join(checkpointing.directory(workdir), str(step))
  item = {"ema": "ema", "raw": "state"}[weights]
  item_dir = os.path.join(step_dir, item)
  if not os.path.isdir(item_dir):
    raise ExportError(f"--workdir={workdir}: step {step} has no {item!r} item to export")
  try:
    meta = _metadata(item_dir)
  except Exception as e:  # noqa: BLE001 - orbax raises many kinds on a damaged checkpoint.
    raise ExportError(f"{item_dir}: unreadable checkpoint metadata ({first_line(e)})") from None
  tree = meta if weights == "ema" else meta["params"]
  flat = safetensors_io.flatten(tree)
  names = list(flat)
  groups, current, size = [], [], 0
  for name in names:
    nbytes = int(np.prod(flat[name].shape)) * np.dtype(flat[name].dtype).itemsize
    if current and size + nbytes > group_bytes:
      groups.append(current)
      current, size = [], 0
    current.append(name)
    size += nbytes
  if current:
    groups.append(current)
  ckptr = ocp.PyTreeCheckpointer()
  try:
    for group in groups:
      item = safetensors_io.unflatten(
        {n: jax.ShapeDtypeStruct(flat[n].shape, flat[n].dtype) for n in group}, like=tree
      )
      if weights == "raw":
        item = {"params": item}
      args = ocp.args.PyTreeRestore(
        item=item,
        # Straight into host numpy arrays: no device copy.
        restore_args=jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item),
        partial_restore=True,  # The rest of the tree is not read.
      )
      try:
        restored = ckptr.restore(epath.Path(item_dir), args=args)
      except Exception as e:  # noqa: BLE001
        raise ExportError(f"{item_dir}: cannot read the checkpoint ({first_line(e)})") from None
      if weights == "raw":
        restored = restored["params"]
      for name, array in safetensors_io.flatten(restored).items():
        yield name, np.asarray(array)
      del restored
  finally:
    ckptr.close()


def first_line(e: Exception) -> str:
  text = str(e).strip()
  return (text.splitlines()[0][:240] if text else type(e).__name__) or type(e).__name__


def source_commit() -> str:
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  try:
    out = subprocess.run(
      ["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
    )
    dirty = subprocess.run(
      ["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
      capture_output=True,
      text=True,
      timeout=10,
    )
  except (OSError, subprocess.SubprocessError):
    return "unknown"
  if out.returncode:
    return "unknown"
  return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def prepare_output(output: str, overwrite: bool) -> str:
  output = os.path.abspath(output)
  if os.path.exists(output) and not overwrite:
    raise ExportError(f"--output={output} exists; pass --overwrite to replace it")
  tmp = f"{output}.tmp-{os.getpid()}"
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  return tmp


def finish_output(tmp: str, output: str) -> None:
  output = os.path.abspath(output)
  if os.path.exists(output):
    old = f"{output}.old-{os.getpid()}"
    os.replace(output, old)
    os.replace(tmp, output)
    shutil.rmtree(old, ignore_errors=True)
  else:
    os.replace(tmp, output)


def config_sha256(config_json: Mapping[str, Any]) -> str:
  return hashlib.sha256(json.dumps(config_json, sort_keys=True).encode()).hexdigest()[:16]
