r"""Input-pipeline benchmark: packing efficiency and throughput, packed against bucketed.

  python -m data_pipelines.benchmark --config=experiments/demo.py [--data_dir=DIR] \
      [--num_batches=50] [--workers=0,2]

For each worker count it times `num_batches` packed batches of the config's
training pipeline (rows/s, real tokens/s, real-token fraction). Then it takes
the same examples and pads each alone to the smallest of the bucket lengths
L/8, L/4, L/2, L (what bucketing trainers do), and to the full row L, and
reports their real-token fractions (data_pipelines.throughput). Without
--data_dir a built-in synthetic dataset is generated in a temporary directory
first. Pixel-space configs only: a latent-space config's geometry needs its
autoencoder, so `python -m sora_jax.benchmark --input_pipeline` measures those.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Sequence

from absl import app, flags
from ml_collections import config_flags

from data_pipelines import synthetic, throughput, tokenizer

FLAGS = flags.FLAGS


def define_flags() -> None:
  config_flags.DEFINE_config_file("config", "experiments/demo.py", "Experiment config.")
  flags.DEFINE_string("data_dir", None, "Dataset (default: generate a synthetic one).")
  flags.DEFINE_integer("num_batches", 50, "Batches timed per worker count.")
  flags.DEFINE_list("workers", ["0", "2"], "Worker process counts to time.")
  flags.DEFINE_integer("synthetic_examples", 4000, "Size of a generated dataset.")
  flags.DEFINE_string("output_json", None, "Also write the results here.")


def run(
  cfg, data_dir: str | None, num_batches: int, workers: list[int], synthetic_examples: int = 4000
) -> dict:
  geom = throughput.pixel_geometry(cfg)
  if not data_dir:
    data_dir = tempfile.mkdtemp(prefix="sora_jax_data_bench_")
    synthetic.generate(
      synthetic.Options(output_dir=data_dir, num_examples=synthetic_examples), False
    )
    tokenizer.train(data_dir, vocab_size=128)
  return throughput.measure(cfg, geom, data_dir, num_batches, workers)


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
  throughput.report(result, FLAGS.output_json)


if __name__ == "__main__":
  define_flags()
  app.run(main)
