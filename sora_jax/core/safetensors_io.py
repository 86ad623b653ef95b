"""Parameter trees as safetensors files: dotted names, size-capped shards, streamed writes.

Layout (the Hugging Face convention, which levanter, MaxText and diffusers share):

  PREFIX.safetensors                                     everything in one file, or
  PREFIX-00001-of-00003.safetensors, ...                 shards of at most max_shard_size bytes
  PREFIX.safetensors.index.json                          {"metadata": {"total_size": bytes},
                                                          "weight_map": {name: shard file}}

A nested parameter dict `{"blocks": {"0": {"attn": {"q": {"kernel": w}}}}}` is named
`blocks.0.attn.q.kernel`. Scanned layers hold one array with a leading layer axis;
`layer_positions` finds where their per-layer index goes by comparing the scanned
tree with the unscanned one (`blocks.attn.q.kernel[i]` -> `blocks.i.attn.q.kernel`),
so an export names every tensor as the unscanned model does.

`ShardWriter` takes arrays one at a time and holds at most one shard's worth of
them on the host, so the memory an export needs is about the largest tensor plus
one shard, whatever the model's size. Files are read back with the `safetensors`
library's own loaders (`safe_open`), a tensor at a time.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

SUFFIX = ".safetensors"
INDEX_SUFFIX = ".safetensors.index.json"
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}


class SafetensorsError(ValueError):
  """A missing, truncated or inconsistent safetensors directory (one line, names the file)."""


def parse_size(text: str | int) -> int:
  """Bytes in "2GB", "500MB", "10KiB" or a plain number."""
  if isinstance(text, int):
    return text
  m = _SIZE.match(str(text))
  if not m:
    raise ValueError(f"{text!r} is not a size; use e.g. 2GB, 500MB or 1000000")
  unit = m.group(2).upper()
  base = 1024 ** ("KMGT".index(unit[0]) + 1) if "I" in unit else _UNITS[unit[:1]]
  return int(float(m.group(1)) * base)


# ------------------------------------------------------------------------------
# Names.
# ------------------------------------------------------------------------------


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """Nested dict -> {"a.b.c": leaf} (keys taken as strings, in sorted order)."""
  out = {}
  for k in sorted(tree, key=str):
    v = tree[k]
    name = f"{prefix}{k}"
    if isinstance(v, Mapping):
      out.update(flatten(v, name + "."))
    else:
      out[name] = v
  return out


def unflatten(flat: Mapping[str, Any], like: Mapping[str, Any] | None = None) -> dict[str, Any]:
  """{"a.b.c": leaf} -> nested dict; with `like`, keys take that tree's key types (int or str)."""
  out: dict[Any, Any] = {}
  for name, leaf in flat.items():
    node, ref = out, like
    parts = name.split(".")
    for i, part in enumerate(parts):
      key = part
      if ref is not None:
        key = next((k for k in ref if str(k) == part), part)
        ref = ref.get(key) if isinstance(ref, Mapping) else None
      if i == len(parts) - 1:
        node[key] = leaf
      else:
        node = node.setdefault(key, {})
  return out


def layer_positions(scanned: Mapping[str, Any], unscanned: Mapping[str, Any]) -> dict[str, int]:
  """{scanned name: how many of its dotted parts precede the layer index} for stacked arrays.

  `scanned` and `unscanned` are flat name -> leaf maps of the same model built
  with and without scanned layers. A scanned name absent from `unscanned` is a
  stack whose index goes after the longest prefix for which `prefix.0.rest` exists.
  """
  out = {}
  for name in scanned:
    if name in unscanned:
      continue
    parts = name.split(".")
    for k in range(len(parts) - 1, 0, -1):
      if ".".join(parts[:k] + ["0"] + parts[k:]) in unscanned:
        out[name] = k
        break
    else:
      raise ValueError(f"{name}: neither in the unscanned tree nor a stack of its layers")
  return out


