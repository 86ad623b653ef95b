r"""Encodes a dataset once with a trained video autoencoder: cached latents for diffusion training.

  python -m sora_jax.cache_latents --autoencoder_workdir=AE --data_dir=DATA \
      --output_dir=CACHE [--config=experiments/demo_latent.py] [--splits=train,eval]

Each example is sized exactly as the diffusion pipeline would size it under
`--config`'s data options and the autoencoder's compression (token budget,
frames, frame stride; the first window of a longer clip), encoded, and
written as a cached-latent record of the same schema (`media_format`
"latent": posterior mean and log-variance, see data_pipelines/schema.py),
keeping captions, ids and attributes. Training on CACHE with the same config
then reads the same batches as encoding DATA on the fly, without running the
encoder.

Output in --output_dir:
  {split}-{i:05d}-of-{n:05d}.array_record   one per input shard, same names
  manifest.json        the input's manifest, with these shards and a "latent" entry
  latent_stats.json    per-channel shift and scale over the train split's latents
  cache_parts/*.json   per-shard counts and statistics (for resuming)
  tokenizer.model      copied from DATA

Resumable like ingest: shards and their part files are written atomically, and
a rerun skips every finished shard; the statistics merge the parts. A record
that does not decode is skipped and counted, never half-written.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Sequence

import numpy as np
from absl import flags, logging
from ml_collections import config_flags
from tqdm import tqdm

from data_pipelines import media, pipeline, schema, shards, sizing
from sora_jax.core import checkpointing, cli
from sora_jax.diffusion import latent

FLAGS = flags.FLAGS
PARTS = "cache_parts"


def define_flags() -> None:
  flags.DEFINE_string("autoencoder_workdir", None, "A trained autoencoder's workdir.")
  flags.DEFINE_integer("autoencoder_step", -1, "Its checkpoint step (-1: the latest).")
  flags.DEFINE_string("data_dir", None, "The dataset to encode (ArrayRecord directory).")
  flags.DEFINE_string("output_dir", None, "Where the cached-latent dataset goes.")
  flags.DEFINE_list("splits", [], "Splits to encode (default: all in the manifest).")
  config_flags.DEFINE_config_file(
    "config",
    os.path.join(
      os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments", "demo_latent.py"
    ),
    "The diffusion config whose data options size the examples.",
    lock_config=True,
  )


def sizer(cfg, stage):
  """The diffusion pipeline's per-example transform, for its sizing rules."""
  opts = pipeline.Options.from_config(cfg.data)
  if opts.min_token_fraction < 1.0:
    raise ValueError(
      f"config.data.min_token_fraction={opts.min_token_fraction}: random resolutions cannot be "
      "cached; cache with 1.0"
    )
  return pipeline.Tokenize(
    opts, sizing.Geometry(tuple(cfg.model.patch), stage.compression, stage.channels), None
  )


