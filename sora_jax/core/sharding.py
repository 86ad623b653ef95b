"""The device mesh and the logical-to-mesh axis rules.

Model code names every parameter and activation dimension logically ("embed",
"mlp", "heads", "batch", ...). One rules table in the config maps logical names
to mesh axes, so changing the parallelism never touches model code:

  rules = (("batch", ("data", "fsdp")), ("embed", "fsdp"), ("mlp", "tensor"), ...)

A logical name missing from the table, or mapped to None, is replicated. A
mesh axis is used at most once per array, and a dimension that does not divide
by its mesh axes is replicated instead (with a log line), so tiny test models
run on any mesh.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import flax.core.spmd as flax_spmd
import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "context", "tensor")

Rules = Sequence[tuple[str, str | Sequence[str] | None]]


def make_mesh(shape: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A mesh over all (or the given) devices; one axis may be -1 (the rest).

  Args:
    shape: mesh axis sizes by name, e.g. {"data": -1, "fsdp": 8, "tensor": 1}.
      Axes of MESH_AXES that are absent get size 1.
    devices: defaults to jax.devices().
  """
  devices = list(jax.devices() if devices is None else devices)
  unknown = set(shape) - set(MESH_AXES)
  if unknown:
    raise ValueError(f"mesh axes {sorted(unknown)} unknown; allowed: {MESH_AXES}")
  sizes = {a: int(shape.get(a, 1)) for a in MESH_AXES}
  free = [a for a, s in sizes.items() if s == -1]
  if len(free) > 1 or any(s == 0 or s < -1 for s in sizes.values()):
    raise ValueError(f"mesh={dict(shape)}: sizes must be positive, with at most one -1")
  fixed = math.prod(s for s in sizes.values() if s != -1)
  if free:
    if len(devices) % fixed:
      raise ValueError(f"mesh={dict(shape)} does not divide {len(devices)} devices")
    sizes[free[0]] = len(devices) // fixed
  if math.prod(sizes.values()) != len(devices):
    raise ValueError(
      f"mesh={dict(shape)} has {math.prod(sizes.values())} devices; there are {len(devices)}"
    )
  grid = _device_grid(devices, [sizes[a] for a in MESH_AXES])
  return Mesh(grid, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))


def _device_grid(devices: list[jax.Device], shape: list[int]) -> np.ndarray:
  """Devices laid out so inner (fast) axes stay within a host where possible."""
  try:
    from jax.experimental import mesh_utils

    if len({d.process_index for d in devices}) > 1 or devices[0].platform != "cpu":
      return mesh_utils.create_device_mesh(shape, devices)
  except Exception as e:  # Topology-aware layout is best effort.
    logging.info("falling back to a plain device order for the mesh: %s", e)
  return np.asarray(devices).reshape(shape)


def spec(names: Sequence[str | None], rules: Rules, mesh: Mesh, shape: Sequence[int] | None = None):
  """PartitionSpec of logical axis `names` under `rules` (see module docstring)."""
  table = dict(rules)
  used: set[str] = set()
  out = []
  for i, name in enumerate(names):
    axes = table.get(name) if name is not None else None
    if axes is None:
      out.append(None)
      continue
    axes = (axes,) if isinstance(axes, str) else tuple(axes)
    axes = tuple(a for a in axes if a not in used and mesh.shape.get(a, 1) > 1)
    size = math.prod(mesh.shape[a] for a in axes)
    if shape is not None and axes and shape[i] % size:
      logging.log_first_n(
        logging.INFO, "replicating dim %d (%s) of %s: not divisible by %s", 20, i, name, shape, axes
      )
      axes = ()
    used.update(axes)
    out.append(None if not axes else axes[0] if len(axes) == 1 else axes)
  return PartitionSpec(*out)


def named_sharding(names, rules: Rules, mesh: Mesh, shape=None) -> NamedSharding:
  return NamedSharding(mesh, spec(names, rules, mesh, shape))


def param_shardings(abstract_state: Any, rules: Rules, mesh: Mesh) -> Any:
  """NamedShardings for a tree of nnx Variables (or arrays) from their `out_sharding` names."""

  def one(x):
    value = x.get_value() if hasattr(x, "get_value") else x
    names = x.get_metadata().get("out_sharding") if hasattr(x, "get_metadata") else None
    names = names or (None,) * len(value.shape)
    return named_sharding(names, rules, mesh, value.shape)

  return jax.tree.map(one, abstract_state, is_leaf=lambda x: hasattr(x, "get_metadata"))


def like_params(opt_state: Any, param_shardings: Any, replicated: NamedSharding) -> Any:
  """Optimizer moments shard like their parameters (matched by path suffix); the rest replicate."""
  by_path = {
    tuple(map(str, p)): s for p, s in jax.tree_util.tree_flatten_with_path(param_shardings)[0]
  }

  def one(path, leaf):
    keys = tuple(map(str, path))
    if leaf.shape:
      for n in range(len(keys)):
        if keys[n:] in by_path:
          return by_path[keys[n:]]
    return replicated

  return jax.tree_util.tree_map_with_path(one, opt_state)


# ------------------------------------------------------------------------------
# Activation constraints inside model code.
# ------------------------------------------------------------------------------


def axis_rules(rules: Rules):
  """Context that makes `constrain` (and flax's spec helpers) use `rules`."""
  return flax_spmd.logical_axis_rules(tuple((k, v) for k, v in rules))


def current_rules() -> Rules:
  """The rules of the enclosing `axis_rules` context (empty outside one)."""
  return flax_spmd.get_logical_axis_rules()


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
  """Sharding constraint by logical names; a no-op outside a mesh or rules context."""
  mesh = jax.sharding.get_abstract_mesh()
  rules = flax_spmd.get_logical_axis_rules()
  if mesh.empty or not rules:
    return x
  return jax.lax.with_sharding_constraint(x, spec(names, rules, mesh, x.shape))


def batch_axes(rules: Rules) -> tuple[str, ...]:
  axes = dict(rules).get("batch") or ()
  return (axes,) if isinstance(axes, str) else tuple(axes)


def global_batch(local: Mapping[str, np.ndarray], mesh: Mesh, rules: Rules) -> dict[str, jax.Array]:
  """Global arrays from this process's rows: the batch dim is sharded by the "batch" rule.

  Every process passes its own rows (process-local data); together they make
  the global batch, so the same code runs on one host or 256.
  """
  out = {}
  for k, v in local.items():
    names = ("batch",) + (None,) * (v.ndim - 1)
    sharding = NamedSharding(mesh, spec(names, rules, mesh))
    out[k] = jax.make_array_from_process_local_data(sharding, np.asarray(v))
  return out
