r"""The muP coordinate check: do activation scales stay flat across widths?

  python -m sora_jax.coord_check --config=experiments/sweeps/cpu_isoflop.py \
      --widths=64,128,256,512 --steps=4 --output=DIR [--config.data.data_dir=DATA]

Trains each width a few steps at the config's learning rate under the standard
parametrization and under muP (sora_jax.training.coord_check) and writes DIR/coord_check.png
(mean |activation| against width after each step, per site) and DIR/coord_check.json with
each step's slope d log(scale) / d log(width) and their largest magnitude ("drift"): near 0
under muP, of order 1 under standard.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence

from absl import flags
from ml_collections import config_flags

from data_pipelines import shards
from sora_jax.analysis import plots
from sora_jax.core import cli, configs, distributed, sharding
from sora_jax.training import coord_check, validation

FLAGS = flags.FLAGS


def define_flags() -> None:
  config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=False)
  distributed.define_flags()
  flags.DEFINE_list("widths", ["64", "128", "256", "512"], "Widths to compare.")
  flags.DEFINE_integer("steps", 4, "Training steps per width.")
  flags.DEFINE_string("output", None, "Directory for coord_check.png and coord_check.json.")


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments {argv[1:]}")
  if FLAGS.config is None or not FLAGS.output:
    sys.exit("error: --config and --output are required")
  try:
    widths = sorted({int(w) for w in FLAGS.widths})
  except ValueError:
    sys.exit(f"error: --widths={','.join(FLAGS.widths)}: must be integers")
  if len(widths) < 2 or FLAGS.steps < 2:
    sys.exit("error: the check needs at least 2 widths and --steps >= 2")
  cli.quiet()
  distributed.initialize_from_flags()
  log_file = cli.log_to_file(os.path.join(FLAGS.output, "logs"), "coord_check")
  cli.say(f"sora_jax.coord_check: logs in {log_file}")
  cfg = FLAGS.config
  try:
    validation.validate(cfg)
    mesh = sharding.make_mesh(cfg.mesh)
    records = coord_check.run(
      cfg, widths, FLAGS.steps, mesh, progress=lambda m: print(m, flush=True)
    )
  except (configs.ConfigError, shards.DatasetError, ValueError) as e:
    sys.exit(f"error: {e}")
  os.makedirs(FLAGS.output, exist_ok=True)
  with open(os.path.join(FLAGS.output, "coord_check.json"), "w") as f:
    json.dump(records, f, indent=2)
  png = plots.coord_check(records, os.path.join(FLAGS.output, "coord_check.png"))
  for p, r in records.items():
    drift = " ".join(f"{s}={v:.2f}" for s, v in r["drift"].items())
    print(f"{p:>8}: largest |d log(scale) / d log(width)| over {FLAGS.steps} steps: {drift}")
  print(f"wrote {png}")


if __name__ == "__main__":
  define_flags()
  cli.run(main)
