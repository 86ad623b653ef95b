"""Editing: fidelity, seams and continuity of image animation, extension both ways and loops.

For clips of a split of the built-in dataset (videos whose caption names a
motion), each mode is run with the clip's own caption:

  animate           the clip's first frame held at frame 0
  extend_forward    the clip's first half kept, the rest generated
  extend_backward   the clip's second half kept, the first generated
  loop              the first frame held at both ends

and measured:

  fidelity     PSNR of the kept frames against what was given (pixel space: exact,
               reported as 100 dB; latent space: beside the autoencoder's own
               reconstruction PSNR of the same frames, `fidelity_reference`)
  seam         the mean absolute frame difference across each given/generated
               boundary (and, for loops, from the last frame to the first) over the
               median adjacent-frame difference inside the generated part; 1 = as
               smooth as the generated motion itself (aim <= 1.5)
  continuity   colour and motion read back (data_pipelines.readback) from the
               generated frames alone, against the caption, which agrees with the
               given frames (aims: colour >= 90%, motion >= 60%)
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from data_pipelines import contact_sheet, media, pipeline, readback, vocab
from sora_jax.diffusion import latent
from sora_jax.evaluators import prompt_following
from sora_jax.sampling import plans, sampler
from sora_jax.sampling import run as run_lib

MODES = ("animate", "extend_forward", "extend_backward", "loop")
AIMS = {"seam": 1.5, "color": 0.9, "motion": 0.6}  # seam: at most; the others: at least.
PSNR_EXACT = 100.0  # Reported for kept frames that come back exactly.


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
  mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
  return PSNR_EXACT if mse == 0 else min(PSNR_EXACT, 10 * np.log10(255.0**2 / mse))


def plan(mode: str, req: sampler.Request, clip: np.ndarray, geom) -> sampler.Request:
  """The request of `mode` on `clip` (uint8, the request's size and length)."""
  t = req.num_frames
  if mode == "animate":
    return dataclasses.replace(req, context=plans.animate(clip[:1], 0, False, t))
  if mode == "loop":
    return dataclasses.replace(req, context=plans.animate(clip[:1], 0, True, t))
  half = t // 2
  if mode == "extend_forward":
    ctx, total, _ = plans.extend(clip[:half], "forward", t - half, geom)
  else:
    ctx, total, _ = plans.extend(clip[half:], "backward", half, geom)
  if total != t:  # The clip was cut to whole token frames; keep the output's length.
    raise sampler.RequestError(f"{mode}: {t} frames do not split into whole token frames")
  return dataclasses.replace(req, context=ctx)


def seam_ratio(video: np.ndarray, kept: np.ndarray, loop: bool) -> float | None:
  """Frame difference across the seams over the median inside the generated part."""
  v = video.astype(np.float32)
  diffs = np.abs(np.diff(v, axis=0)).mean(axis=(1, 2, 3))  # diffs[f]: frames f -> f + 1
  free_pairs = [diffs[f] for f in range(len(diffs)) if not kept[f] and not kept[f + 1]]
  seams = [diffs[f] for f in range(len(diffs)) if kept[f] != kept[f + 1]]
  if loop:
    seams.append(float(np.abs(v[0] - v[-1]).mean()))
  if not free_pairs or not seams:
    return None
  return float(np.mean(seams) / max(float(np.median(free_pairs)), 1e-3))


def score(
  mode: str, req: sampler.Request, video: np.ndarray, geom, stage
) -> dict[str, float | bool | None]:
  """The measures of one edited video (see the module docstring)."""
  canvas, _, _, _ = plans.given_frames(req, geom)
  kept = plans.frame_keep(req, geom) >= 1.0
  out: dict[str, float | bool | None] = {
    "fidelity": _psnr(video[kept], canvas[kept]),
    "seam": seam_ratio(video, kept, mode == "loop"),
  }
  if geom.compression != (1, 1, 1):  # The autoencoder's own round trip of the given frames.
    own = latent.to_uint8(stage.decode(stage.encode(pipeline.to_unit_range(canvas))))
    out["fidelity_reference"] = _psnr(own[: len(canvas)][kept], canvas[kept])
  free = video[~kept]
  want = vocab.parse_caption(req.prompt)
  got = readback.read_attributes(free)
  out["color"] = got["color"] == want["color"]
  out["motion"] = got["motion"] == want["motion"] if len(free) > 1 else None
  return out


def evaluate(
  run: run_lib.Run,
  data_dir: str,
  *,
  split: str = "eval",
  num_clips: int = 16,
  size: tuple[int, int, int] | None = None,
  steps: int | None = None,
  cfg_scale: float | None = None,
  seed: int = 0,
  output: str | None = None,
) -> dict:
  """Runs every mode on `num_clips` clips of `split`; returns {"step", "split", "size",
  "modes": {mode: {measure: mean, "n"}}, "aims": {...}, "samples": [...]}; with `output`,
  writes editing_results.json and editing_contact_sheet.png there."""
  prompts = [
    p
    for p in prompt_following.eval_prompts(data_dir, split, 10 * num_clips)
    if vocab.parse_caption(p)["motion"]
  ][:num_clips]
  if not prompts:
    raise sampler.RequestError(f"split {split!r} of {data_dir} has no video captions")
  if size is None:
    size = next(s for s in prompt_following.training_sizes(run.cfg, run.geom) if s[0] > 1)
  base = prompt_following.requests_for(prompts, [size], seed)
  clips = prompt_following.real_clips(data_dir, split, base)
  clips = [c for c in clips if len(c) == size[0]]
  base = base[: len(clips)]
  requests, modes = [], []
  for req, clip in zip(base, clips, strict=True):
    for mode in MODES:
      requests.append(plan(mode, req, clip, run.geom))
      modes.append(mode)
  videos = run_lib.generate(run, requests, steps=steps, cfg_scale=cfg_scale)
  samples = []
  for mode, req, video in zip(modes, requests, videos, strict=True):
    m = score(mode, req, video, run.geom, run.stage)
    samples.append({"mode": mode, "prompt": req.prompt, **m})
  summary = {}
  for mode in MODES:
    rows = [s for s in samples if s["mode"] == mode]
    summary[mode] = {"n": len(rows)}
    for key in ("fidelity", "fidelity_reference", "seam", "color", "motion"):
      vals = [float(r[key]) for r in rows if r.get(key) is not None]
      if vals:
        summary[mode][key] = float(np.median(vals) if key == "seam" else np.mean(vals))
  aims = {}
  for mode, s in summary.items():
    if "seam" in s:
      aims[f"{mode}.seam"] = {"aim": AIMS["seam"], "met": s["seam"] <= AIMS["seam"]}
    if mode != "loop":
      for key in ("color", "motion"):
        if key in s:
          aims[f"{mode}.{key}"] = {"aim": AIMS[key], "met": s[key] >= AIMS[key]}
  result = {
    "step": run.step,
    "split": split,
    "size": list(size),
    "modes": summary,
    "aims": aims,
    "samples": samples,
  }
  if output:
    os.makedirs(output, exist_ok=True)
    with open(os.path.join(output, "editing_results.json"), "w") as f:
      json.dump(result, f, indent=2)
    items = [(v, f"{m}: {r.prompt}") for m, r, v in zip(modes, requests, videos, strict=True)]
    media.write_png(
      os.path.join(output, "editing_contact_sheet.png"),
      contact_sheet.contact_sheet(items[: 4 * len(MODES)]),
    )
  return result
