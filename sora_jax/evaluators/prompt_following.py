r"""Prompt following: generate from held-out captions and read colour, shape and motion back.

Takes the distinct canonical captions of a split of the built-in synthetic
dataset (by default `eval`: the (color, shape) pairs held out of training),
generates each at sizes cycling through `sizes` (default: where the run's
training put 1:1, 16:9 and 9:16 clips), and reads the attributes back
from the pixels with `data_pipelines.readback`: the accuracy of each
attribute, to set beside CHANCE. Writes eval_results.json and
eval_contact_sheet.png (each sample captioned with its prompt and what was
read back) when given an output directory.
"""

from __future__ import annotations

import json
import os

import numpy as np

from data_pipelines import contact_sheet, media, readback, shards, sizing, vocab
from sora_jax.diffusion import latent
from sora_jax.sampling import run as run_lib
from sora_jax.sampling import sampler

CHANCE = {
  "color": 1 / len(vocab.COLORS),
  "shape": 1 / len(vocab.SHAPES),
  "motion": 1 / len(vocab.MOTIONS),
  "background": 1 / len(vocab.BACKGROUNDS),
}


def training_sizes(cfg, geom: sizing.Geometry | None = None) -> list[tuple[int, int, int]]:
  """Where 128x128, 72x128 and 128x72 clips land under the config's token budget."""
  geom, d = geom or latent.geometry_for(cfg), cfg.data
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
    out.append(sampler.Request(p, t, h, w, seed + i))
  return out


def score_all(requests, videos) -> tuple[dict[str, float], list[dict]]:
  # "style": whether a prompt's style phrase (e.g. "hollow") is read back from the pixels.
  rows, hits = [], {k: [] for k in (*CHANCE, "style")}
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
  counts = {f"n_{k}": len(v) for k, v in hits.items() if v or k in CHANCE}
  return {**accuracy, **counts}, rows


def _json_safe(x):
  if isinstance(x, dict):
    return {k: _json_safe(v) for k, v in x.items()}
  if isinstance(x, list | tuple):
    return [_json_safe(v) for v in x]
  if isinstance(x, np.generic):
    return x.item()
  return x


def evaluate(
  run: run_lib.Run,
  data_dir: str,
  *,
  split: str = "eval",
  num_prompts: int = 48,
  sizes: list[tuple[int, int, int]] | None = None,
  steps: int | None = None,
  cfg_scale: float | None = None,
  seed: int = 0,
  output: str | None = None,
) -> dict:
  """Generates the split's held-out prompts and reads them back.

  Returns {"step", "split", "accuracy": {attribute: fraction, "n_<attribute>": count},
  "samples": [per prompt: prompt, size, what was read, hits]}; with `output`,
  also writes eval_results.json and eval_contact_sheet.png there.
  """
  prompts = eval_prompts(data_dir, split, num_prompts)
  if not prompts:
    raise sampler.RequestError(f"split {split!r} of {data_dir} has no captions")
  requests = requests_for(prompts, sizes or training_sizes(run.cfg, run.geom), seed)
  videos = run_lib.generate(run, requests, steps=steps, cfg_scale=cfg_scale)
  accuracy, rows = score_all(requests, videos)
  result = _json_safe({"step": run.step, "split": split, "accuracy": accuracy, "samples": rows})
  if output:
    os.makedirs(output, exist_ok=True)
    with open(os.path.join(output, "eval_results.json"), "w") as f:
      json.dump(result, f, indent=2)
    items = [
      (v, f"{r['prompt']} -> {r['read']['color']} {r['read']['shape']} {r['read']['motion'] or ''}")
      for v, r in zip(videos, rows, strict=True)
    ]
    media.write_png(
      os.path.join(output, "eval_contact_sheet.png"), contact_sheet.contact_sheet(items)
    )
  return result
