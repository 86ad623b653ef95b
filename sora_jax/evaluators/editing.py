"""Editing: fidelity, seams and continuity of image animation, extension both ways and loops.

For clips of a split of the built-in dataset (videos whose caption names a
motion), each mode is run with the clip's own caption:

  animate           the clip's first frame held at frame 0
  extend_forward    the clip's first half kept, the rest generated
  extend_backward   the clip's second half kept, the first generated
  loop              the first frame held at both ends
  storyboard        no media: the caption on the first half of the frames, and the same
                    caption with another direction on the second half
  blend             the clip (A) and the next clip (B) along 0:0,0.4:0,0.6:1,1:1, each
                    clip's caption on its half
  recut             the clip's first half retimed to the whole length (slow motion) as a
                    starting point at keep 0.5, under its caption
  remix@K           the clip as a starting point at keep K (0, 0.25, 0.5, 0.75, 1) under
                    its caption with another colour

and measured:

  fidelity     PSNR of the kept frames against what was given (pixel space: exact,
               reported as 100 dB; latent space: beside the autoencoder's own
               reconstruction PSNR of the same frames, `fidelity_reference`)
  seam         the mean absolute frame difference across each given/generated
               boundary (and, for loops, from the last frame to the first) over the
               median adjacent-frame difference inside the generated part; 1 = as
               smooth as the generated motion itself (aim <= 1.5); `seam_baseline`:
               the same measure at the same frames of plain text-to-video of the
               prompt (what the model's patches in time leave without any edit)
  continuity   colour and motion read back (data_pipelines.readback) from the
               generated frames alone, against the caption, which agrees with the
               given frames (aims: colour >= 90%, motion >= 60%)
  storyboard   motion read back in each window against its caption (aim >= 60% each),
               and where the switch happens: the frame k nearest the asked one at which
               the frames before read as the first motion and those after as the second
               (`switch_found`: how often there is one; `switch_error`: mean |k - asked|)
  blend        colour read back on the first and the last third: A's (`first_is_a`) and
               B's (`last_is_b`)
  recut        colour and motion read back from the whole output (`color`, `motion`) and
               how far the object's path is from the retimed clip's (`path_error`)
  remix        per keep: how often the colour is the new prompt's (`color`), and how far
               the object's path is from the source's (`path_error`: mean centroid
               distance over the frame diagonal); keep 0 should follow the prompt, keep 1
               the source, and the curve between is written as a PNG by the command
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from data_pipelines import contact_sheet, media, pipeline, readback, shards, vocab
from sora_jax.diffusion import latent
from sora_jax.evaluators import prompt_following
from sora_jax.sampling import plans, sampler
from sora_jax.sampling import run as run_lib

MODES = ("animate", "extend_forward", "extend_backward", "loop", "storyboard", "blend", "recut")
RECUT_KEEP = 0.5
# seam: at most; the others: at least.
AIMS = {"seam": 1.5, "color": 0.9, "motion": 0.6, "first_window": 0.6, "second_window": 0.6}
MOVING = ("moving left", "moving right", "moving up", "moving down")
REMIX_KEEPS = (0.0, 0.25, 0.5, 0.75, 1.0)
BLEND_CURVE = ((0.0, 0.0), (0.4, 0.0), (0.6, 1.0), (1.0, 1.0))
PSNR_EXACT = 100.0  # Reported for kept frames that come back exactly.


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
  mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
  return PSNR_EXACT if mse == 0 else min(PSNR_EXACT, 10 * np.log10(255.0**2 / mse))


def clips_with_captions(
  data_dir: str, split: str, size: tuple[int, int, int], num: int, stride: int = 3
) -> tuple[list[np.ndarray], list[str]]:
  """Up to `num` moving clips of the split (distinct captions, so each direction and
  colour shows up), cut to `size` frames at `stride` (less if short) and resized, with
  their canonical captions: the prompt agrees with the given frames."""
  t, h, w = size
  clips, prompts = [], []
  for path in shards.split_files(data_dir, split):
    for ex in shards.read_shard(path):
      caption = ex.captions[0]
      parsed = vocab.try_parse_caption(caption)  # Free text (ingested data): not readable.
      if (
        parsed is None or ex.num_frames < t or parsed["motion"] not in MOVING or caption in prompts
      ):
        continue
      frames = media.decode(ex)
      k = max(1, min(stride, (len(frames) - 1) // max(t - 1, 1)))
      clips.append(pipeline.resize_frames(frames[: (t - 1) * k + 1 : k], h, w))
      prompts.append(caption)
      if len(clips) == num:
        return clips, prompts
  return clips, prompts


def recolored(prompt: str) -> str:
  """The caption with the next colour of the vocabulary."""
  want = vocab.parse_caption(prompt)
  color = vocab.COLORS[(vocab.COLORS.index(want["color"]) + 1) % len(vocab.COLORS)]
  return vocab.caption(color, want["shape"], want["motion"], want["background"])


def centroids(video: np.ndarray) -> np.ndarray:
  """Per frame, the centre (x, y) of the pixels far from the border's median colour
  (the object on these flat backgrounds), NaN where there are none `[T, 2]`."""
  v = video.astype(np.float32)
  out = np.full((len(v), 2), np.nan)
  for i, f in enumerate(v):
    border = np.concatenate([f[0], f[-1], f[:, 0], f[:, -1]])
    mask = np.linalg.norm(f - np.median(border, axis=0), axis=-1) > 60
    if mask.any():
      ys, xs = np.nonzero(mask)
      out[i] = xs.mean(), ys.mean()
  return out


def path_error(video: np.ndarray, source: np.ndarray) -> float | None:
  """Mean distance between the object's centres in two clips, over the frame diagonal."""
  d = np.linalg.norm(centroids(video) - centroids(source), axis=-1)
  d = d[np.isfinite(d)]
  return float(d.mean() / np.hypot(*video.shape[1:3])) if len(d) else None


