r"""Input-pipeline benchmark: packing efficiency and throughput, packed against bucketed.

  python -m data_pipelines.benchmark --config=experiments/demo.py [--data_dir=DIR] \
      [--num_batches=50] [--workers=0,2]

For each worker count it times `num_batches` packed batches of the config's
training pipeline (rows/s, real tokens/s, real-token fraction). Then it takes
the same examples and pads each alone to the smallest of the bucket lengths
L/8, L/4, L/2, L (what bucketing trainers do), and to the full row L, and
reports their real-token fractions. Without --data_dir a built-in synthetic
dataset is generated in a temporary directory first.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from collections.abc import Sequence

import numpy as np
from absl import app, flags
from ml_collections import config_flags

from data_pipelines import pipeline, synthetic, tokenizer

FLAGS = flags.FLAGS


def define_flags() -> None:
  config_flags.DEFINE_config_file("config", "experiments/demo.py", "Experiment config.")
  flags.DEFINE_string("data_dir", None, "Dataset (default: generate a synthetic one).")
  flags.DEFINE_integer("num_batches", 50, "Batches timed per worker count.")
  flags.DEFINE_list("workers", ["0", "2"], "Worker process counts to time.")
  flags.DEFINE_integer("synthetic_examples", 4000, "Size of a generated dataset.")
  flags.DEFINE_string("output_json", None, "Also write the results here.")


def time_packed(cfg, data_dir: str, workers: int, num_batches: int) -> dict[str, float]:
  from sora_jax import factory  # The geometry comes from the model and latent config.

  opts = factory.options(cfg)
  opts = pipeline.Options(**{**opts.__dict__, "num_workers": workers})
  source, decode = pipeline.open_source(cfg.data.source, data_dir, cfg.data.split)
  tok = tokenizer.load(data_dir)
  tokenize = pipeline.Tokenize(opts, factory.geometry(cfg), tok, decode_record=decode)
  ds = pipeline.make_dataset(source, tokenize, batch_size=cfg.train.global_batch_size, seed=0)
  it = iter(ds)
  next(it)  # Start-up (workers, first packing round) is not timed.
  real = total = 0
  t0 = time.perf_counter()
  for _ in range(num_batches):
    batch = next(it)
    real += int((batch["segment_ids"] > 0).sum())
    total += batch["segment_ids"].size
  dt = time.perf_counter() - t0
  rows = num_batches * cfg.train.global_batch_size
  return {"rows_per_s": rows / dt, "tokens_per_s": real / dt, "real_token_fraction": real / total}


def padded_fractions(cfg, data_dir: str, num_examples: int) -> dict[str, float]:
  """Real-token fractions of the same kind of examples padded one per row."""
  from sora_jax import factory

  opts = factory.options(cfg)
  source, decode = pipeline.open_source(cfg.data.source, data_dir, cfg.data.split)
  tokenize = pipeline.Tokenize(opts, factory.geometry(cfg), tokenizer.load(data_dir), decode)
  rng = np.random.default_rng(0)
  lengths = []
  for i in range(num_examples):
    ex = tokenize(source[i % len(source)], rng)
    if ex is not None:
      lengths.append(len(ex["tokens"]))
  lengths = np.asarray(lengths)
  buckets = np.asarray(pipeline.bucket_lengths(opts.seq_len))
  padded = buckets[np.searchsorted(buckets, lengths)]
  return {
    "bucketed_real_token_fraction": float(lengths.sum() / padded.sum()),
    "one_per_row_real_token_fraction": float(lengths.mean() / opts.seq_len),
    "mean_example_tokens": float(lengths.mean()),
    "buckets": buckets.tolist(),
  }


def report(result: dict, output_json: str | None = None) -> None:
  """Prints a result table (shared by the benchmark binaries) and optionally writes JSON."""
  width = max(map(len, result))
  for k, v in result.items():
    print(f"{k:<{width}}  {v:.4g}" if isinstance(v, float) else f"{k:<{width}}  {v}")
  if output_json:
    with open(output_json, "w") as f:
      json.dump(result, f, indent=2)


def run(
  cfg, data_dir: str | None, num_batches: int, workers: list[int], synthetic_examples: int = 4000
) -> dict:
  if not data_dir:
    data_dir = tempfile.mkdtemp(prefix="sora_jax_data_bench_")
    synthetic.generate(
      synthetic.Options(output_dir=data_dir, num_examples=synthetic_examples), False
    )
    tokenizer.train(data_dir, vocab_size=128)
  result = {
    "data_dir": data_dir,
    "seq_len": cfg.data.seq_len,
    "rows_per_batch": cfg.train.global_batch_size,
  }
  for w in workers:
    for k, v in time_packed(cfg, data_dir, w, num_batches).items():
      result[f"{k}@{w}_workers"] = v
  result.update(padded_fractions(cfg, data_dir, num_batches * cfg.train.global_batch_size))
  return result


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments {argv[1:]}")
  try:
    workers = [int(w) for w in FLAGS.workers]
  except ValueError:
    sys.exit(f"error: --workers={','.join(FLAGS.workers)}: expected integers")
  if FLAGS.num_batches < 1:
    sys.exit(f"error: --num_batches={FLAGS.num_batches}: must be at least 1")
  try:
    result = run(FLAGS.config, FLAGS.data_dir, FLAGS.num_batches, workers, FLAGS.synthetic_examples)
  except ValueError as e:
    sys.exit(f"error: {e}")
  report(result, FLAGS.output_json)


if __name__ == "__main__":
  define_flags()
  app.run(main)
