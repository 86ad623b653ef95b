r"""Prompt following: generate from held-out captions and read colour, shape and motion back.

  python -m sora_jax.evaluate --workdir=DIR --data_dir=DATA [--split=eval] [--output=OUT]

Takes the distinct canonical captions of a split of the built-in synthetic
dataset (by default `eval`: the (color, shape) pairs held out of training),
generates each at sizes cycling through --sizes, and reads the attributes back
from the pixels with `data_pipelines.readback`. Prints the accuracy of each
attribute next to chance, and writes OUT/eval_results.json and
OUT/eval_contact_sheet.png (each sample captioned with its prompt and what was
read back).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence

import numpy as np
from absl import app, flags

from data_pipelines import contact_sheet, media, readback, shards, sizing, vocab
from sora_jax import checkpointing, config_lib, distributed, factory, sample, sampling

FLAGS = flags.FLAGS
CHANCE = {
  "color": 1 / len(vocab.COLORS),
  "shape": 1 / len(vocab.SHAPES),
  "motion": 1 / len(vocab.MOTIONS),
  "background": 1 / len(vocab.BACKGROUNDS),
}


def define_flags() -> None:
  flags.DEFINE_string("workdir", None, "Training workdir holding checkpoints/.")
  distributed.define_flags()
  flags.DEFINE_string("data_dir", None, "The synthetic dataset the prompts come from.")
  flags.DEFINE_string("split", "eval", "Split whose captions are the prompts.")
  flags.DEFINE_integer("num_prompts", 48, "At most this many distinct captions.")
  flags.DEFINE_string(
    "sizes",
    None,
    "FRAMESxHEIGHTxWIDTH sizes to cycle (default: the sizes 1:1, 16:9 and 9:16 clips are "
    "trained at under the run's token budget).",
  )
  flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
  flags.DEFINE_integer("steps", None, "Sampling steps (default: the config's).")
  flags.DEFINE_float("cfg_scale", None, "Guidance scale (default: the config's).")
  flags.DEFINE_integer("seed", 0, "Seed of the first prompt; prompt i uses seed + i.")
  flags.DEFINE_string("output", "out/eval", "Where results and the contact sheet go.")


def parse_sizes(spec: str) -> list[tuple[int, int, int]]:
  sizes = []
  for part in spec.split(","):
    try:
      t, h, w = (int(x) for x in part.strip().lower().split("x"))
    except ValueError:
      raise sampling.RequestError(f"--sizes entry {part!r}: expected FRAMESxHEIGHTxWIDTH") from None
    sizes.append((t, h, w))
  return sizes


def training_sizes(cfg) -> list[tuple[int, int, int]]:
  """Where 128x128, 72x128 and 128x72 clips land under the config's token budget."""
  geom, d = factory.geometry(cfg), cfg.data
  return [
    sizing.target_size(
      geom, d.max_frames, h, w, d.max_tokens_per_example, d.max_frames, d.min_frame_tokens
    )
    for h, w in ((128, 128), (72, 128), (128, 72))
  ]


def eval_prompts(data_dir: str, split: str, limit: int) -> list[str]:
  """Distinct canonical captions of a split, videos first, in a stable order."""
  captions = set()
  for path in shards.split_files(data_dir, split):
    for ex in shards.read_shard(path):
      captions.add(ex.captions[0])
  videos = sorted(c for c in captions if vocab.parse_caption(c)["motion"])
  images = sorted(c for c in captions if not vocab.parse_caption(c)["motion"])
  return (videos + images)[:limit]


def requests_for(prompts: list[str], sizes: list[tuple[int, int, int]], seed: int):
  out = []
  for i, p in enumerate(prompts):
    t, h, w = sizes[i % len(sizes)]
    if not vocab.parse_caption(p)["motion"]:
      t = 1
    out.append(sampling.Request(p, t, h, w, seed + i))
  return out


def score_all(requests, videos) -> tuple[dict[str, float], list[dict]]:
  rows, hits = [], {k: [] for k in CHANCE}
  for req, video in zip(requests, videos, strict=True):
    got = readback.read_attributes(video)
    result = readback.score(video, req.prompt)
    for k, ok in result.items():
      if k in hits:
        hits[k].append(ok)
    rows.append(
      {"prompt": req.prompt, "size": [req.num_frames, req.height, req.width], "read": got, **result}
    )
  accuracy = {k: float(np.mean(v)) for k, v in hits.items() if v}
  counts = {f"n_{k}": len(v) for k, v in hits.items()}
  return {**accuracy, **counts}, rows


def _json_safe(x):
  if isinstance(x, dict):
    return {k: _json_safe(v) for k, v in x.items()}
  if isinstance(x, list | tuple):
    return [_json_safe(v) for v in x]
  if isinstance(x, np.generic):
    return x.item()
  return x


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments {argv[1:]}")
  for name in ("workdir", "data_dir"):
    if not FLAGS[name].value:
      sys.exit(f"error: --{name} is required")
  distributed.initialize_from_flags()
  try:
    prompts = eval_prompts(FLAGS.data_dir, FLAGS.split, FLAGS.num_prompts)
    if not prompts:
      raise sampling.RequestError(f"split {FLAGS.split!r} of {FLAGS.data_dir} has no captions")
    if FLAGS.sizes:
      sizes = parse_sizes(FLAGS.sizes)
    else:
      _, config = checkpointing.restore_config(FLAGS.workdir, FLAGS.step)
      sizes = training_sizes(config_lib.from_json(config))
    requests = requests_for(prompts, sizes, FLAGS.seed)
    videos, _, step = sample.generate(
      FLAGS.workdir, requests, step=FLAGS.step, steps=FLAGS.steps, cfg_scale=FLAGS.cfg_scale
    )
  except (sampling.RequestError, checkpointing.CheckpointError, shards.DatasetError) as e:
    sys.exit(f"error: {e}")
  accuracy, rows = score_all(requests, videos)
  os.makedirs(FLAGS.output, exist_ok=True)
  with open(os.path.join(FLAGS.output, "eval_results.json"), "w") as f:
    json.dump(
      _json_safe({"step": step, "split": FLAGS.split, "accuracy": accuracy, "samples": rows}),
      f,
      indent=2,
    )
  items = [
    (v, f"{r['prompt']} -> {r['read']['color']} {r['read']['shape']} {r['read']['motion'] or ''}")
    for v, r in zip(videos, rows, strict=True)
  ]
  media.write_png(
    os.path.join(FLAGS.output, "eval_contact_sheet.png"), contact_sheet.contact_sheet(items)
  )
  print(f"prompt following at step {step} on {len(requests)} prompts of split {FLAGS.split!r}:")
  for k in CHANCE:
    if k in accuracy:
      print(f"  {k:<10} {accuracy[k]:6.1%}  (chance {CHANCE[k]:.0%}, n={accuracy['n_' + k]})")
  print(f"results: {os.path.join(FLAGS.output, 'eval_results.json')}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
