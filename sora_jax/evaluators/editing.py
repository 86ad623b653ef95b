"""Editing: fidelity, seams and continuity of image animation, extension both ways and loops.

For clips of a split of the built-in dataset (videos whose caption names a
motion), each mode is run with the clip's own caption:

  animate           the clip's first frame held at frame 0
  extend_forward    the clip's first half kept, the rest generated
  extend_backward   the clip's second half kept, the first generated
  loop              the first frame held at both ends
  storyboard        no media: the caption on the first half of the frames, and the same
                    caption with another direction on the second half

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
  storyboard   motion read back in each window against its caption (aim >= 60% each),
               and where the switch happens: the frame k nearest the asked one at which
               the frames before read as the first motion and those after as the second
               (`switch_found`: how often there is one; `switch_error`: mean |k - asked|)
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

MODES = ("animate", "extend_forward", "extend_backward", "loop", "storyboard")
# seam: at most; the others: at least.
AIMS = {"seam": 1.5, "color": 0.9, "motion": 0.6, "first_window": 0.6, "second_window": 0.6}
MOVING = ("moving left", "moving right", "moving up", "moving down")
PSNR_EXACT = 100.0  # Reported for kept frames that come back exactly.


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
  mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
  return PSNR_EXACT if mse == 0 else min(PSNR_EXACT, 10 * np.log10(255.0**2 / mse))


def plan(mode: str, req: sampler.Request, clip: np.ndarray, geom) -> sampler.Request:
  """The request of `mode` on `clip` (uint8, the request's size and length)."""
  t = req.num_frames
  if mode == "storyboard":
    first, second = storyboard_prompts(req.prompt)
    return dataclasses.replace(req, prompts=((first, 0, t // 2), (second, t // 2, t)))
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


def storyboard_prompts(prompt: str) -> tuple[str, str]:
  """The prompt, and the same prompt with the next moving direction (left -> right -> up ->
  down -> left)."""
  want = vocab.parse_caption(prompt)
  motion = want["motion"] if want["motion"] in MOVING else MOVING[0]
  other = MOVING[(MOVING.index(motion) + 1) % len(MOVING)]
  return (
    vocab.caption(want["color"], want["shape"], motion, want["background"]),
    vocab.caption(want["color"], want["shape"], other, want["background"]),
  )


def read_switch(video: np.ndarray, first: str, second: str, asked: int) -> int | None:
  """The frame k nearest `asked` where frames [0, k) read as `first`'s motion and [k, T) as
  `second`'s, or None."""
  m1, m2 = vocab.parse_caption(first)["motion"], vocab.parse_caption(second)["motion"]
  t = len(video)
  found = [
    k
    for k in range(2, t - 1)
    if readback.read_attributes(video[:k])["motion"] == m1
    and readback.read_attributes(video[k:])["motion"] == m2
  ]
  return min(found, key=lambda k: abs(k - asked)) if found else None


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
  if mode == "storyboard":
    (first, _, k), (second, _, _) = req.prompts
    m1, m2 = vocab.parse_caption(first)["motion"], vocab.parse_caption(second)["motion"]
    switch = read_switch(video, first, second, k)
    return {
      "first_window": readback.read_attributes(video[:k])["motion"] == m1,
      "second_window": readback.read_attributes(video[k:])["motion"] == m2,
      "switch_found": switch is not None,
      "switch_error": None if switch is None else float(abs(switch - k)),
    }
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
    keys = ("fidelity", "fidelity_reference", "seam", "color", "motion")
    keys += ("first_window", "second_window", "switch_found", "switch_error")
    for key in keys:
      vals = [float(r[key]) for r in rows if r.get(key) is not None]
      if vals:
        summary[mode][key] = float(np.median(vals) if key == "seam" else np.mean(vals))
  aims = {}
  for mode, s in summary.items():
    if "seam" in s:
      aims[f"{mode}.seam"] = {"aim": AIMS["seam"], "met": s["seam"] <= AIMS["seam"]}
    if mode != "loop":
      for key in ("color", "motion", "first_window", "second_window"):
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
