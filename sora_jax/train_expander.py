r"""Trains the prompt expander: a small caption language model that writes a descriptive
caption for a short one, trained on a recaptioned dataset's pairs.

  python -m sora_jax.train_expander --config=experiments/expander.py --workdir=out/demo_long/expander \
      [--config.data.data_dir=out/demo_long/data]

Writes WORKDIR as an expander directory (sora_jax/model_io/expander_dir.py), which
`python -m sora_jax.sample --expand_prompt --expander=WORKDIR` and `python -m
sora_jax.evaluate --expander=WORKDIR` use; WORKDIR/expander_report.json holds the loss
curve and a few expansions of held-out prompts. A few minutes on a CPU.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence

from absl import flags
from ml_collections import config_flags

from data_pipelines import shards
from sora_jax.core import cli, configs
from sora_jax.evaluators import prompt_following
from sora_jax.sampling import expand
from sora_jax.training import expander as expander_training

FLAGS = flags.FLAGS


def define_flags() -> None:
  config_flags.DEFINE_config_file(
    "config", None, "An expander config, e.g. experiments/expander.py"
  )
  flags.DEFINE_string("workdir", None, "Where the expander directory is written.")


def main(argv: Sequence[str]) -> None:
  cli.require(argv, workdir="", config=", e.g. --config=experiments/expander.py")
  cli.quiet()
  log_file = cli.log_to_file(os.path.join(FLAGS.workdir, "logs"), "train_expander")
  cli.say(f"sora_jax.train_expander: logs in {log_file}")
  cfg = FLAGS.config
  bar = cli.progress(cfg.train.num_steps, desc="train_expander")
  last = [0]

  def progress(step, row):
    bar.update(step - last[0])
    last[0] = step
    bar.set_postfix({k: f"{v:.3f}" for k, v in row.items() if k != "step"}, refresh=False)

  try:
    result = expander_training.train(cfg, FLAGS.workdir, progress)
  except (configs.ConfigError, shards.DatasetError, FileNotFoundError) as e:
    bar.close()
    sys.exit(f"error: {e}")
  bar.close()
  cli.say(
    f"expander: {result['parameters']:,} parameters, {result['train_pairs']} pairs; held-out "
    f"loss {result['eval_loss_at_start']:.3f} -> {result['eval_loss']:.3f} "
    f"in {result['seconds']:.0f} s"
  )
  # A few held-out prompts, expanded, so a person sees what it writes.
  expander = expand.load(FLAGS.workdir)
  prompts = prompt_following.eval_prompts(cfg.data.data_dir, cfg.data.eval_split, 4)
  examples = [
    {"prompt": p, "expanded": e} for p, e in zip(prompts, expander(prompts, seed=0), strict=True)
  ]
  for e in examples:
    cli.say(f"  {e['prompt']!r}\n    -> {e['expanded']!r}")
  report = {**result, "examples": examples}
  shards.atomic_write_json(os.path.join(FLAGS.workdir, "expander_report.json"), report)
  print(json.dumps({"workdir": FLAGS.workdir, "eval_loss": round(result["eval_loss"], 4)}))


if __name__ == "__main__":
  define_flags()
  cli.run(main)
