"""LoRA adapter directories: a style preset in one small file, applied to the base it was
trained on.

  DIR/adapter.safetensors     the factors, per layer: blocks.3.attn.q.lora.lora_a [in, r], ...
  DIR/adapter_config.json     {"format": "sora_jax.lora", rank, alpha, targets,
                               base_fingerprint, provenance, num_params, bytes}

An adapter run (`train --config.init_from=EXPORT --config.lora.rank=R`) records
its base's fingerprint in WORKDIR/base_model.json; exporting that run writes
its adapter alone. `load` reads an adapter onto a mesh, refusing one made for
another base model (one line naming both fingerprints); `apply` merges loaded
adapters into the base weights at their scales (stacking is merging in turn).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from sora_jax.core import safetensors_io
from sora_jax.model_io import common
from sora_jax.model_io.common import ExportError
from sora_jax.models import dit
from sora_jax.models import lora as lora_lib

FORMAT = "sora_jax.lora"
PREFIX = "adapter"
CONFIG_FILE = "adapter_config.json"
BASE_FILE = "base_model.json"  # In an adapter run's workdir: which base it fine-tunes.


def parse_spec(spec: str) -> tuple[str, float]:
  """'DIR[:scale]' -> (DIR, scale); raises ExportError on a bad scale."""
  path, sep, scale = spec.rpartition(":")
  if not sep or os.path.sep in scale or not scale:
    return spec, 1.0
  try:
    return path, float(scale)
  except ValueError:
    raise ExportError(f"{spec!r}: the scale after ':' must be a number") from None


@dataclasses.dataclass
class Adapter:
  directory: str
  config: dict[str, Any]

  @property
  def lora(self) -> lora_lib.LoraConfig:
    c = self.config
    return lora_lib.LoraConfig(int(c["rank"]), float(c["alpha"]), tuple(c["targets"]))


def read(directory: str) -> Adapter:
  """An adapter directory's config, with its tensors checked for presence (not loaded)."""
  path = os.path.join(directory, CONFIG_FILE)
  try:
    with open(path) as f:
      config = json.load(f)
  except FileNotFoundError:
    raise ExportError(f"{directory}: not an adapter directory (no {CONFIG_FILE})") from None
  except (OSError, ValueError) as e:
    raise ExportError(f"{path}: unreadable ({e})") from None
  if config.get("format") != FORMAT:
    raise ExportError(f"{path}: not a sora_jax adapter (format {config.get('format')!r})")
  try:
    safetensors_io.Reader(directory, PREFIX)
  except safetensors_io.SafetensorsError as e:
    raise ExportError(str(e)) from None
  return Adapter(os.path.abspath(directory), config)


def check_base(adapter: Adapter, base_fingerprint: str) -> None:
  want = adapter.config.get("base_fingerprint")
  if want != base_fingerprint:
    raise ExportError(
      f"--preset={adapter.directory}: this adapter was trained on base model {want}; "
      f"the model here is {base_fingerprint}"
    )


def _adapter_abstract(dit_cfg: dit.DiTConfig, adapter: Adapter) -> tuple[dict, dict[str, int]]:
  """The adapter's parameter tree (ShapeDtypeStructs) for a base config, and layer positions."""
  with_lora = dataclasses.replace(dit_cfg, lora=adapter.lora)
  _, tree = lora_lib.split(common.abstract_params(dit.DiT, with_lora))
  return tree, common.layer_positions(with_lora)


def load(
  directory: str, dit_cfg: dit.DiTConfig, base_fingerprint: str, mesh: jax.sharding.Mesh
) -> tuple[Adapter, dict[str, Any]]:
  """(adapter, its factors replicated on `mesh`) for the base with `base_fingerprint`."""
  adapter = read(directory)
  check_base(adapter, base_fingerprint)
  tree, positions = _adapter_abstract(dit_cfg, adapter)
  replicated = NamedSharding(mesh, PartitionSpec())
  target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated), tree)
  try:
    return adapter, safetensors_io.read_tree(directory, target, positions, PREFIX)
  except safetensors_io.SafetensorsError as e:
    raise ExportError(f"--preset={directory}: {e}") from None


