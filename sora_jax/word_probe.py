r"""Which caption words does a trained model use? Loss with the true word against swapped words.

  python -m sora_jax.word_probe --workdir=RUN --data_dir=DATA [--attribute=motion] \
      [--t=0.5,0.8,0.95,1.0] [--batches=3]
  python -m sora_jax.word_probe --workdir=RUN --data_dir=DATA --denoising --t=0.02,0.1,0.3,0.5,0.9

For packed batches of the synthetic dataset's eval split, each example's
caption has one attribute word replaced by every other word of the vocabulary,
and the flow loss is computed with the same noise and timestep for the true and
the swapped caption (sora_jax.evaluators.word_probe). Prints the win rate (the
fraction of swaps where the true word has the lower loss; 0.5: the word is
ignored) and the mean loss gap, per t.

With --denoising, no word is swapped: it prints, per t, how close the model's clean
estimate is to the clean tokens (dB; PSNR for pixels) beside its noisy input's figure.
A model worse than its input at small t damages every sample's last steps.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Sequence

from absl import flags

from data_pipelines import shards
from sora_jax.core import checkpointing, cli
from sora_jax.evaluators import word_probe
from sora_jax.sampling import run as run_lib

FLAGS = flags.FLAGS


def define_flags() -> None:
  flags.DEFINE_string("workdir", None, "Training workdir holding checkpoints/.")
  flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
  flags.DEFINE_string("data_dir", None, "The synthetic dataset whose captions are probed.")
  flags.DEFINE_string("split", "eval", "Split to read.")
  flags.DEFINE_enum("attribute", "motion", list(word_probe.WORDS), "Which caption word to swap.")
  flags.DEFINE_list("t", ["0.5", "0.8", "0.95", "1.0"], "Timesteps (1 = pure noise).")
  flags.DEFINE_integer("batches", 3, "Packed batches to read.")
  flags.DEFINE_bool("denoising", False, "Instead: the clean estimate's error per t, in dB.")


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments {argv[1:]}")
  for name in ("workdir", "data_dir"):
    if not getattr(FLAGS, name):
      sys.exit(f"error: --{name} is required")
  try:
    timesteps = [float(t) for t in FLAGS.t]
  except ValueError:
    sys.exit(f"error: --t={','.join(FLAGS.t)}: expected numbers in (0, 1]")
  if not all(0 < t <= 1 for t in timesteps):
    sys.exit(f"error: --t={','.join(FLAGS.t)}: timesteps must lie in (0, 1]")
  cli.quiet()
  # Beside the run's own logs; a missing (mistyped) or read-only --workdir gets no log file.
  with contextlib.suppress(OSError):
    if os.path.isdir(FLAGS.workdir):
      log_file = cli.log_to_file(os.path.join(FLAGS.workdir, "logs"), "word_probe")
      cli.say(f"sora_jax.word_probe: logs in {log_file}")
  try:
    run = run_lib.load(FLAGS.workdir, FLAGS.step)
    if FLAGS.denoising:
      result = word_probe.denoising(
        run, FLAGS.data_dir, timesteps, split=FLAGS.split, batches=FLAGS.batches
      )
    else:
      result = word_probe.evaluate(
        run, FLAGS.data_dir, FLAGS.attribute, timesteps, split=FLAGS.split, batches=FLAGS.batches
      )
  except (checkpointing.CheckpointError, shards.DatasetError, FileNotFoundError) as e:
    sys.exit(f"error: {e}")
  if FLAGS.denoising:
    for t, r in result.items():
      print(
        f"t={t:<5} clean estimate {r['estimate_db']:5.1f} dB, its noisy input {r['input_db']:5.1f} dB"
      )
    print(json.dumps({str(t): r for t, r in result.items()}))
    return
  for t, r in result.items():
    print(
      f"t={t:<5} {FLAGS.attribute}: the true word has the lower loss in "
      f"{r['win_rate']:.0%} of {r['pairs']} swaps; mean loss gap {r['gap']:+.5f}"
    )
  print(json.dumps({str(t): r for t, r in result.items()}))


if __name__ == "__main__":
  define_flags()
  cli.run(main)
