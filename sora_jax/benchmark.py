r"""Training throughput of a config: steps/s, tokens/s, TFLOP/s, MFU, memory, packed vs padded.

  python -m sora_jax.benchmark --config=experiments/demo.py [--steps=10] [--config.field=value]

Times the real jitted train step on batches from the real input pipeline,
prefetched to the devices so only the step is timed. Then it runs the same
examples padded to bucket lengths instead (one example per row, the tokens per
batch kept equal by raising the rows per batch for shorter buckets, one
compiled step per bucket, compile time excluded) and prints the ratio of useful
tokens per second, packed over padded. FLOPs count real tokens only
(sora_jax.flops), so both layouts are credited the same useful work.

Without --config.data.data_dir a small built-in synthetic dataset is generated
in a temporary directory first.
"""

from __future__ import annotations

import resource
import sys
import tempfile
import time
from collections.abc import Sequence

import jax
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from data_pipelines import benchmark as data_benchmark
from data_pipelines import pipeline, synthetic, tokenizer
from sora_jax import config_lib, distributed, factory, flops, input_pipeline, sharding
from sora_jax.trainer import Trainer

FLAGS = flags.FLAGS


def define_flags() -> None:
  config_flags.DEFINE_config_file("config", None, "Experiment config file.")
  distributed.define_flags()
  flags.DEFINE_integer("steps", 10, "Timed steps per layout.")
  flags.DEFINE_integer("warmup", 2, "Untimed steps first (compilation).")
  flags.DEFINE_bool("padded", True, "Also time the padded-bucket layout.")
  flags.DEFINE_integer("synthetic_examples", 2000, "Size of the generated dataset.")
  flags.DEFINE_string("output_json", None, "Also write the results here.")


def ensure_data(cfg, num_examples: int = 2000) -> None:
  """Fills in a generated synthetic dataset when the config names none."""
  if cfg.data.data_dir:
    return
  tmp = tempfile.mkdtemp(prefix="sora_jax_bench_")
  logging.info("no data_dir: generating %d synthetic examples in %s", num_examples, tmp)
  synthetic.generate(synthetic.Options(output_dir=tmp, num_examples=num_examples, seed=0), False)
  tokenizer.train(tmp, vocab_size=128)
  cfg.data.data_dir = tmp


def time_steps(trainer: Trainer, batches: list[dict], warmup: int) -> tuple[float, float, int]:
  """(seconds, useful FLOPs, real tokens) of the steps after `warmup`, on pre-placed batches."""
  state, ema = trainer.init(0)
  placed = [sharding.global_batch(b, trainer.mesh, trainer.rules) for b in batches]
  for b in placed[:warmup]:
    state, ema, _ = trainer.step(state, ema, b)
  jax.block_until_ready(state)
  t0 = time.perf_counter()
  for b in placed[warmup:]:
    state, ema, out = trainer.step(state, ema, b)
  jax.block_until_ready(state)
  dt = time.perf_counter() - t0
  timed = batches[warmup:]
  return (
    dt,
    sum(trainer.step_flops(b) for b in timed),
    int(sum((b["segment_ids"] > 0).sum() for b in timed)),
  )


def padded_batches(examples: list[dict], opts: pipeline.Options, rows: int, data_shards: int):
  """The examples, bucketed and padded, with rows * seq_len padded tokens per batch."""
  out = []
  buckets = pipeline.bucket_lengths(opts.seq_len)
  for bucket in buckets:
    per_batch = max(data_shards, (rows * opts.seq_len // bucket) // data_shards * data_shards)
    group = [e for e in examples if len(e["tokens"]) <= bucket]
    group = [e for e in group if bucket == buckets[0] or len(e["tokens"]) > bucket // 2]
    out += list(pipeline.bucketed_batches(iter(group), opts, per_batch, [bucket]))
  return out


def memory_report(trainer: Trainer, batch: dict) -> dict[str, float]:
  spec = {
    k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=trainer.batch_shardings[k])
    for k, v in batch.items()
  }
  compiled = trainer.lower(spec).compile()
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


def run(cfg, steps: int, warmup: int, padded: bool, synthetic_examples: int = 2000) -> dict:
  ensure_data(cfg, synthetic_examples)
  config_lib.validate(cfg)
  mesh = sharding.make_mesh(cfg.mesh)
  config_lib.check_batch_layout(cfg, mesh, jax.process_count())
  tok = tokenizer.load(cfg.data.data_dir)
  trainer = Trainer(cfg, mesh, tok.vocab_size)
  peak, peak_source = flops.device_peak_flops(dtype=trainer.dit_cfg.compute_dtype)
  total_peak = peak * jax.device_count()

  # Packed: batches straight from the training pipeline.
  dataset = input_pipeline.make_dataset(cfg, tok, factory.stage(cfg), 0, 1)
  it = iter(dataset)
  batches = [next(it) for _ in range(warmup + steps)]
  dt, useful, real = time_steps(trainer, batches, warmup)
  rows = cfg.train.global_batch_size
  result = {
    "devices": jax.device_count(),
    "device_kind": jax.devices()[0].device_kind,
    "params": trainer.counts["total"],
    "steps_per_s": steps / dt,
    "tokens_per_s": real / dt,
    "real_token_fraction": real / (steps * rows * cfg.data.seq_len),
    "tflops_per_s": useful / dt / 1e12,
    "mfu": useful / dt / total_peak,
    "peak_tflops_per_device": peak / 1e12,
    "peak_source": peak_source,
  }
  result.update(memory_report(trainer, batches[0]))

  if padded:
    # The same examples the packed steps saw, one per row, padded to buckets.
    opts = factory.options(cfg)
    tokenize = pipeline.Tokenize(opts, factory.geometry(cfg), tok)
    source, _ = pipeline.open_source(cfg.data.source, cfg.data.data_dir, cfg.data.split)
    rng = np.random.default_rng(0)
    n_examples = int(sum(b["segment_ids"].max(axis=1).sum() for b in batches[warmup:]))
    examples = [tokenize(source[i % len(source)], rng) for i in range(n_examples)]
    shards_ = int(np.prod([mesh.shape[a] for a in sharding.batch_axes(trainer.rules)]))
    pbatches = padded_batches([e for e in examples if e is not None], opts, rows, shards_)
    # Compile every bucket shape outside the timing.
    shapes = {b["tokens"].shape: b for b in pbatches}
    time_steps(trainer, list(shapes.values()), warmup=len(shapes))
    pdt, _, preal = time_steps(trainer, pbatches, warmup=0)
    result.update(
      padded_tokens_per_s=preal / pdt,
      padded_real_token_fraction=preal / sum(b["segment_ids"].size for b in pbatches),
      packed_over_padded=(real / dt) / (preal / pdt),
    )
  return result


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments {argv[1:]}")
  if FLAGS.config is None:
    sys.exit("error: --config is required, e.g. --config=experiments/demo.py")
  distributed.initialize_from_flags()
  try:
    result = run(FLAGS.config, FLAGS.steps, FLAGS.warmup, FLAGS.padded, FLAGS.synthetic_examples)
  except (config_lib.ConfigError, ValueError) as e:
    sys.exit(f"error: {e}")
  data_benchmark.report(result, FLAGS.output_json)


if __name__ == "__main__":
  define_flags()
  app.run(main)
