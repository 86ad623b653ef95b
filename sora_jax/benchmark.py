r"""Training throughput of a config: steps/s, tokens/s, TFLOP/s, MFU, memory, packed vs padded.

  python -m sora_jax.benchmark --config=experiments/demo.py [--steps=10] [--config.field=value]

Times the real jitted train step on batches from the real input pipeline,
prefetched to the devices so only the step is timed. Then it runs the same
examples padded to bucket lengths instead (one example per row, the tokens per
batch kept equal by raising the rows per batch for shorter buckets, one
compiled step per bucket, compile time excluded; --padded_buckets=examples sizes the
buckets to the longest example instead of the row) and prints the ratio of useful
tokens per second, packed over padded. The two layouts take turns for --rounds
rounds (each round runs every timed batch once, the two layouts taking turns step
by step) and the medians are reported with each round's ratio, so the machine's
drift falls on both alike. FLOPs count real tokens only
(sora_jax.core.flops), so both layouts are credited the same useful work.

Without --config.data.data_dir a small built-in synthetic dataset is generated
in a temporary directory first.

It also reports, for the packed batches, how much self-attention work each
backend spends on cross-segment and padding pairs (attention_waste_*), and with
--sampler_steps=N the time of a guided sampling step with the conditional and
unconditional passes batched against run as two calls.

Attention backends on the same data (one full run each, ratios to the first):

  python -m sora_jax.benchmark --config=experiments/long_rows_cpu.py \
      --attention_backends=xla,segments,block_sparse

The input pipeline alone (packing efficiency and throughput, as
`data_pipelines.benchmark` measures it, for pixel or latent configs):

  python -m sora_jax.benchmark --config=experiments/demo_latent.py --input_pipeline \
      --config.data.data_dir=CACHE   # cached latents (sora_jax.cache_latents)

Parallelism layouts:

  python -m sora_jax.benchmark --config=experiments/dit_b.py \
      --layouts='fsdp=8;tensor=2,fsdp=4;context=8;data=2,context=4'

times the same packed batches once per mesh layout instead (the padded
comparison is skipped) and prints one table row per layout: devices, steps/s,
tokens/s, TFLOP/s, MFU and the compiled memory per device. Layouts are
separated by ";" (quote them in a shell), axes within one by ","; axes not
named have size 1, and one size may be -1 (the rest of the devices). A layout
with fewer devices than the host has runs on the first ones. When a layout has
context > 1, a 1-device mesh runs too, and every row reports its tokens/s over
the 1-device figure ("x1dev") and that ratio per device ("eff"): the cost of
context parallelism on the same data.
"""

from __future__ import annotations

import json
import math
import os
import re
import resource
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence

import jax
import numpy as np
from absl import flags, logging
from ml_collections import config_flags

from data_pipelines import pipeline, synthetic, throughput, tokenizer
from sora_jax.core import cli, configs, distributed, flops, sharding
from sora_jax.diffusion import latent
from sora_jax.models import (
  attention,
  attention_block_sparse,
  attention_pallas_gpu,
  attention_segments,
  attention_splash,
  dit,
)
from sora_jax.sampling import sampler
from sora_jax.training import input_pipeline, validation
from sora_jax.training.trainer import Trainer

FLAGS = flags.FLAGS


