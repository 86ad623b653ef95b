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

from data_pipelines import (
  contact_sheet,
  describe,
  media,
  pipeline,
  readback,
  shards,
  sizing,
  vocab,
)
from sora_jax.diffusion import latent
from sora_jax.evaluators import alignment
from sora_jax.evaluators import families as families_lib
from sora_jax.sampling import expand, sampler
from sora_jax.sampling import run as run_lib

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
  # Free text (ingested data) is asked for as video.
  images = sorted(c for c in captions if _is_image(c))
  videos = sorted(c for c in captions if not _is_image(c))
  return (videos + images)[:limit]


def _is_image(caption: str) -> bool:
  """A canonical image caption (no motion); free text and video captions are videos."""
  parsed = vocab.try_parse_caption(caption)
  return parsed is not None and not parsed["motion"]


def requests_for(prompts: list[str], sizes: list[tuple[int, int, int]], seed: int):
  out = []
  for i, p in enumerate(prompts):
    t, h, w = sizes[i % len(sizes)]
    if _is_image(p):
      t = 1
    out.append(sampler.Request(p, t, h, w, seed + i))
  return out


def score_all(requests, videos, period: int = 8) -> tuple[dict[str, float], list[dict]]:
  """Accuracies of the attributes read back, plus how clean the clips are: the fraction
  with exactly one object (`one_object`) and the patch-grid score (`grid_ratio`, see
  `readback.grid_energy`; ~1 without a grid) at the patch period in pixels. The same
  accuracies per background asked (`by_background`: {background: {attribute: fraction,
  "n": prompts}}) say where a miss comes from (e.g. shape on grey but not on black)."""
  # "style": whether a prompt's style phrase (e.g. "hollow") is read back from the pixels.
  rows, hits = [], {k: [] for k in (*CHANCE, "style", "one_object")}
  per_background: dict[str, dict[str, list[bool]]] = {}
  boundary = everywhere = 0.0
  for req, video in zip(requests, videos, strict=True):
    got = readback.read_attributes(video)
    asked = vocab.try_parse_caption(req.prompt)
    if asked is None:  # Free text: nothing to read back.
      b, e = readback.grid_energy(video, period)
      boundary, everywhere = boundary + b, everywhere + e
      rows.append(
        {"prompt": req.prompt, "size": [req.num_frames, req.height, req.width], "read": got}
      )
      continue
    result = readback.score(video, req.prompt)
    background = per_background.setdefault(asked["background"], {})
    for k, ok in result.items():
      if k in hits:
        hits[k].append(ok)
      if k in CHANCE:
        background.setdefault(k, []).append(ok)
    hits["one_object"].append(got["objects"] == 1)
    b, e = readback.grid_energy(video, period)
    boundary, everywhere = boundary + b, everywhere + e
    rows.append(
      {"prompt": req.prompt, "size": [req.num_frames, req.height, req.width], "read": got, **result}
    )
  accuracy = {k: float(np.mean(v)) for k, v in hits.items() if v}
  counts = {f"n_{k}": len(v) for k, v in hits.items() if v or k in CHANCE}
  accuracy["grid_ratio"] = boundary / max(everywhere, 1e-9)
  if per_background:
    accuracy["by_background"] = {
      bg: {**{k: float(np.mean(v)) for k, v in sorted(h.items())}, "n": len(h["color"])}
      for bg, h in sorted(per_background.items())
    }
  return {**accuracy, **counts}, rows


