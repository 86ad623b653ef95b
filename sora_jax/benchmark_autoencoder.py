r"""Reconstruction quality and speed of a trained video autoencoder.

  python -m sora_jax.benchmark_autoencoder --autoencoder_workdir=AE --data_dir=DATA \
      [--split=eval] [--num_clips=128] [--max_frames=17] [--output=DIR]

Prints one JSON line and writes DIR/autoencoder_benchmark.json and a PNG of
originals above reconstructions (sora_jax.evaluators.reconstruction):

  dataset   PSNR and SSIM (posterior mean, decoded) over `num_clips` clips of
            the split at their native size, cut to multiples of 8 pixels and
            1 + 4k frames (at most --max_frames); images and videos separately.
  photos    the same over clips that pan and zoom across the photographs that
            ship inside scikit-image (skipped, with a note, when it is not
            installed): each photo gives a pan and a zoom of --max_frames frames
            at --photo_size pixels.
  speed     encode and decode frames/s of one --max_frames x photo_size clip,
            one shot and chunked, after compiling.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence

from absl import flags

from data_pipelines import shards
from sora_jax.core import checkpointing, cli
from sora_jax.diffusion.latent import AutoencoderStage
from sora_jax.evaluators import reconstruction

FLAGS = flags.FLAGS


def define_flags() -> None:
  flags.DEFINE_string("autoencoder_workdir", None, "A trained autoencoder's workdir.")
  flags.DEFINE_integer("step", -1, "Its checkpoint step (-1: the latest).")
  flags.DEFINE_string("data_dir", None, "A dataset directory (its eval split is read).")
  flags.DEFINE_string("split", "eval", "Split to reconstruct.")
  flags.DEFINE_integer("num_clips", 128, "Clips of the split to reconstruct.")
  flags.DEFINE_integer("max_frames", 17, "Frames per clip at most (1 + 4k).")
  flags.DEFINE_integer("photo_size", 128, "Side of the pan/zoom photo clips (multiple of 8).")
  flags.DEFINE_string("output", "out/autoencoder_benchmark", "Where the JSON and PNG go.")


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments {argv[1:]}")
  for name in ("autoencoder_workdir", "data_dir"):
    if not getattr(FLAGS, name):
      sys.exit(f"error: --{name} is required")
  cli.quiet()
  log_file = cli.log_to_file(os.path.join(FLAGS.output, "logs"), "benchmark_autoencoder")
  cli.say(f"sora_jax.benchmark_autoencoder: logs in {log_file}")
  try:
    step = None if FLAGS.step < 0 else FLAGS.step
    # Reconstruction needs no latent statistics.
    stage = AutoencoderStage(FLAGS.autoencoder_workdir, step, stats_file=None)
    result = reconstruction.evaluate(
      stage,
      FLAGS.data_dir,
      split=FLAGS.split,
      num_clips=FLAGS.num_clips,
      max_frames=FLAGS.max_frames,
      photo_size=FLAGS.photo_size,
      output=FLAGS.output,
    )
  except (checkpointing.CheckpointError, shards.DatasetError, ValueError, FileNotFoundError) as e:
    sys.exit(f"error: {e}")
  print(json.dumps(result))


if __name__ == "__main__":
  define_flags()
  cli.run(main)
