r"""Fits a PCA latent stage: a linear compression of pixel blocks, learned in seconds.

  python -m sora_jax.fit_pca --config=experiments/demo.py --output_dir=out/demo/pca \
      [--config.data.data_dir=DATA] [--config.latent.pca_channels=48] [--clips=3000]

Reads `--clips` training clips exactly as the config's pipeline cuts and resizes them
for its PCA stage (config.latent.pca_block, pca_channels), accumulates the principal
components of their block x block x 3 pixel blocks (sora_jax.diffusion.latent.fit_pca),
and writes OUTPUT_DIR/config.json (with the fit's variance kept and PSNR) and pca.npz.
Train on it with the same config and --config.latent.pca=OUTPUT_DIR.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence

import numpy as np
from absl import flags
from ml_collections import config_flags

from data_pipelines import pipeline, shards, sizing
from sora_jax.core import cli
from sora_jax.core.configs import ConfigError
from sora_jax.diffusion import latent
from sora_jax.training import input_pipeline, validation

FLAGS = flags.FLAGS


def define_flags() -> None:
  config_flags.DEFINE_config_file("config", None, "The diffusion config the stage serves.")
  flags.DEFINE_string("output_dir", None, "Where the stage's config.json and pca.npz go.")
  flags.DEFINE_integer("clips", 3000, "Training clips to fit on (fewer if the split is smaller).")
  flags.DEFINE_integer("seed", 0, "Seed of the clips' random crops and sizes.")


def clips(cfg, block: int, channels: int, count: int, seed: int):
  """Yields (video [T, H, W, 3] in [-1, 1]) as the config's pipeline cuts them for the stage."""
  tokenizer = input_pipeline.load_tokenizer(cfg)
  geom = sizing.Geometry(tuple(int(p) for p in cfg.model.patch), (1, block, block), channels)
  source, decode = pipeline.open_source(
    cfg.data.source, cfg.data.data_dir, cfg.data.split, cfg.data.tfds_name
  )
  seen = []
  tokenize = pipeline.Tokenize(
    pipeline.Options.from_config(cfg.data),
    geom,
    tokenizer,
    decode_record=decode,
    # The stage's "encoder" here records the resized pixels and hands back a stand-in.
    to_moments=lambda video: (seen.append(video) or np.zeros((*video.shape[:3], channels)), None),
    from_moments=lambda mean, logvar, rng: mean,
  )
  rng = np.random.default_rng(seed)
  order = rng.permutation(len(source))[:count]
  for i in order:
    seen.clear()
    tokenize(source[int(i)], rng)
    yield from seen


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments {argv[1:]}")
  if FLAGS.config is None:
    sys.exit("error: --config is required, e.g. --config=experiments/demo.py")
  if not FLAGS.output_dir:
    sys.exit("error: --output_dir is required")
  if FLAGS.clips < 1:
    sys.exit(f"error: --clips={FLAGS.clips} must be positive")
  cfg = FLAGS.config
  lat = cfg.latent
  cli.quiet()
  cli.log_to_file(os.path.join(FLAGS.output_dir, "logs"), "fit_pca")
  t0 = time.time()
  try:
    validation.validate(cfg, for_training=False)
    block, channels, whiten = int(lat.pca_block), int(lat.pca_channels), bool(lat.pca_whiten)
    stream = clips(cfg, block, channels, FLAGS.clips, FLAGS.seed)
    bar = cli.progress(FLAGS.clips, desc="fit_pca", unit="clip")
    arrays, report = latent.fit_pca((bar.update() or v for v in stream), block, channels, whiten)
    bar.close()
  except (ConfigError, shards.DatasetError, FileNotFoundError, ValueError) as e:
    sys.exit(f"error: {e}")
  latent.write_pca(FLAGS.output_dir, block, arrays, report)
  cli.say(
    f"PCA stage: {block}x{block}x3 blocks -> {channels} channels"
    f"{' (whitened)' if whiten else ''}, {report['variance_kept']:.2%} of the variance, "
    f"{report['psnr_db']:.1f} dB on {report['blocks']:,} blocks, in {time.time() - t0:.0f} s: "
    f"{FLAGS.output_dir}"
  )


if __name__ == "__main__":
  define_flags()
  cli.run(main)