def apply(
  params: Mapping[str, Any],
  loaded: Sequence[tuple[Adapter, Mapping[str, Any], float]],
  shardings: Any,
) -> dict[str, Any]:
  """Base params with each (adapter, factors, scale) merged in, on the params' shardings."""
  for adapter, factors, scale in loaded:
    lora_scale = adapter.lora.scale

    def merged(p, f, s=scale, ls=lora_scale):
      return lora_lib.merge(p, f, s, ls)

    params = jax.jit(merged, out_shardings=shardings)(params, factors)
  return params


def merge_array(
  name: str,
  array: np.ndarray,
  merges: Sequence[Adapter],
  scales: Sequence[float],
  positions: Mapping[str, int],
) -> np.ndarray:
  """One base array (scanned name, host) with adapters baked in (for streaming export)."""
  if not name.endswith(".kernel"):
    return array
  stem = name[: -len("kernel")] + lora_lib.ADAPTER_KEY + "."
  out = np.array(array, np.float32)  # A writable copy.
  for adapter, scale in zip(merges, scales, strict=True):
    reader = safetensors_io.Reader(adapter.directory, PREFIX)
    have = set(reader.names())
    pos = positions.get(name)
    n = array.shape[0] if pos is not None else 1
    names_a = (
      [stem + "lora_a"] if pos is None else safetensors_io.layer_names(stem + "lora_a", n, pos)
    )
    for i, a_name in enumerate(names_a):
      b_name = a_name[: -len("lora_a")] + "lora_b"
      if a_name not in have:
        continue
      a, b = reader.get(a_name).astype(np.float32), reader.get(b_name).astype(np.float32)
      target = out if pos is None else out[i]
      target += (scale * adapter.lora.scale) * (a @ b).reshape(target.shape)
  return out.astype(array.dtype)


def export(
  workdir: str,
  step: int,
  output: str,
  cfg: Any,
  config_json: Mapping[str, Any],
  dit_cfg: dit.DiTConfig,
  opts: Any,
) -> dict[str, Any]:
  """The adapter of an adapter run, as its own directory (see the module docstring)."""
  base_path = os.path.join(workdir, BASE_FILE)
  if not os.path.exists(base_path):
    raise ExportError(
      f"--workdir={workdir}: an adapter run without {BASE_FILE} (train it with "
      "--config.init_from=EXPORT)"
    )
  with open(base_path) as f:
    base = json.load(f)
  positions = common.layer_positions(dit_cfg)
  dtype = common.DTYPES[opts.dtype]
  tmp = common.prepare_output(output, opts.overwrite)
  try:
    with safetensors_io.ShardWriter(
      tmp, prefix=PREFIX, max_shard_size="100GB", metadata={"format": "pt"}
    ) as writer:
      for name, array in common.stream_params(workdir, step, opts.weights):
        if f".{lora_lib.ADAPTER_KEY}." not in f".{name}.":
          continue
        for part, a in safetensors_io.unstacked(name, array, positions.get(name)):
          writer.add(part, a.astype(dtype))
    config = {
      "format": FORMAT,
      **dit_cfg.lora.to_json(),
      "base_fingerprint": base["fingerprint"],
      "base": base.get("path"),
      "num_params": None,
      "bytes": writer.total_size,
      "dtype": opts.dtype,
      "provenance": {
        "run": os.path.abspath(workdir),
        "step": step,
        "source_commit": common.source_commit(),
        "config_sha256": common.config_sha256(config_json),
        "data_dir": cfg.data.get("data_dir"),
      },
    }
    reader = safetensors_io.Reader(tmp, PREFIX)
    config["num_params"] = int(sum(np.prod(reader.shape(n)) for n in reader.names()))
    with open(os.path.join(tmp, CONFIG_FILE), "w") as f:
      json.dump(config, f, indent=2)
    common.finish_output(tmp, output)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return {
    "step": step,
    "adapter": True,
    "files": [PREFIX + safetensors_io.SUFFIX, CONFIG_FILE],
    "num_params": config["num_params"],
    "total_bytes": config["bytes"],
    "base_fingerprint": base["fingerprint"],
    "output": os.path.abspath(output),
  }