def unstacked(name: str, array: Any, position: int | None) -> Iterator[tuple[str, Any]]:
  """(name, array) itself, or one (name with index, array[i]) per layer of a stack."""
  if position is None:
    yield name, array
    return
  for i, layer in enumerate(layer_names(name, array.shape[0], position)):
    yield layer, array[i]


def layer_names(name: str, num_layers: int, position: int) -> list[str]:
  """The per-layer names of a stacked array's `num_layers` layers."""
  parts = name.split(".")
  return [".".join(parts[:position] + [str(i)] + parts[position:]) for i in range(num_layers)]


def stacked_name(name: str, position: int) -> tuple[str, int]:
  """Inverse of `unstacked` for one name: (scanned name, layer index)."""
  parts = name.split(".")
  return ".".join(parts[:position] + parts[position + 1 :]), int(parts[position])


# ------------------------------------------------------------------------------
# Writing.
# ------------------------------------------------------------------------------


class ShardWriter:
  """Writes named arrays into shards of at most `max_shard_size` bytes, then the index.

    with ShardWriter(directory, max_shard_size=2 * 10**9) as w:
      for name, array in arrays:   # host arrays, one at a time
        w.add(name, array)
    w.files  # the shard files written; w.total_size, w.num_tensors

  One shard's worth of arrays is buffered; a tensor larger than the cap gets a
  shard of its own. With one shard the file is PREFIX.safetensors and no index
  is written (the convention for small models).
  """

  def __init__(
    self,
    directory: str,
    *,
    prefix: str = "model",
    max_shard_size: int | str = "2GB",
    metadata: Mapping[str, str] | None = None,
  ):
    self.directory = directory
    self.prefix = prefix
    self.max_shard_size = parse_size(max_shard_size)
    if self.max_shard_size <= 0:
      raise ValueError(f"max_shard_size={max_shard_size!r}: must be positive")
    self.metadata = {str(k): str(v) for k, v in (metadata or {}).items()}
    self._buffer: dict[str, np.ndarray] = {}
    self._buffered = 0
    self._parts: list[tuple[str, list[str]]] = []  # (temporary file, names)
    self._names: set[str] = set()
    self.total_size = 0
    self.num_tensors = 0
    self.files: list[str] = []
    os.makedirs(directory, exist_ok=True)

  def add(self, name: str, array: Any) -> None:
    if name in self._names:
      raise ValueError(f"tensor {name!r} written twice")
    a = np.ascontiguousarray(np.asarray(array))
    if self._buffer and self._buffered + a.nbytes > self.max_shard_size:
      self._flush()
    self._names.add(name)
    self._buffer[name] = a
    self._buffered += a.nbytes
    self.total_size += a.nbytes
    self.num_tensors += 1

  def _flush(self) -> None:
    path = os.path.join(self.directory, f".part-{len(self._parts):05d}{SUFFIX}")
    save_file(self._buffer, path, metadata=self.metadata)
    self._parts.append((path, list(self._buffer)))
    self._buffer, self._buffered = {}, 0

  def close(self) -> list[str]:
    if self._buffer or not self._parts:
      self._flush()
    n = len(self._parts)
    weight_map = {}
    for i, (tmp, names) in enumerate(self._parts):
      file = f"{self.prefix}{SUFFIX}" if n == 1 else f"{self.prefix}-{i + 1:05d}-of-{n:05d}{SUFFIX}"
      os.replace(tmp, os.path.join(self.directory, file))
      self.files.append(file)
      weight_map.update(dict.fromkeys(names, file))
    if n > 1:
      index = {
        "metadata": {"total_size": self.total_size, **self.metadata},
        "weight_map": dict(sorted(weight_map.items())),
      }
      with open(os.path.join(self.directory, self.prefix + INDEX_SUFFIX), "w") as f:
        json.dump(index, f, indent=2)
    return self.files

  def __enter__(self) -> ShardWriter:
    return self

  def __exit__(self, exc_type, *_) -> None:
    if exc_type is None:
      self.close()


# ------------------------------------------------------------------------------
# Reading.
# ------------------------------------------------------------------------------


