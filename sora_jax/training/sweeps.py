"""Scaling-law sweeps: definitions, the isoFLOP grid, the compute-budget solver, the manifest,
and each point's run and `result.json`.

A sweep file (`experiments/sweeps/NAME.py`) defines

  get_config()  the base config (what `python -m sora_jax.train --config=FILE` trains), and
  get_sweep()   a `Sweep`: that base and its points, each a set of dotted config overrides
                (`{"model.width": 128, ...}`) and optionally a compute budget in FLOPs.

A point with a budget gets `train.num_steps` solved so that its training FLOPs, counted
exactly as the trainer counts them (`sora_jax.core.flops`: the real packed segment lengths
of every batch, attention and the text encoder included), come within `tolerance` of the
budget. The count is linear in five sums over a batch's examples (`flops.batch_stats`), and
the training stream is deterministic, so the stats of the first steps of the stream are
read once (cached beside the manifest) and any model's FLOPs for any step count follow.

Every point trains as `python -m sora_jax.train --config=FILE --workdir=ROOT/NAME
--config.FIELD=VALUE ...`: the manifest records those arguments, so a pod job, a SLURM
array task or a person can run one point exactly as the local launcher does.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ml_collections
import numpy as np
from flax import nnx

from data_pipelines import shards
from sora_jax.core import configs, flops, metrics
from sora_jax.diffusion import latent
from sora_jax.models import dit
from sora_jax.training import input_pipeline, validation

MANIFEST = "manifest.json"
RESULT = "result.json"
FAILURE = "failure.json"
ROLES = ("fit", "holdout")


class SweepError(ValueError):
  """A sweep file, budget or root that cannot be used; the message names it."""


@dataclasses.dataclass(frozen=True)
class Point:
  name: str
  overrides: Mapping[str, Any]  # Dotted config fields -> values, e.g. {"model.width": 128}.
  budget: float = 0.0  # Training FLOPs to spend; 0: the overrides give train.num_steps.
  role: str = "fit"  # "fit", or "holdout": left out of the fit and predicted by it.


@dataclasses.dataclass(frozen=True)
class Sweep:
  base: ml_collections.ConfigDict
  points: Sequence[Point]
  tolerance: float = 0.01  # Largest |FLOPs - budget| / budget a solved point may have.
  warmup_fraction: float = 0.05  # optim.warmup_steps = this share of the solved steps.
  evals: int = 4  # Held-out evaluations per run (heldout.every = steps // evals); one at the end.
  expected_mfu: float = 0.15  # For the dry run's time estimate until points have finished.
  overhead_s: float = 30.0  # Start-up and compilation per point, for the same estimate.
  # The built-in dataset to generate when data.data_dir has none (data_pipelines.synthetic
  # flags, e.g. {"num_examples": 10000}); None: the data must exist.
  synthetic_data: Mapping[str, Any] | None = None


# ------------------------------------------------------------------------------
# Definitions.
# ------------------------------------------------------------------------------


def shape_for_width(
  width: int, *, head_dim: int = 32, aspect: int = 32, min_depth: int = 2
) -> dict[str, int]:
  """The model shape of a width: heads = width / head_dim (a fixed head dim, as muP
  assumes) and depth = max(min_depth, round(width / aspect)) (a fixed aspect ratio
  width/depth, Kaplan et al.'s finding that loss depends little on it nearby)."""
  if width % head_dim:
    raise SweepError(f"width {width} is not a multiple of head_dim {head_dim}")
  return {
    "model.width": width,
    "model.heads": width // head_dim,
    "model.depth": max(min_depth, round(width / aspect)),
  }


def isoflop_grid(
  budgets: Sequence[float],
  widths: Sequence[int],
  *,
  shape: Callable[[int], Mapping[str, Any]] = shape_for_width,
  lr: Callable[[int], float] | None = None,
  holdout: Sequence[tuple[float, int]] = (),
) -> list[Point]:
  """One point per (budget, width), plus `holdout` (budget, width) points; `lr(width)`
  gives optim.lr per point (None: the base config's, e.g. one muP learning rate)."""

  def point(budget, width, role):
    overrides = dict(shape(width))
    if lr is not None:
      overrides["optim.lr"] = float(lr(width))
    return Point(f"C{budget:.2e}_w{width}".replace("+", ""), overrides, float(budget), role)

  pts = [point(c, w, "fit") for c in budgets for w in widths]
  pts += [point(c, w, "holdout") for c, w in holdout]
  return pts


def load_sweep(path: str) -> Sweep:
  """The `Sweep` of a sweep file; SweepError names the file when it has none."""
  if not os.path.isfile(path):
    raise SweepError(f"--sweep={path}: no such file")
  spec = importlib.util.spec_from_file_location("sora_jax_sweep_file", path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except Exception as e:  # A user's file: any error in it is the user's to fix.
    raise SweepError(f"--sweep={path}: {type(e).__name__}: {e}") from None
  for name in ("get_sweep", "get_config"):
    if not callable(getattr(module, name, None)):
      raise SweepError(f"--sweep={path}: defines no {name}() (see experiments/sweeps/)")
  sweep = module.get_sweep()
  if not isinstance(sweep, Sweep) or not sweep.points:
    raise SweepError(f"--sweep={path}: get_sweep() must return a Sweep with points")
  names = [p.name for p in sweep.points]
  if len(set(names)) != len(names):
    raise SweepError(f"--sweep={path}: point names repeat: {sorted(names)}")
  for p in sweep.points:
    if p.role not in ROLES:
      raise SweepError(f"--sweep={path}: point {p.name} has role {p.role!r}; allowed: {ROLES}")
  return sweep


def point_config(base: ml_collections.ConfigDict, overrides: Mapping[str, Any]):
  """The base config with dotted `overrides` applied (unknown fields raise SweepError)."""
  cfg = ml_collections.ConfigDict(base.to_dict())
  for key, value in overrides.items():
    *parents, leaf = key.split(".")
    node = cfg
    for p in parents:
      if p not in node:
        raise SweepError(f"override {key}={value!r}: config has no section {p!r}")
      node = node[p]
    if leaf not in node:
      raise SweepError(f"override {key}={value!r}: config has no field {key}")
    node[leaf] = type(node[leaf])(value) if isinstance(node[leaf], (int, float)) else value
  return cfg


def override_args(overrides: Mapping[str, Any]) -> list[str]:
  """`--config.FIELD=VALUE` flags for `sora_jax.train`."""
  return [f"--config.{k}={v}" for k, v in overrides.items()]


# ------------------------------------------------------------------------------
# Models and the stream's FLOP statistics.
# ------------------------------------------------------------------------------


def model_facts(cfg: ml_collections.ConfigDict, vocab_size: int) -> dict[str, Any]:
  """Parameter counts (total; non-embedding = the DiT block stack; per video and caption
  token) and the FLOPs per unit of `flops.batch_stats`, without building any weights."""
  dit_cfg = dit.DiTConfig.from_config(cfg.model, latent.geometry_for(cfg).patch_dim, vocab_size)
  abstract = nnx.eval_shape(lambda: dit.DiT(dit_cfg, rngs=nnx.Rngs(0)))
  params = nnx.to_pure_dict(nnx.state(abstract, nnx.Param))
  counts = flops.param_counts(params)
  blocks = sum(math.prod(x.shape) for x in _leaves(params["blocks"]))
  return {
    "params": {
      "total": counts["total"],
      "non_embedding": int(blocks),
      "per_video_token": counts["video"],
      "per_caption_token": counts["text"],
    },
    "flops_per_stat": flops.flops_per_stat(counts, dit_cfg).tolist(),
  }


def _leaves(tree):
  if isinstance(tree, Mapping):
    for v in tree.values():
      yield from _leaves(v)
  else:
    yield tree


def stream_key(cfg: ml_collections.ConfigDict) -> str:
  """What the training stream's token counts depend on (not the model's width or depth)."""
  keyed = {
    "data": cfg.data.to_dict(),
    "latent": cfg.latent.to_dict(),
    "patch": list(cfg.model.patch),
    "batch": cfg.train.global_batch_size,
    "seed": cfg.seed,
  }
  return hashlib.sha256(json.dumps(keyed, sort_keys=True, default=str).encode()).hexdigest()[:16]


class StreamStats:
  """`flops.batch_stats` of the training stream's first steps, read on demand and cached
  in ROOT/stream_stats_KEY.npy (rows = steps)."""

  def __init__(self, cfg: ml_collections.ConfigDict, root: str, progress: bool = True):
    self.cfg = cfg
    self.path = os.path.join(root, f"stream_stats_{stream_key(cfg)}.npy")
    self.progress = progress
    self.stats = np.load(self.path) if os.path.exists(self.path) else np.zeros((0, 5))
    self._it, self._read = None, 0  # The live stream and how many steps it has given.

  def first(self, steps: int) -> np.ndarray:
    """Stats of steps 1..`steps` `[steps, 5]`, reading the stream where the cache ends."""
    if steps > len(self.stats):
      self._extend(steps)
    return self.stats[:steps]

  def _extend(self, steps: int) -> None:
    """Reads the stream on from where the cache ends: the stream's own checkpoint state is
    kept beside the cache (without it, the cached steps are read again to skip them)."""
    from tqdm import tqdm

    state_path = self.path[: -len(".npy")] + ".state.json"
    if self._it is None or self._read != len(self.stats):
      cfg = self.cfg
      tok = input_pipeline.load_tokenizer(cfg)
      self._it = iter(input_pipeline.make_dataset(cfg, tok, latent.stage_for(cfg)))
      self._read = 0
      saved = _read_json(state_path)
      if saved is not None and saved.get("steps") == len(self.stats):
        self._it.set_state(saved["state"])
        self._read = len(self.stats)
    rows = list(self.stats)
    bar = tqdm(total=steps, desc="stream FLOP stats", unit="step", disable=not self.progress)
    while self._read < steps:
      batch = next(self._it)
      self._read += 1
      if self._read > len(rows):
        rows.append(flops.batch_stats(batch))
      bar.update()
    bar.close()
    self.stats = np.stack(rows)
    os.makedirs(os.path.dirname(self.path), exist_ok=True)
    tmp = f"{self.path}.tmp-{os.getpid()}.npy"
    np.save(tmp, self.stats)
    os.replace(tmp, self.path)
    shards.atomic_write_json(state_path, {"steps": len(self.stats), "state": self._it.get_state()})


def solve_steps(coef: Sequence[float], stats: StreamStats, budget: float, tolerance: float):
  """(steps, exact FLOPs) whose FLOPs are nearest `budget`; SweepError beyond `tolerance`."""
  coef = np.asarray(coef, np.float64)
  probe = stats.first(16) @ coef
  need = int(budget / probe.mean() * 1.1) + 16
  while True:
    cum = np.cumsum(stats.first(need) @ coef)
    if cum[-1] >= budget or need > 10_000_000:
      break
    need = int(need * 1.5)
  steps = int(np.argmin(np.abs(cum - budget))) + 1
  spent = float(cum[steps - 1])
  if abs(spent - budget) > tolerance * budget:
    raise SweepError(
      f"budget {budget:.3g} FLOPs: the nearest step count ({steps}) spends {spent:.3g}, "
      f"{abs(spent / budget - 1):.1%} off (tolerance {tolerance:.0%}); raise the budget or "
      "shrink train.global_batch_size"
    )
  return steps, spent


# ------------------------------------------------------------------------------
# The manifest.
# ------------------------------------------------------------------------------


def resolve(sweep: Sweep, sweep_file: str, root: str, extra: Mapping[str, Any] | None = None):
  """The manifest: every point's overrides (steps solved), parameters, tokens and FLOPs."""
  extra = dict(extra or {})
  base = point_config(sweep.base, extra)
  tok = input_pipeline.load_tokenizer(base)
  streams: dict[str, StreamStats] = {}
  entries = []
  for index, p in enumerate(sweep.points):
    overrides = {**extra, **dict(p.overrides)}
    cfg = point_config(sweep.base, overrides)
    try:
      validation.validate(cfg, for_training=False)
      facts = model_facts(cfg, tok.vocab_size)
    except (configs.ConfigError, ValueError) as e:
      raise SweepError(f"point {p.name}: {e}") from None
    key = stream_key(cfg)
    stats = streams.setdefault(key, StreamStats(cfg, root))
    if p.budget > 0:
      steps, spent = solve_steps(facts["flops_per_stat"], stats, p.budget, sweep.tolerance)
      overrides["train.num_steps"] = steps
      overrides["optim.warmup_steps"] = max(1, round(sweep.warmup_fraction * steps))
    else:
      steps = int(cfg.train.num_steps)
      spent = float(np.sum(stats.first(steps) @ np.asarray(facts["flops_per_stat"])))
    if int(cfg.heldout.rows) > 0:
      overrides["heldout.every"] = max(1, steps // max(1, sweep.evals))
    cfg = point_config(sweep.base, overrides)
    configs.require(
      int(cfg.heldout.rows) > 0,
      f"point {p.name}: config.heldout.rows is 0; a sweep fits the held-out loss",
    )
    tokens = stats.first(steps).sum(axis=0)
    n_video = facts["params"]["per_video_token"]
    entries.append(
      {
        "index": index,
        "name": p.name,
        "role": p.role,
        "budget": p.budget,
        "steps": steps,
        "flops": spent,
        "budget_error": (spent / p.budget - 1.0) if p.budget else 0.0,
        "flops_6nd": 6.0 * n_video * float(tokens[0]),
        "tokens": {"video": float(tokens[0]), "caption": float(tokens[1])},
        **facts,
        "stream": key,
        "overrides": overrides,
        "args": override_args(overrides),
      }
    )
  return {
    "sweep_file": os.path.abspath(sweep_file),
    "root": os.path.abspath(root),
    "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    "expected_mfu": sweep.expected_mfu,
    "overhead_s": sweep.overhead_s,
    "points": entries,
  }


def write_manifest(root: str, manifest: Mapping[str, Any]) -> None:
  os.makedirs(root, exist_ok=True)
  shards.atomic_write_json(os.path.join(root, MANIFEST), manifest)


def read_manifest(root: str) -> dict[str, Any]:
  path = os.path.join(root, MANIFEST)
  if not os.path.isfile(path):
    raise SweepError(f"--root={root}: no {MANIFEST}; run the sweep (or --dry_run) first")
  with open(path) as f:
    return json.load(f)


def estimate_seconds(entry: Mapping[str, Any], flops_per_s: float, overhead_s: float) -> float:
  return overhead_s + entry["flops"] / flops_per_s


# ------------------------------------------------------------------------------
# Running points and collecting their results.
# ------------------------------------------------------------------------------


def point_dir(root: str, entry: Mapping[str, Any]) -> str:
  return os.path.join(root, entry["name"])


def status(root: str, entry: Mapping[str, Any]) -> str:
  """ "done" (a result for these exact overrides), "failed", or "pending"."""
  d = point_dir(root, entry)
  result = _read_json(os.path.join(d, RESULT))
  if result is not None and result.get("overrides") == entry["overrides"]:
    return "done"
  return "failed" if os.path.exists(os.path.join(d, FAILURE)) else "pending"


def _read_json(path: str) -> dict | None:
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def train_command(manifest: Mapping[str, Any], entry: Mapping[str, Any], python: str) -> list[str]:
  return [
    python,
    "-m",
    "sora_jax.train",
    f"--config={manifest['sweep_file']}",
    f"--workdir={point_dir(manifest['root'], entry)}",
    *entry["args"],
  ]


def run_point(
  manifest: Mapping[str, Any], entry: Mapping[str, Any], python: str = sys.executable
) -> dict[str, Any]:
  """Trains one point in a child process (a crash costs this point only) and writes its
  result.json, or failure.json with the log's tail; returns either."""
  d = point_dir(manifest["root"], entry)
  os.makedirs(d, exist_ok=True)
  for stale in (FAILURE, RESULT):
    if os.path.exists(os.path.join(d, stale)):
      os.remove(os.path.join(d, stale))
  cmd = train_command(manifest, entry, python)
  t0 = time.time()
  with open(os.path.join(d, "train.log"), "ab") as log:
    rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=False).returncode
  wall = time.time() - t0
  if rc != 0:
    failure = {
      "name": entry["name"],
      "returncode": rc,
      "wall_s": wall,
      "command": cmd,
      "log_tail": _tail(os.path.join(d, "train.log")),
    }
    shards.atomic_write_json(os.path.join(d, FAILURE), failure)
    return failure
  try:
    result = collect(manifest, entry, wall)
  except (OSError, ValueError, KeyError) as e:
    failure = {"name": entry["name"], "returncode": 0, "wall_s": wall, "error": str(e)}
    shards.atomic_write_json(os.path.join(d, FAILURE), failure)
    return failure
  shards.atomic_write_json(os.path.join(d, RESULT), result)
  return result


def _tail(path: str, lines: int = 15) -> list[str]:
  try:
    with open(path, errors="replace") as f:
      return [line.rstrip("\n") for line in f.readlines()[-lines:]]
  except OSError:
    return []


def collect(manifest: Mapping[str, Any], entry: Mapping[str, Any], wall_s: float) -> dict:
  """A finished point's result.json: its manifest entry, the resolved config, wall time, and
  the held-out loss curve with the exact FLOPs and tokens spent at each evaluation."""
  d = point_dir(manifest["root"], entry)
  with open(os.path.join(d, "config.json")) as f:
    config = json.load(f)
  records = metrics.read_jsonl(os.path.join(d, "tensorboard"))
  stats = np.load(os.path.join(manifest["root"], f"stream_stats_{entry['stream']}.npy"))
  coef = np.asarray(entry["flops_per_stat"])
  curve = []
  for r in records:
    if "heldout_loss" in r:
      step = int(r["step"])
      curve.append(
        {
          "step": step,
          "flops": float(np.sum(stats[:step] @ coef)),
          "tokens": float(stats[:step, 0].sum()),
          "heldout_loss": r["heldout_loss"],
          "by_t": {
            k[len("heldout_loss_t") :]: v for k, v in r.items() if k.startswith("heldout_loss_t")
          },
        }
      )
  if not curve or curve[-1]["step"] != entry["steps"]:
    raise ValueError(f"{d}: no held-out loss at the last step {entry['steps']}")
  train = [r for r in records if "loss" in r]
  return {
    **{k: v for k, v in entry.items() if k != "args"},
    "config": config,
    "wall_s": wall_s,
    "heldout_curve": curve,
    "heldout_loss": curve[-1]["heldout_loss"],
    "train_loss": train[-1]["loss"] if train else None,
    "mfu": train[-1].get("mfu") if train else None,
  }