def real_clips(data_dir: str, split: str, requests) -> list[np.ndarray]:
  """One real clip of the split per request, cut and resized to the request's size (frames
  at the pipeline's stride 3 of the demo), for the same measures as generated clips."""
  out, examples = [], []
  for path in shards.split_files(data_dir, split):
    examples.extend(shards.read_shard(path))
    if len(examples) >= 4 * len(requests):
      break
  videos = [e for e in examples if e.num_frames > 1]
  images = [e for e in examples if e.num_frames == 1] or videos
  for i, req in enumerate(requests):
    pool = videos if req.num_frames > 1 else images
    ex = pool[i % len(pool)]
    frames = media.decode(ex)
    stride = max(1, min(3, (len(frames) - 1) // max(req.num_frames - 1, 1)))
    frames = frames[: (req.num_frames - 1) * stride + 1 : stride]
    out.append(pipeline.resize_frames(frames, req.height, req.width))
  return out


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
  aims: dict[str, float] | None = None,
  expander=None,
  families: bool = False,
  probe=None,
  stage=None,
) -> dict:
  """Generates the split's held-out prompts and reads them back.

  Returns {"step", "split", "accuracy": {attribute: fraction, "n_<attribute>": count,
  "one_object", "grid_ratio"}, "real": {"one_object", "grid_ratio"} (real clips),
  ["aims": {attribute: {"aim", "met"}} when `aims` is given,]
  "samples": [per prompt: prompt, size, what was read, hits]}; with `output`,
  also writes eval_results.json and eval_contact_sheet.png there.

  With `expander` (sora_jax.sampling.expand), each prompt is expanded into a descriptive
  caption before generation and scored against the short prompt; the attributes only the
  expansion states (speed, start position: data_pipelines.recaption) are scored too, as
  `speed` and `start`. With `families`, the four families of video evaluation
  (sora_jax.evaluators.families) on the generated clips, real clips of the split and real
  footage: result["families"] (`python -m sora_jax.evaluate` draws families.png). `probe`: an
  alignment.Probe (default: the shipped one); `stage`: an autoencoder for its round trip.
  """
  prompts = eval_prompts(data_dir, split, num_prompts)
  if not prompts:
    raise sampler.RequestError(f"split {split!r} of {data_dir} has no captions")
  requests = requests_for(prompts, sizes or training_sizes(run.cfg, run.geom), seed)
  generate_from, said = requests, []
  if expander is not None:
    generate_from, said = expand.expand_requests(expander, requests, seed=seed)
  videos = run_lib.generate(run, generate_from, steps=steps, cfg_scale=cfg_scale)
  period = run.geom.align[1]  # The patch side in pixels.
  accuracy, rows = score_all(requests, videos, period)
  fps = float(run.cfg.sample.fps)
  if said:
    extra = {"speed": [], "start": []}
    for row, e, video in zip(rows, said, videos, strict=True):
      row["expanded"] = e["expanded"]
      stated = describe.parse_description(e["expanded"])
      facts = describe.read_facts(video, fps)
      row["stated"] = {k: stated[k] for k in extra}
      row["read_facts"] = {"speed": facts.speed, "start": facts.start}
      if stated["speed"] and len(video) > 1:
        extra["speed"].append(facts.speed == stated["speed"])
      if stated["start"]:
        extra["start"].append(facts.start == stated["start"])
    for k, v in extra.items():
      accuracy[k] = float(np.mean(v)) if v else None
      accuracy[f"n_{k}"] = len(v)
  # The same measures on real clips of the split at the same sizes: the reference.
  real, _ = score_all(requests, real_clips(data_dir, split, requests), period)
  reference = {k: real.get(k) for k in ("one_object", "grid_ratio")}
  result = {"step": run.step, "split": split, "accuracy": accuracy, "real": reference}
  if aims:  # What the caller hoped for, and whether each attribute reached it.
    result["aims"] = {
      k: {"aim": a, "met": bool(accuracy.get(k, 0.0) >= a)} for k, a in sorted(aims.items())
    }
  if families:
    real, real_prompts = families_lib.real_clips(data_dir, split, requests)
    result["families"] = families_lib.evaluate(
      videos,
      prompts,
      real,
      real_prompts,
      fps=fps,
      period=period,
      probe=probe if probe is not None else alignment.Probe(),
      stage=stage,
      asked_speeds=families_lib.asked_speeds([e["expanded"] for e in said]) if said else None,
      footage=families_lib.footage_clips([(r.num_frames, r.height, r.width) for r in requests]),
    )
  result = _json_safe({**result, "samples": rows})
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