def plan(
  mode: str, req: sampler.Request, clip: np.ndarray, geom, other: tuple[np.ndarray, str]
) -> sampler.Request:
  """The request of `mode` on `clip` (uint8, the request's size and length); `other` is the
  next clip and its caption (blends)."""
  t = req.num_frames
  if mode.startswith("remix@"):
    keep = float(mode.split("@")[1])
    return dataclasses.replace(
      req, prompt=recolored(req.prompt), context=plans.remix(clip, t, keep, None)
    )
  if mode == "blend":
    b, b_prompt = other
    return dataclasses.replace(
      req,
      prompts=((req.prompt, 0, t // 2), (b_prompt, t // 2, t)),
      context=plans.blend(clip, b, t, BLEND_CURVE),
    )
  if mode == "recut":
    half = clip[: max(1, (t + 1) // 2)]
    return dataclasses.replace(req, context=plans.recut(half, t, RECUT_KEEP, None))
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
  mode: str, req: sampler.Request, video: np.ndarray, geom, stage, source: np.ndarray
) -> dict[str, float | bool | None]:
  """The measures of one edited video (see the module docstring); `source` is the clip."""
  if mode.startswith("remix@"):
    return {
      "color": readback.read_attributes(video)["color"] == vocab.parse_caption(req.prompt)["color"],
      "path_error": path_error(video, source),
    }
  if mode == "recut":
    want, got = vocab.parse_caption(req.prompt), readback.read_attributes(video)
    (given,) = req.context
    return {
      "color": got["color"] == want["color"],
      "motion": got["motion"] == want["motion"],
      "path_error": path_error(video, given.frames),
    }
  if mode == "blend":
    third = max(1, len(video) // 3)
    (a_prompt, _, _), (b_prompt, _, _) = req.prompts
    read = lambda v: readback.read_attributes(v)["color"]
    return {
      "first_is_a": read(video[:third]) == vocab.parse_caption(a_prompt)["color"],
      "last_is_b": read(video[-third:]) == vocab.parse_caption(b_prompt)["color"],
    }
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
  if not len(free):  # Everything given (e.g. a loop of two token frames): nothing to read.
    out.update(color=None, motion=None)
    return out
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
  writes editing_results.json, editing_contact_sheet.png and one example of every mode
  (`write_examples`) there."""
  if size is None:
    size = next(s for s in prompt_following.training_sizes(run.cfg, run.geom) if s[0] > 1)
  clips, prompts = clips_with_captions(data_dir, split, size, num_clips)
  if not clips:
    raise sampler.RequestError(
      f"split {split!r} of {data_dir} has no moving clips of at least {size[0]} frames"
    )
  base = [sampler.Request(p, *size, seed=seed + i) for i, p in enumerate(prompts)]
  requests, modes, sources, clip_of = [], [], [], []
  all_modes = MODES + tuple(f"remix@{k:g}" for k in REMIX_KEEPS)
  for i, (req, clip) in enumerate(zip(base, clips, strict=True)):
    other = (clips[(i + 1) % len(clips)], prompts[(i + 1) % len(clips)])
    for mode in all_modes:
      requests.append(plan(mode, req, clip, run.geom, other))
      modes.append(mode)
      sources.append(clip)
      clip_of.append(i)
  # Plain text-to-video of each clip's prompt: the seam measure at the same frames of a
  # clip with nothing given is the baseline (patches of several frames leave a step in
  # time at their boundaries whatever was given).
  videos = run_lib.generate(run, requests + base, steps=steps, cfg_scale=cfg_scale)
  videos, plain = videos[: len(requests)], videos[len(requests) :]
  samples = []
  for mode, req, video, src, i in zip(modes, requests, videos, sources, clip_of, strict=True):
    m = score(mode, req, video, run.geom, run.stage, src)
    if m.get("seam") is not None:
      kept = plans.frame_keep(req, run.geom) >= 1.0
      m["seam_baseline"] = seam_ratio(plain[i], kept, mode == "loop")
    samples.append({"mode": mode, "prompt": req.prompt, **m})
  summary = {}
  for mode in MODES:
    rows = [s for s in samples if s["mode"] == mode]
    summary[mode] = {"n": len(rows)}
    keys = ("fidelity", "fidelity_reference", "seam", "seam_baseline", "color", "motion")
    keys += ("first_window", "second_window", "switch_found", "switch_error")
    keys += ("first_is_a", "last_is_b", "path_error")
    for key in keys:
      vals = [float(r[key]) for r in rows if r.get(key) is not None]
      if vals:
        median = key.startswith("seam")
        summary[mode][key] = float(np.median(vals) if median else np.mean(vals))
  remix = {}
  for k in REMIX_KEEPS:
    rows = [s for s in samples if s["mode"] == f"remix@{k:g}"]
    errors = [r["path_error"] for r in rows if r["path_error"] is not None]
    remix[f"{k:g}"] = {
      "color": float(np.mean([r["color"] for r in rows])),
      "path_error": float(np.mean(errors)) if errors else None,
      "n": len(rows),
    }
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
    "remix": remix,
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
      contact_sheet.contact_sheet(items[: 2 * len(all_modes)]),  # Every mode on two clips.
    )
    write_examples(output, modes, requests, videos, run.cfg.sample.fps)
  return result


def write_examples(
  output: str, modes: list[str], requests: list[sampler.Request], videos, fps: float
) -> list[str]:
  """One example of every mode (the first clip's) as MODE.mp4, with what it was given
  (MODE.given-K.mp4) and its prompts in editing_prompts.json; returns the paths written."""
  os.makedirs(output, exist_ok=True)
  paths, prompts = [], {}
  for mode, req, video in zip(modes, requests, videos, strict=True):
    if mode in prompts:
      continue
    path = os.path.join(output, f"{mode}.mp4")
    media.write_mp4(path, video, fps)
    paths.append(path)
    for k, given in enumerate(req.context):
      given_path = os.path.join(output, f"{mode}.given-{k}.mp4")
      media.write_mp4(given_path, given.frames, fps)
      paths.append(given_path)
    prompts[mode] = [list(w) for w in req.prompts] if req.prompts else req.prompt
  with open(os.path.join(output, "editing_prompts.json"), "w") as f:
    json.dump(prompts, f, indent=2)
  return paths