def define_flags() -> None:
  config_flags.DEFINE_config_file("config", None, "Experiment config file.")
  distributed.define_flags()
  flags.DEFINE_integer("steps", 10, "Timed steps per layout.")
  flags.DEFINE_integer("warmup", 2, "Untimed steps first (compilation).")
  flags.DEFINE_bool("padded", True, "Also time the padded-bucket layout.")
  flags.DEFINE_integer(
    "rounds",
    3,
    "Timed rounds: packed and padded take turns each round (every timed batch once), and "
    "the medians and per-round ratios are reported, so drift falls on both alike.",
  )
  flags.DEFINE_enum(
    "padded_buckets",
    "rows",
    BUCKETS,
    "The padded layout's buckets: 'rows', seq_len / 2^k; 'examples', halving from the power "
    "of two that holds max_tokens_per_example (a bucketing system sized to its data).",
  )
  flags.DEFINE_integer(
    "sampler_steps",
    0,
    "Also time this many sampling steps (guided, Euler) on the packed rows, with the "
    "conditional and unconditional passes batched into one call and as two calls.",
  )
  flags.DEFINE_list(
    "attention_backends",
    [],
    "Run the whole benchmark once per attention backend (e.g. xla,segments) on the same "
    "batches and print the packed tokens/s ratios.",
  )
  flags.DEFINE_integer("synthetic_examples", 2000, "Size of the generated dataset.")
  flags.DEFINE_string("output_json", None, "Also write the results here.")
  flags.DEFINE_bool(
    "input_pipeline",
    False,
    "Measure the input pipeline instead (packing efficiency and throughput, packed against "
    "bucketed: data_pipelines.benchmark's measurements, with the geometry of any latent stage).",
  )
  flags.DEFINE_integer("num_batches", 50, "--input_pipeline: batches timed per worker count.")
  flags.DEFINE_list("workers", ["0", "2"], "--input_pipeline: worker process counts to time.")
  flags.DEFINE_string(
    "layouts",
    None,
    "Mesh layouts to compare on the same batches, e.g. 'fsdp=8;tensor=2,fsdp=4;context=8': "
    "';' between layouts, ',' between axes, unnamed axes 1, one size may be -1 (the rest).",
  )


def ensure_data(cfg, num_examples: int = 2000) -> None:
  """Fills in a generated synthetic dataset when the config names none."""
  if cfg.data.data_dir:
    return
  tmp = tempfile.mkdtemp(prefix="sora_jax_bench_")
  logging.info("no data_dir: generating %d synthetic examples in %s", num_examples, tmp)
  synthetic.generate(synthetic.Options(output_dir=tmp, num_examples=num_examples, seed=0), False)
  tokenizer.train(tmp, vocab_size=128)
  cfg.data.data_dir = tmp


class StepTimer:
  """Times a trainer's step on pre-placed batches, repeatably: `warm` runs the untimed
  batches (compilation), each `time()` runs every timed batch once from the current state
  and returns the seconds. Several timers take turns step by step so that a machine's
  drift falls on every layout alike (`interleaved`)."""

  def __init__(self, trainer: Trainer, timed: list[dict], step=None):
    self.trainer = trainer
    self.step = step or trainer.step
    self.timed = timed
    self.placed = [sharding.global_batch(b, trainer.mesh, trainer.rules) for b in timed]
    self.state, self.ema = trainer.init(0)
    self.useful = sum(trainer.step_flops(b) for b in timed)
    self.real = int(sum((b["segment_ids"] > 0).sum() for b in timed))

  def warm(self, batches: list[dict]) -> None:
    for b in batches:
      placed = sharding.global_batch(b, self.trainer.mesh, self.trainer.rules)
      self.state, self.ema, _ = self.step(self.state, self.ema, placed)
    jax.block_until_ready(self.state)

  def time(self) -> float:
    """Seconds to run every timed batch once."""
    return sum(self.time_one(i) for i in range(len(self.placed)))

  def time_one(self, i: int) -> float:
    """Seconds of one step on timed batch i, from the current state."""
    t0 = time.perf_counter()
    self.state, self.ema, _ = self.step(self.state, self.ema, self.placed[i])
    jax.block_until_ready(self.state)
    return time.perf_counter() - t0


def interleaved(timers: Sequence[StepTimer], rounds: int) -> list[list[float]]:
  """Seconds per round for each timer (every timed batch once per round).

  Within a round the timers take turns step by step (timer 0's batch i, timer 1's batch
  i, ...), so a machine's drift, even within a round, falls on every layout alike.
  """
  out = [[] for _ in timers]
  longest = max(len(t.placed) for t in timers)
  for _ in range(rounds):
    spent = [0.0] * len(timers)
    for i in range(longest):
      for j, timer in enumerate(timers):
        if i < len(timer.placed):
          spent[j] += timer.time_one(i)
    for times, s in zip(out, spent):
      times.append(s)
  return out


def time_steps(
  trainer: Trainer, batches: list[dict], warmup: int, step=None
) -> tuple[float, float, int]:
  """(seconds, useful FLOPs, real tokens) of the steps after `warmup`, on pre-placed batches.

  `step` defaults to `trainer.step`; an ahead-of-time compiled step also works.
  """
  timer = StepTimer(trainer, batches[warmup:], step)
  timer.warm(batches[:warmup])
  return timer.time(), timer.useful, timer.real