def encode_example(
  tokenize: pipeline.Tokenize, stage, ex: schema.Example
) -> tuple[schema.Example, np.ndarray, np.ndarray]:
  """The cached-latent record of one example, and its moments."""
  frames, height, width = tokenize.choose_size(ex, np.random.default_rng(0))
  stride = max(1, min(tokenize.opts.frame_stride, (ex.num_frames - 1) // max(frames - 1, 1)))
  span = (frames - 1) * stride + 1
  pixels = media.decode(ex, start_frame=0, max_frames=span)[::stride]
  if pixels.shape[0] != frames:  # Shorter than its header said.
    frames = tokenize.geom.pixel_frames(tokenize.geom.latent_frames(pixels.shape[0]))
    pixels = pixels[:frames]
  video = pipeline.to_unit_range(pipeline.resize_frames(pixels, height, width))
  mean, logvar = stage.moments(video)
  data, shape = media.encode_latent(mean, logvar)
  out = schema.Example(
    media=data,
    media_format=schema.LATENT_FORMAT,
    fps=ex.fps / stride if ex.fps else 0.0,
    num_frames=frames,
    height=height,
    width=width,
    captions=ex.captions,
    source_id=ex.source_id,
    clip_start=ex.clip_start,
    attributes=ex.attributes,
    latent_shape=shape,
  )
  return out, mean, logvar


def run(
  autoencoder_workdir: str,
  data_dir: str,
  output_dir: str,
  cfg,
  *,
  splits: Sequence[str] = (),
  step: int | None = None,
  progress: bool = True,
) -> dict:
  """Encodes the splits; returns the output manifest."""
  manifest = shards.read_manifest(data_dir)
  splits = list(splits) or sorted(manifest["splits"])
  unknown = [s for s in splits if s not in manifest["splits"]]
  if unknown:
    raise shards.DatasetError(
      f"--splits={unknown}: not in {data_dir}; available: {sorted(manifest['splits'])}"
    )
  if os.path.abspath(output_dir) == os.path.abspath(data_dir):
    raise ValueError("--output_dir must differ from --data_dir")
  # Statistics are estimated here, so the stage must not need them yet.
  stage = latent.AutoencoderStage(autoencoder_workdir, step, stats_file=None)
  tokenize = sizer(cfg, stage)
  os.makedirs(os.path.join(output_dir, PARTS), exist_ok=True)

  todo, parts = [], {}
  for split in splits:
    for name in manifest["splits"][split]["shards"]:
      part = _read_part(output_dir, name)
      if part is not None and os.path.exists(os.path.join(output_dir, name)):
        parts[name] = part
      else:
        todo.append((split, name))
  total = sum(_num_records(os.path.join(data_dir, n)) for _, n in todo)
  t0 = time.perf_counter()
  with tqdm(
    total=total,
    desc="cache_latents",
    unit="clip",
    mininterval=1.0,
    disable=not (progress and total),
  ) as bar:
    for split, name in todo:
      stats = latent.LatentStats(stage.channels)
      sizes = shards.SizeStats()
      written = skipped = 0
      with shards.shard_writer(os.path.join(output_dir, name)) as out:
        for ex in shards.read_shard(os.path.join(data_dir, name)):
          bar.update(1)
          try:
            record, mean, logvar = encode_example(tokenize, stage, ex)
          except (schema.SchemaError, media.MediaError) as e:
            logging.warning("skipping %s: %s", ex.source_id, e)
            skipped += 1
            continue
          out.add(record)
          stats.add_moments(mean, logvar)
          sizes.add(record.height, record.width, record.num_frames)
          written += 1
      parts[name] = {
        "split": split,
        "written": written,
        "skipped": skipped,
        "sizes": sizes.to_dict(),
        "stats": {"n": stats.n, "mean": stats.mean.tolist(), "m2": stats.m2.tolist()},
      }
      shards.atomic_write_json(os.path.join(output_dir, PARTS, name + ".json"), parts[name])
  elapsed = time.perf_counter() - t0

  # Statistics over the train split (or everything encoded, without one).
  stats = latent.LatentStats(stage.channels)
  use = [p for p in parts.values() if p["split"] == "train"] or list(parts.values())
  for p in use:
    stats.merge(p["stats"]["n"], np.asarray(p["stats"]["mean"]), np.asarray(p["stats"]["m2"]))
  stats_json = {
    **stats.to_json(),
    "autoencoder": os.path.abspath(autoencoder_workdir),
    "step": stage.step,
  }
  latent.write_stats(os.path.join(output_dir, latent.STATS_FILE), stats_json)

  out_splits = {}
  for split in splits:
    names = manifest["splits"][split]["shards"]
    sizes = shards.SizeStats()
    for n in names:
      sizes.merge(parts[n]["sizes"])
    out_splits[split] = {
      **shards.split_entry(names, sizes),
      "skipped": sum(parts[n]["skipped"] for n in names),
    }
  if manifest.get("tokenizer"):
    shutil.copyfile(
      os.path.join(data_dir, manifest["tokenizer"]), os.path.join(output_dir, manifest["tokenizer"])
    )
  out = {
    **manifest,
    "splits": out_splits,
    "latent": {
      "autoencoder": os.path.abspath(autoencoder_workdir),
      "step": stage.step,
      "channels": stage.channels,
      "compression": list(stage.compression),
      "source": os.path.abspath(data_dir),
      "data_options": {
        k: cfg.data[k]
        for k in ("max_tokens_per_example", "max_frames", "frame_stride", "min_frame_tokens")
      },
      "patch": list(cfg.model.patch),
      "stats_file": latent.STATS_FILE,
    },
  }
  shards.write_manifest(output_dir, out)
  n = sum(p["written"] for p in parts.values())
  logging.info(
    "cache_latents: %d clips (%d this run, %.1f clips/s) -> %s",
    n,
    total,
    total / max(elapsed, 1e-9),
    output_dir,
  )
  return out


def _read_part(output_dir: str, name: str) -> dict | None:
  path = os.path.join(output_dir, PARTS, name + ".json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def _num_records(path: str) -> int:
  from array_record.python import array_record_module

  reader = array_record_module.ArrayRecordReader(path)
  try:
    return reader.num_records()
  finally:
    reader.close()


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments {argv[1:]}")
  for name in ("autoencoder_workdir", "data_dir", "output_dir"):
    if not getattr(FLAGS, name):
      sys.exit(f"error: --{name} is required")
  cli.quiet()
  log_file = cli.log_to_file(os.path.join(FLAGS.output_dir, "logs"), "cache_latents")
  cli.say(f"sora_jax.cache_latents: logs in {log_file}")
  try:
    out = run(
      FLAGS.autoencoder_workdir,
      FLAGS.data_dir,
      FLAGS.output_dir,
      FLAGS.config,
      splits=FLAGS.splits,
      step=None if FLAGS.autoencoder_step < 0 else FLAGS.autoencoder_step,
    )
  except (shards.DatasetError, checkpointing.CheckpointError, ValueError, FileNotFoundError) as e:
    sys.exit(f"error: {e}")
  print(json.dumps({s: e["num_examples"] for s, e in out["splits"].items()}))


if __name__ == "__main__":
  define_flags()
  cli.run(main)
