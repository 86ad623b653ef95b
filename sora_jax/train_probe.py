r"""Trains the evaluation probe: a small video classifier of the built-in data's caption
attributes, whose features the Fréchet distance is measured in.

  python -m sora_jax.train_probe --data_dir=out/demo/data \
      [--output=sora_jax/evaluators/assets/probe] [--steps=600] [--seed=0]

The probe the evaluation uses by default is shipped in sora_jax/evaluators/assets/probe
(a few hundred kilobytes), trained by exactly this command on `make demo`'s dataset
(data_pipelines.synthetic --num_examples=10000 --seed=0); its config.json records the
command, the data and the held-out accuracies. A few minutes on a CPU.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Sequence

from absl import flags

from data_pipelines import shards
from sora_jax.core import cli
from sora_jax.evaluators import alignment
from sora_jax.models import probe
from sora_jax.training import probe as probe_training

FLAGS = flags.FLAGS


def define_flags() -> None:
  flags.DEFINE_string("data_dir", None, "The built-in dataset (train and eval splits).")
  flags.DEFINE_string("output", alignment.DEFAULT_PROBE, "Where the probe directory goes.")
  flags.DEFINE_integer("steps", 1000, "Training steps.")
  flags.DEFINE_integer("batch_size", 64, "Clips per step.")
  flags.DEFINE_float("lr", 2e-3, "Peak learning rate.")
  flags.DEFINE_integer("seed", 0, "Seed of the windows, the batches and the initialization.")


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments {argv[1:]}")
  if not FLAGS.data_dir:
    sys.exit("error: --data_dir is required")
  cli.quiet()
  log_file = cli.log_to_file(os.path.join(FLAGS.output, "logs"), "train_probe")
  cli.say(f"sora_jax.train_probe: logs in {log_file}")
  cfg = probe.ProbeConfig()
  bar = cli.progress(FLAGS.steps, desc="train_probe")
  seen = [0]

  def progress(step, row):
    bar.update(step - seen[0])
    seen[0] = step
    bar.set_postfix({k: f"{v:.3f}" for k, v in row.items()}, refresh=False)

  try:
    model, result = probe_training.train(
      cfg,
      FLAGS.data_dir,
      steps=FLAGS.steps,
      batch_size=FLAGS.batch_size,
      lr=FLAGS.lr,
      seed=FLAGS.seed,
      progress=progress,
    )
  except shards.DatasetError as e:
    bar.close()
    sys.exit(f"error: {e}")
  bar.close()
  command = (
    f"python -m sora_jax.train_probe --data_dir=DATA --steps={FLAGS.steps} "
    f"--batch_size={FLAGS.batch_size} --lr={FLAGS.lr:g} --seed={FLAGS.seed}"
  )
  manifest = shards.read_manifest(FLAGS.data_dir)
  alignment.save_probe(
    FLAGS.output,
    model,
    {"command": command, "data": manifest.get("generator", {}), **result},
  )
  acc = result["eval_accuracy"]
  cli.say(
    "held-out accuracy: " + ", ".join(f"{k} {v:.1%}" for k, v in acc.items() if v is not None)
  )
  print(json.dumps({"output": FLAGS.output, **dataclasses.asdict(cfg), **acc}))


if __name__ == "__main__":
  define_flags()
  cli.run(main)