class Reader:
  """The tensors of PREFIX.safetensors (or its shards and index) in `directory`, read lazily."""

  def __init__(self, directory: str, prefix: str = "model"):
    self.directory = directory
    single = os.path.join(directory, prefix + SUFFIX)
    index = os.path.join(directory, prefix + INDEX_SUFFIX)
    if os.path.exists(index):
      try:
        with open(index) as f:
          self.weight_map = dict(json.load(f)["weight_map"])
      except (ValueError, KeyError, TypeError) as e:
        raise SafetensorsError(f"{index}: not a safetensors index ({e})") from None
    elif os.path.exists(single):
      self.weight_map = None
    else:
      raise SafetensorsError(f"{directory}: no {prefix}{SUFFIX} and no {prefix}{INDEX_SUFFIX}")
    files = sorted(set(self.weight_map.values())) if self.weight_map else [prefix + SUFFIX]
    self._handles = {}
    for file in files:
      path = os.path.join(directory, file)
      if not os.path.exists(path):
        raise SafetensorsError(f"{path}: missing (named by {prefix}{INDEX_SUFFIX})")
      try:
        self._handles[file] = safe_open(path, framework="numpy")
      except (SafetensorError, OSError) as e:
        raise SafetensorsError(f"{path}: unreadable, perhaps truncated ({e})") from None
    if self.weight_map is None:
      self.weight_map = dict.fromkeys(self._handles[files[0]].keys(), files[0])
    for file, handle in self._handles.items():
      listed = {n for n, f in self.weight_map.items() if f == file}
      missing = listed - set(handle.keys())
      if missing:
        raise SafetensorsError(
          f"{os.path.join(directory, file)}: lacks {len(missing)} tensors its index names, "
          f"e.g. {sorted(missing)[0]}"
        )

  def names(self) -> list[str]:
    return sorted(self.weight_map)

  def shape(self, name: str) -> tuple[int, ...]:
    return tuple(self._handles[self.weight_map[name]].get_slice(name).get_shape())

  def get(self, name: str) -> np.ndarray:
    if name not in self.weight_map:
      raise SafetensorsError(f"{self.directory}: no tensor named {name!r}")
    return self._handles[self.weight_map[name]].get_tensor(name)


def read_tree(
  directory: str,
  abstract: Mapping[str, Any],
  positions: Mapping[str, int] | None = None,
  prefix: str = "model",
) -> dict[str, Any]:
  """The arrays named by `abstract` (a nested dict of ShapeDtypeStructs with shardings).

  Stacked arrays (`positions`, from `layer_positions`) are gathered from their
  per-layer tensors. Each array is cast to its abstract dtype and placed on its
  sharding one at a time (each process copies in only its own shards), so a
  model restores onto any mesh. A tensor missing or of another shape raises
  SafetensorsError naming it.
  """
  reader = Reader(directory, prefix)
  positions = positions or {}
  flat = flatten(abstract)
  have = set(reader.names())
  out = {}
  for name, spec in flat.items():
    if name in positions:
      parts = layer_names(name, spec.shape[0], positions[name])
    else:
      parts = [name]
    missing = [n for n in parts if n not in have]
    if missing:
      raise SafetensorsError(
        f"{directory}: no tensor {missing[0]!r} ({len(missing)} missing): it holds another model"
      )
    if name in positions:
      array = np.stack([reader.get(n) for n in parts])
    else:
      array = reader.get(name)
    if tuple(array.shape) != tuple(spec.shape):
      raise SafetensorsError(
        f"{directory}: tensor {name!r} has shape {tuple(array.shape)}, the model wants "
        f"{tuple(spec.shape)}: it holds another model"
      )
    array = array.astype(spec.dtype)
    sharding = getattr(spec, "sharding", None)
    if sharding is None:
      out[name] = jax.device_put(array)
    else:
      out[name] = jax.make_array_from_callback(array.shape, sharding, lambda idx, a=array: a[idx])
    del array
  return unflatten(out, like=abstract)