BUCKETS = ("rows", "examples")


def bucket_lengths(opts: pipeline.Options, fit: str = "rows") -> list[int]:
  """The padded layout's 4 bucket lengths, halving from the top one.

  "rows": from the packed row length (seq_len / 2^k, as bucketing systems use);
  "examples": from the power of two that holds the longest example the data allows
  (max_tokens_per_example), a bucketing system sized to its data: where rows are far
  longer than examples (long rows of short examples) the "rows" buckets pad every
  example to an eighth of a row, and this is the fair baseline.
  """
  if fit not in BUCKETS:
    raise ValueError(f"--padded_buckets={fit}: allowed {', '.join(BUCKETS)}")
  top = opts.seq_len
  if fit == "examples":
    top = min(top, 1 << max(0, opts.max_tokens_per_example - 1).bit_length())
  return pipeline.bucket_lengths(top)


def padded_batches(
  examples: list[dict], opts: pipeline.Options, rows: int, data_shards: int, fit: str = "rows"
):
  """The examples, bucketed and padded, with rows * seq_len padded tokens per batch.

  A bucket's last batch is filled by cycling through its examples again, as a
  bucketing trainer's steady state has full batches (short buckets hold many rows:
  1,024 rows of 16 tokens for a 16k-token packed row).
  """
  out = []
  buckets = bucket_lengths(opts, fit)
  for bucket in buckets:
    per_batch = max(data_shards, (rows * opts.seq_len // bucket) // data_shards * data_shards)
    group = [e for e in examples if len(e["tokens"]) <= bucket]
    group = [e for e in group if bucket == buckets[0] or len(e["tokens"]) > bucket // 2]
    if not group:
      continue
    filled = -(-len(group) // per_batch) * per_batch
    group = [group[i % len(group)] for i in range(filled)]
    out += list(pipeline.bucketed_batches(iter(group), opts, per_batch, [bucket]))
  if not out:
    raise ValueError(f"no example fits the padded buckets {buckets}")
  return out


def compile_step(trainer: Trainer, batch: dict):
  """The step compiled ahead of time for batches shaped like `batch`."""
  spec = {
    k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=trainer.batch_shardings[k])
    for k, v in batch.items()
  }
  return trainer.lower(spec).compile()


def memory_report(trainer: Trainer, batch: dict, compiled=None) -> dict[str, float]:
  compiled = compiled or compile_step(trainer, batch)
  out = {"host_peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
  analysis = compiled.memory_analysis()
  if analysis is not None:
    per_device = (
      analysis.argument_size_in_bytes + analysis.output_size_in_bytes + analysis.temp_size_in_bytes
    )
    out["compiled_bytes_per_device_gb"] = per_device / 2**30
  stats = jax.devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    out["device_peak_gb"] = stats["peak_bytes_in_use"] / 2**30
  return out


def run(
  cfg,
  steps: int,
  warmup: int,
  padded: bool,
  synthetic_examples: int = 2000,
  layouts: Sequence[Mapping[str, int]] | None = None,
  sampler_steps: int = 0,
  rounds: int = 3,
  padded_buckets: str = "rows",
) -> dict:
  """The benchmark on the config's mesh, or once per mesh layout (see the module docstring)."""
  if layouts:
    return run_layouts(cfg, layouts, steps, warmup, synthetic_examples)
  ensure_data(cfg, synthetic_examples)
  validation.validate(cfg)
  mesh = sharding.make_mesh(cfg.mesh)
  validation.check_batch_layout(cfg, mesh, jax.process_count())
  tok = tokenizer.load(cfg.data.data_dir)
  trainer = Trainer(cfg, mesh, tok.vocab_size)
  peak, peak_source = flops.device_peak_flops(dtype=trainer.dit_cfg.compute_dtype)
  total_peak = peak * jax.device_count()

  # Packed: batches straight from the training pipeline.
  dataset = input_pipeline.make_dataset(cfg, tok, latent.stage_for(cfg), 0, 1)
  it = iter(dataset)
  batches = [next(it) for _ in range(warmup + steps)]
  packed = StepTimer(trainer, batches[warmup:])
  packed.warm(batches[:warmup])
  timers = [packed]
  if padded:
    padded_timer, padded_extra = padded_layout(
      cfg, mesh, tok, trainer, batches[warmup:], padded_buckets
    )
    timers.append(padded_timer)
  seconds = interleaved(timers, rounds)
  dt = float(np.median(seconds[0]))
  useful, real = packed.useful, packed.real
  rows = cfg.train.global_batch_size
  result = {
    "devices": jax.device_count(),
    "device_kind": jax.devices()[0].device_kind,
    "params": trainer.counts["total"],
    "rounds": rounds,
    "steps_per_s": steps / dt,
    "tokens_per_s": real / dt,
    "real_token_fraction": real / (steps * rows * cfg.data.seq_len),
    "tflops_per_s": useful / dt / 1e12,
    "mfu": useful / dt / total_peak,
    "peak_tflops_per_device": peak / 1e12,
    "peak_source": peak_source,
  }
  result.update(memory_report(trainer, batches[0]))
  length = cfg.data.seq_len
  result["attention_backend"] = attention.chosen_backend(
    cfg.model.attention, length, length, dit.call_packings(trainer.dit_cfg.packing)[0]
  )
  result.update(attention_waste(batches[warmup:], trainer.dit_cfg.packing))

  if padded:
    pdt = np.asarray(seconds[1])
    ratios = (real / np.asarray(seconds[0])) / (padded_timer.real / pdt)
    result.update(
      padded_extra,
      padded_tokens_per_s=padded_timer.real / float(np.median(pdt)),
      padded_real_token_fraction=padded_timer.real
      / sum(b["segment_ids"].size for b in padded_timer.timed),
      packed_over_padded=float(np.median(ratios)),
      packed_over_padded_rounds=[round(float(r), 4) for r in ratios],
    )
  if sampler_steps:
    result.update(time_sampler(trainer, batches[0], sampler_steps))
  return result


def padded_layout(cfg, mesh, tok, trainer: Trainer, timed: list[dict], fit: str = "rows"):
  """A timer of the examples `timed` packed, one per row in padded buckets, compiled."""
  opts = pipeline.Options.from_config(cfg.data)
  tokenize = pipeline.Tokenize(opts, latent.geometry_for(cfg), tok)
  source, _ = pipeline.open_source(cfg.data.source, cfg.data.data_dir, cfg.data.split)
  rng = np.random.default_rng(0)
  n_examples = int(sum(b["segment_ids"].max(axis=1).sum() for b in timed))
  examples = [tokenize(source[i % len(source)], rng) for i in range(n_examples)]
  shards_ = int(np.prod([mesh.shape[a] for a in sharding.batch_axes(trainer.rules)]))
  rows = cfg.train.global_batch_size
  pbatches = padded_batches([e for e in examples if e is not None], opts, rows, shards_, fit)
  # The same model told the truth about these rows (one example each), so a backend that
  # skips other examples' keys has none to skip: padded rows need no sparse attention.
  one_per_row = attention.Packing(cfg.data.seq_len, 1, kv_max_len=cfg.data.max_text_len)
  ptrainer = Trainer(cfg, mesh, tok.vocab_size, packing=one_per_row)
  length = cfg.data.seq_len
  extra = {
    "padded_buckets": bucket_lengths(opts, fit),
    "padded_attention_backend": attention.chosen_backend(
      cfg.model.attention, length, length, dit.call_packings(one_per_row)[0]
    ),
  }
  timer = StepTimer(ptrainer, pbatches)
  timer.warm(list({b["tokens"].shape: b for b in pbatches}.values()))  # Every bucket's shape.
  return timer, extra


def attention_waste(batches: Sequence[dict], packing) -> dict[str, float]:
  """Self-attention work on the cross-segment and padding pairs of packed rows, per backend.

  useful: same-segment (query, key) pairs. The dense backends (xla, cudnn, and the
  pallas_gpu and splash_tpu kernels, which mask by segment ids inside every block
  but visit all blocks) compute the whole padded row; block_sparse computes the
  block pairs whose segments meet (attention_block_sparse.waste); segments computes
  one max_len slot per example the packing allows (attention_segments.waste). With
  the packing's caption cap, the same for the cross-attention to the captions.
  """
  seg = np.concatenate([np.asarray(b["segment_ids"]) for b in batches])
  rows, length = seg.shape
  w = attention_block_sparse.waste(seg, attention_block_sparse.choose_block(packing), packing)
  useful = w["useful_pairs"]
  out = {"attention_useful_fraction": useful / (rows * length * length)}
  for name, padded_len in (
    ("xla", length),
    ("pallas_gpu", attention_pallas_gpu.padded_length(length)),
    ("splash_tpu", attention_splash.blocking(length)[1]),
  ):
    out[f"attention_waste_{name}"] = 1.0 - useful / (rows * padded_len * padded_len)
  out[f"attention_waste_block_sparse@{w['block']}"] = w["waste"]
  out["attention_block_sparse_bound_fraction"] = w["bound_fraction_of_dense"]
  if packing is not None:
    slots = attention_segments.waste(seg, dit.call_packings(packing)[0])
    out["attention_waste_segments"] = slots["waste"]
    out["attention_segments_fraction_of_dense"] = slots["computed_fraction_of_dense"]
    out["attention_segments_broken_rows"] = slots["broken_rows"]
  cross = dit.call_packings(packing)[1]
  if cross is not None:  # Cross-attention to the packed captions: dense, or in slots.
    text = np.concatenate([np.asarray(b["text_segment_ids"]) for b in batches])
    slots = attention_segments.waste(seg, cross, text)
    out["cross_attention_waste_xla"] = 1.0 - slots["useful_fraction_of_dense"]
    out["cross_attention_waste_segments"] = slots["waste"]
    out["attention_segments_broken_rows"] += slots["broken_rows"]
  return out


def time_sampler(trainer: Trainer, batch: dict, steps: int, cfg_scale: float = 4.5) -> dict:
  """Seconds per guided sampling step on `batch`'s rows, guidance batched and unbatched."""
  params = trainer.model.init(0)
  num_segments = pipeline.Options.from_config(trainer.cfg.data).num_segments
  rows = {k: np.asarray(batch[k]) for k in sampler.ROW_KEYS if k in batch}
  out = {}
  for batched in (True, False):
    sample = sampler.Sampler(
      trainer.model, params, trainer.flow_cfg, num_segments, batch_guidance=batched
    )
    kw = dict(cfg_scale=cfg_scale, method="euler", progress=False)
    put = sampler.batch_put(trainer.mesh, trainer.rules)
    with jax.set_mesh(trainer.mesh), sharding.axis_rules(trainer.rules):
      sample(rows, steps=1, put=put, **kw)  # Compile.
      t0 = time.perf_counter()
      sample(rows, steps=steps, put=put, **kw)
      dt = (time.perf_counter() - t0) / steps
    out["sample_step_s_" + ("batched_guidance" if batched else "two_passes")] = dt
  out["sample_batched_speedup"] = (
    out["sample_step_s_two_passes"] / out["sample_step_s_batched_guidance"]
  )
  return out


def compare_backends(cfg, backends: Sequence[str], **kw) -> dict:
  """`run` once per attention backend, on the same data; packed tokens/s relative to the first."""
  out = {}
  for name in backends:
    c = cfg.copy_and_resolve_references()
    c.model.attention = name
    out[name] = run(c, **kw)
    cfg.data.data_dir = c.data.data_dir  # A generated dataset is made once.
  first = out[backends[0]]["tokens_per_s"]
  for name in backends:
    out[name]["tokens_per_s_over_" + backends[0]] = out[name]["tokens_per_s"] / first
  return out


def run_input_pipeline(cfg, num_batches: int, workers: Sequence[str], synthetic_examples: int):
  """data_pipelines.throughput's measurements with the config's stage geometry (pixel or latent)."""
  try:
    counts = [int(w) for w in workers]
  except ValueError:
    raise ValueError(f"--workers={','.join(workers)}: expected integers") from None
  if num_batches < 1:
    raise ValueError(f"--num_batches={num_batches}: must be at least 1")
  ensure_data(cfg, synthetic_examples)
  validation.validate(cfg)
  return throughput.measure(cfg, latent.geometry_for(cfg), cfg.data.data_dir, num_batches, counts)


# ------------------------------------------------------------------------------
# Parallelism layouts.
# ------------------------------------------------------------------------------


def parse_layouts(text: str) -> list[dict[str, int]]:
  """'fsdp=8;tensor=2,fsdp=4' -> [{"fsdp": 8}, {"tensor": 2, "fsdp": 4}]."""
  out = []
  for part in text.split(";"):
    if not part.strip():
      continue
    layout = {}
    for item in part.split(","):
      axis, _, size = item.strip().partition("=")
      if axis not in sharding.MESH_AXES or not re.fullmatch(r"-1|[1-9]\d*", size.strip()):
        raise ValueError(
          f"--layouts: {item.strip()!r} in {part.strip()!r} is not AXIS=SIZE with AXIS one of "
          f"{', '.join(sharding.MESH_AXES)} and SIZE a positive int or -1"
        )
      if axis in layout:
        raise ValueError(f"--layouts: {part.strip()!r} names {axis} twice")
      layout[axis] = int(size)
    if list(layout.values()).count(-1) > 1:
      raise ValueError(f"--layouts: {part.strip()!r} has more than one -1")
    out.append(layout)
  if not out:
    raise ValueError(f"--layouts={text!r}: no layout given, e.g. 'fsdp=8;tensor=2,fsdp=4'")
  return out


def with_baseline(layouts: Sequence[Mapping[str, int]]) -> list[dict[str, int]]:
  """The layouts, plus a 1-device mesh when one has context > 1 and none is 1 device."""
  out = [dict(x) for x in layouts]
  if any(x.get("context", 1) > 1 for x in out) and not any(math.prod(x.values()) == 1 for x in out):
    out.append({})
  return out


def layout_name(layout: Mapping[str, int]) -> str:
  return ",".join(f"{a}={n}" for a, n in layout.items() if n != 1) or "1 device"


def layout_mesh(layout: Mapping[str, int]) -> jax.sharding.Mesh:
  """The layout's mesh over all devices (with a -1) or over the first ones it needs."""
  devices = jax.devices()
  n = len(devices) if -1 in layout.values() else math.prod(layout.values())
  if n > len(devices) or (n < len(devices) and jax.process_count() > 1):
    raise ValueError(
      f"--layouts: {layout_name(layout)} needs {n} devices; there are {len(devices)}"
      + (" over several processes, so a layout must use all of them" if n < len(devices) else "")
    )
  return sharding.make_mesh(layout, devices[:n])


def run_layouts(
  cfg,
  layouts: Sequence[Mapping[str, int]],
  steps: int,
  warmup: int,
  synthetic_examples: int = 2000,
) -> dict:
  """Packed throughput per mesh layout on the same batches; see the module docstring."""
  ensure_data(cfg, synthetic_examples)
  validation.validate(cfg)
  layouts = with_baseline(layouts)
  meshes = []
  for layout in layouts:  # Every layout is checked before anything runs.
    mesh = layout_mesh(layout)
    try:
      validation.check_batch_layout(cfg, mesh, jax.process_count())
    except configs.ConfigError as e:
      raise configs.ConfigError(f"--layouts: {layout_name(layout)}: {e}") from None
    meshes.append(mesh)

  tok = tokenizer.load(cfg.data.data_dir)
  dataset = input_pipeline.make_dataset(cfg, tok, latent.stage_for(cfg), 0, 1)
  it = iter(dataset)
  batches = [next(it) for _ in range(warmup + steps)]
  dtype = dit.DTYPES[cfg.model.dtype]
  peak, peak_source = flops.device_peak_flops(dtype=dtype)
  rows = []
  for layout, mesh in zip(layouts, meshes):
    logging.info("layout %s: mesh %s", layout_name(layout), dict(mesh.shape))
    trainer = Trainer(cfg, mesh, tok.vocab_size)
    compiled = compile_step(trainer, batches[0])
    dt, useful, real = time_steps(trainer, batches, warmup, step=compiled)
    memory = memory_report(trainer, batches[0], compiled)
    rows.append(
      {
        "layout": layout_name(layout),
        "mesh": {k: int(v) for k, v in mesh.shape.items()},
        "devices": mesh.size,
        "steps_per_s": steps / dt,
        "tokens_per_s": real / dt,
        "tflops_per_s": useful / dt / 1e12,
        "mfu": useful / dt / (peak * mesh.size),
        "compiled_gb_per_device": memory.get("compiled_bytes_per_device_gb"),
      }
    )
  base = next((r for r in rows if r["devices"] == 1), None)
  for r in rows:
    if base is not None:
      r["x1dev"] = r["tokens_per_s"] / base["tokens_per_s"]
      r["eff"] = r["x1dev"] / r["devices"]
  return {
    "devices": jax.device_count(),
    "device_kind": jax.devices()[0].device_kind,
    "params": trainer.counts["total"],
    "rows_per_step": cfg.train.global_batch_size,
    "seq_len": cfg.data.seq_len,
    "steps_per_layout": steps,
    "peak_tflops_per_device": peak / 1e12,
    "peak_source": peak_source,
    "layouts": rows,
  }


def format_layouts(rows: Sequence[Mapping]) -> str:
  """The layouts table: one line per layout."""
  cols = [
    ("layout", "layout", "{}"),
    ("devices", "dev", "{}"),
    ("steps_per_s", "steps/s", "{:.3g}"),
    ("tokens_per_s", "tokens/s", "{:,.0f}"),
    ("tflops_per_s", "TFLOP/s", "{:.3g}"),
    ("mfu", "MFU", "{:.1%}"),
    ("compiled_gb_per_device", "GiB/dev", "{:.3f}"),
    ("x1dev", "x1dev", "{:.2f}"),
    ("eff", "eff", "{:.0%}"),
  ]
  cols = [c for c in cols if any(r.get(c[0]) is not None for r in rows)]
  cells = [[h for _, h, _ in cols]] + [
    ["-" if r.get(k) is None else fmt.format(r[k]) for k, _, fmt in cols] for r in rows
  ]
  widths = [max(len(line[i]) for line in cells) for i in range(len(cols))]
  return "\n".join(
    "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths)))
    for line in cells
  )


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments {argv[1:]}")
  if FLAGS.config is None:
    sys.exit("error: --config is required, e.g. --config=experiments/demo.py")
  cli.quiet()
  distributed.initialize_from_flags()
  if FLAGS.output_json:  # The only output folder: the log goes beside the results.
    log_dir = os.path.join(os.path.dirname(FLAGS.output_json), "logs")
    cli.say(f"sora_jax.benchmark: logs in {cli.log_to_file(log_dir, 'benchmark')}")
  try:
    layouts = parse_layouts(FLAGS.layouts) if FLAGS.layouts is not None else None
    if FLAGS.input_pipeline:
      throughput.report(
        run_input_pipeline(
          FLAGS.config, FLAGS.num_batches, FLAGS.workers, FLAGS.synthetic_examples
        ),
        FLAGS.output_json,
      )
      return
    kw = dict(
      steps=FLAGS.steps,
      warmup=FLAGS.warmup,
      padded=FLAGS.padded,
      synthetic_examples=FLAGS.synthetic_examples,
      sampler_steps=FLAGS.sampler_steps,
      rounds=FLAGS.rounds,
      padded_buckets=FLAGS.padded_buckets,
    )
    if FLAGS.attention_backends:
      for name in FLAGS.attention_backends:
        attention.resolve_backend(name)  # An unknown name fails before anything runs.
      results = compare_backends(FLAGS.config, FLAGS.attention_backends, **kw)
      for name, result in results.items():
        print(f"--- attention backend {name}")
        throughput.report(result)
      if FLAGS.output_json:
        with open(FLAGS.output_json, "w") as f:
          json.dump(results, f, indent=2)
      return
    result = run(FLAGS.config, layouts=layouts, **kw)
  except (configs.ConfigError, ValueError) as e:
    sys.exit(f"error: {e}")
  if layouts:
    throughput.report({k: v for k, v in result.items() if k != "layouts"})
    print(format_layouts(result["layouts"]))
    if FLAGS.output_json:
      with open(FLAGS.output_json, "w") as f:
        json.dump(result, f, indent=2)
  else:
    throughput.report(result, FLAGS.output_json)


if __name__ == "__main__":
  define_flags()
  cli.run(main)
