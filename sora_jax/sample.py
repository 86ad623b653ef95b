r"""Generates videos and images from a trained checkpoint.

  python -m sora_jax.sample --workdir=DIR --prompt="a red circle moving left on a black background" \
      --width=72 --height=40 --num_frames=8 --output=out/samples
  python -m sora_jax.sample --model=EXPORT_DIR --preset=ADAPTER_DIR:0.8 --prompt=...

Prompts come from --prompt (repeatable) and/or --prompts_file: one prompt per
line, or JSON lines {"prompt": ..., "width": ..., "height": ..., "num_frames": ...}
to give each prompt its own size. All requests, of any size, are packed into
rows and denoised together. Writes one mp4 per video (png when num_frames = 1)
and contact_sheet.png into --output, using the EMA parameters of the latest
(or --step) checkpoint, or the weights of an exported model directory (--model,
from sora_jax.export: no workdir needed). --preset applies LoRA adapters
(style presets), each at its scale (default 1), merged into the weights.

Editing (one model, one sampler; see sora_jax/sampling/plans.py):

  --image=PATH[@FRAME]                  animate an image held at FRAME (default 0)
  --video=PATH --extend=forward|backward  add --num_frames new frames after/before the clip
  --loop                                the output ends where it starts (alone, or with
                                        --image / --video --extend)
  --video=PATH [--keep=K | --keep_curve=0:1,1:0]
                                        remix: the clip as a starting point under the new
                                        prompt (keep 1 = unchanged, 0 = ignored)
  --video=PATH --recut --num_frames=T [--width=W --height=H] [--keep=K]
                                        re-cut: the clip retimed to T frames and resized,
                                        regenerated from it (a low keep upscales)
  --blend=A,B [--curve=0:0,0.4:0,0.6:1,1:1] [--blend_strength=S]
                                        follow clip A, then B, as the curve says (0 = A,
                                        1 = B); frames near 0.5 are generated to connect them

  --storyboard=FILE.json                prompts on time windows, images and clips placed on
                                        the timeline:
      {"width": 64, "height": 64, "num_frames": 16, "fps": 8, "seed": 0, "loop": false,
       "prompts": [{"text": "...", "start": 0, "end": 8}, {"text": "...", "start": 8, "end": 16}],
       "media": [{"path": "first.png", "start": 0, "keep": 1.0}]}
    Frames count output frames, windows are [start, end) and may not overlap; a frame in
    no window sees the first prompt. Media paths are relative to the file; an image is
    held over its patch, a clip ("stride": k takes every k-th frame) runs from its start.

Given media are resized to --width x --height; --video_frames and --video_stride
choose the clip's frames (the last ones when extending forward).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
from collections.abc import Sequence

import numpy as np
from absl import flags

from data_pipelines import contact_sheet, media
from sora_jax.core import checkpointing, cli, distributed
from sora_jax.model_io import adapters
from sora_jax.sampling import expand, plans, sampler
from sora_jax.sampling import run as run_lib

FLAGS = flags.FLAGS


def define_flags() -> None:
  flags.DEFINE_string("workdir", None, "Training workdir holding checkpoints/.")
  flags.DEFINE_string("model", None, "An exported model directory (instead of --workdir).")
  flags.DEFINE_multi_string("preset", [], "A LoRA adapter directory[:scale]; repeat to stack.")
  flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
  distributed.define_flags()
  flags.DEFINE_multi_string("prompt", [], "A prompt; repeat the flag for several.")
  flags.DEFINE_string("prompts_file", None, "Prompts, one per line, or JSON lines with sizes.")
  flags.DEFINE_integer("width", 64, "Width in pixels.")
  flags.DEFINE_integer("height", 64, "Height in pixels.")
  flags.DEFINE_integer("num_frames", 8, "Frames (1 = an image).")
  flags.DEFINE_float("fps", None, "Frames per second of the mp4 (default: the config's).")
  flags.DEFINE_integer("steps", None, "Sampling steps (default: the config's).")
  flags.DEFINE_float("cfg_scale", None, "Classifier-free guidance scale; 1 = off.")
  flags.DEFINE_float(
    "frames_cfg_scale", None, "Editing: guidance over the given frames; 1 = off (the config's)."
  )
  flags.DEFINE_enum(
    "sampler", None, list(sampler.SAMPLERS), "Solver (default: the config's sample.sampler)."
  )
  flags.DEFINE_float(
    "eta", None, "The stochastic solver's share of fresh noise, 0-1 (default: sample.eta)."
  )
  flags.DEFINE_integer("seed", 0, "Seed of the first variant; variant k uses seed + k.")
  flags.DEFINE_integer("num_variants", 1, "Videos per prompt.")
  flags.DEFINE_string("output", "out/samples", "Output directory.")
  flags.DEFINE_string("image", None, "Animate this image: PATH or PATH@FRAME (default frame 0).")
  flags.DEFINE_string("video", None, "A clip to extend (--extend) or remix (--keep).")
  flags.DEFINE_enum("extend", None, ["forward", "backward"], "Extend --video; adds --num_frames.")
  flags.DEFINE_bool("loop", False, "The output ends where it starts.")
  flags.DEFINE_float("keep", 0.5, "Remix: how much of --video to keep (0..1).")
  flags.DEFINE_string("keep_curve", None, "Remix: keep over output time, e.g. 0:1,0.5:0.3,1:0.")
  flags.DEFINE_string("storyboard", None, "A storyboard JSON file (see the module docstring).")
  flags.DEFINE_list("blend", None, "A,B: two clips blended along --curve.")
  flags.DEFINE_string(
    "curve", "0:0,0.4:0,0.6:1,1:1", "Blend: how much of B (vs A) each frame follows, over time."
  )
  flags.DEFINE_float(
    "blend_strength", 1.0, "Blend: the keep of the clips where the curve is 0 or 1."
  )
  flags.DEFINE_bool(
    "recut", False, "With --video: retime the clip to --num_frames and remix it at --keep."
  )
  flags.DEFINE_integer("video_frames", 0, "Frames of --video to use (0: all).")
  flags.DEFINE_integer("video_stride", 1, "Take every k-th frame of --video.")
  flags.DEFINE_bool(
    "expand_prompt",
    False,
    "Expand each prompt into a descriptive caption first (--expander, or the config's "
    "sample.expander); the expansions are printed and saved in OUTPUT/prompts.json.",
  )
  flags.DEFINE_string(
    "expander",
    None,
    "A trained expander directory (sora_jax.train_expander) or command:PROGRAM ARGS "
    "(sora_jax/sampling/expand.py); default: the config's sample.expander.",
  )
  flags.DEFINE_string(
    "autoencoder",
    None,
    "For latent-space runs: the autoencoder workdir that decodes the latents "
    "(default: the copy saved beside the checkpoints, WORKDIR/autoencoder).",
  )


def read_requests(
  prompts: Sequence[str],
  prompts_file: str | None,
  size: tuple[int, int, int],
  seed: int,
  variants: int,
) -> list[sampler.Request]:
  """Requests from flags; raises RequestError naming the flag on bad input."""
  frames, height, width = size
  items = [(p, frames, height, width) for p in prompts]
  if prompts_file:
    if not os.path.isfile(prompts_file):
      raise sampler.RequestError(f"--prompts_file={prompts_file}: no such file")
    with open(prompts_file, encoding="utf-8", errors="replace") as f:
      lines = [ln.strip() for ln in f if ln.strip()]
    if not lines:
      raise sampler.RequestError(f"--prompts_file={prompts_file} holds no prompts")
    for i, line in enumerate(lines, 1):
      if line.startswith("{"):
        try:
          d = json.loads(line)
          items.append(
            (
              str(d["prompt"]),
              int(d.get("num_frames", frames)),
              int(d.get("height", height)),
              int(d.get("width", width)),
            )
          )
        except (ValueError, KeyError, TypeError) as e:
          raise sampler.RequestError(f"--prompts_file line {i}: bad JSON request ({e})") from None
      else:
        items.append((line, frames, height, width))
  if not items:
    raise sampler.RequestError("no prompts: pass --prompt=... or --prompts_file=FILE")
  if variants < 1:
    raise sampler.RequestError(f"--num_variants={variants}: must be at least 1")
  for _, t, h, w in items:
    if t <= 0 or h <= 0 or w <= 0:
      raise sampler.RequestError(f"sizes must be positive; got num_frames={t} height={h} width={w}")
  return [sampler.Request(p, t, h, w, seed + k) for p, t, h, w in items for k in range(variants)]


def plan_requests(requests: list[sampler.Request], geom) -> tuple[list[sampler.Request], list[str]]:
  """The editing mode the flags ask for, applied to every request; (requests, notes)."""
  if sum(map(bool, (FLAGS.image, FLAGS.video, FLAGS.blend))) > 1:
    raise sampler.RequestError("pass one of --image, --video and --blend")
  if FLAGS.extend and not FLAGS.video:
    raise sampler.RequestError("--extend needs --video=PATH")
  remix_flags = FLAGS["keep"].present or FLAGS.keep_curve
  if remix_flags and (not FLAGS.video or FLAGS.extend):
    raise sampler.RequestError("--keep and --keep_curve remix a --video (without --extend)")
  if FLAGS.recut and (not FLAGS.video or FLAGS.extend):
    raise sampler.RequestError("--recut goes with --video (without --extend)")
  if FLAGS.video_stride < 1 or FLAGS.video_frames < 0:
    raise sampler.RequestError("--video_stride must be >= 1 and --video_frames >= 0")
  notes = []
  out = []
  if FLAGS.image:
    path, frame = plans.split_frame(FLAGS.image, "--image")
    image = plans.read_image(path)
    for r in requests:
      ctx = plans.animate(image, 0 if frame is None else frame, FLAGS.loop, r.num_frames)
      out.append(dataclasses.replace(r, context=ctx))
    return out, notes
  if FLAGS.blend:
    if len(FLAGS.blend) != 2:
      raise sampler.RequestError(f"--blend={','.join(FLAGS.blend)}: give two clips, A,B")
    if FLAGS.loop:
      raise sampler.RequestError("--loop goes with --image, --video --extend, or no media")
    a, b = (plans.read_video(p, f"--blend {n}") for p, n in zip(FLAGS.blend, "AB", strict=True))
    a, b = a[:: FLAGS.video_stride], b[:: FLAGS.video_stride]
    curve = plans.parse_curve(FLAGS.curve, "--curve")
    for r in requests:
      ctx = plans.blend(a, b, r.num_frames, curve, FLAGS.blend_strength)
      out.append(dataclasses.replace(r, context=ctx))
    return out, notes
  if not FLAGS.video:
    return [dataclasses.replace(r, loop=FLAGS.loop) for r in requests], notes
  clip = plans.read_video(FLAGS.video)[:: FLAGS.video_stride]
  if FLAGS.video_frames:
    forward = FLAGS.extend == "forward"
    clip = clip[-FLAGS.video_frames :] if forward else clip[: FLAGS.video_frames]
  if FLAGS.extend:
    for r in requests:
      ctx, total, note = plans.extend(clip, FLAGS.extend, r.num_frames, geom, FLAGS.loop)
      out.append(dataclasses.replace(r, num_frames=total, context=ctx))
    notes += [note] if note else []
    return out, notes
  if FLAGS.loop:
    raise sampler.RequestError("--loop goes with --image, --video --extend, or no media")
  curve = plans.parse_curve(FLAGS.keep_curve) if FLAGS.keep_curve else None
  edit = plans.recut if FLAGS.recut else plans.remix
  for r in requests:
    out.append(dataclasses.replace(r, context=edit(clip, r.num_frames, FLAGS.keep, curve)))
  return out, notes


def output_name(index: int, req: sampler.Request, variants: int) -> str:
  slug = re.sub(r"[^a-z0-9]+", "_", req.prompt.lower()).strip("_")[:60] or "empty"
  suffix = f"_v{index % variants}" if variants > 1 else ""
  return f"{index // variants:03d}_{slug}{suffix}." + ("png" if req.num_frames == 1 else "mp4")


def write_outputs(
  output: str, requests: list[sampler.Request], videos: list[np.ndarray], fps: float, variants: int
) -> list[str]:
  os.makedirs(output, exist_ok=True)
  paths = []
  for i, (req, video) in enumerate(zip(requests, videos, strict=True)):
    path = os.path.join(output, output_name(i, req, variants))
    if req.num_frames == 1:
      media.write_png(path, video[0])
    else:
      media.write_mp4(path, video, fps)
    paths.append(path)
  sheet = contact_sheet.contact_sheet(
    [(v, r.prompt) for r, v in zip(requests, videos, strict=True)]
  )
  sheet_path = os.path.join(output, "contact_sheet.png")
  media.write_png(sheet_path, sheet)
  return paths + [sheet_path]


def storyboard_requests(geom) -> tuple[list[sampler.Request], float | None]:
  """--storyboard's requests (--num_variants seeds from its own) and its fps."""
  if FLAGS.prompt or FLAGS.prompts_file or FLAGS.image or FLAGS.video or FLAGS.blend:
    raise sampler.RequestError("--storyboard holds its prompts and media; pass no other")
  if FLAGS.num_variants < 1:
    raise sampler.RequestError(f"--num_variants={FLAGS.num_variants}: must be at least 1")
  sb = plans.read_storyboard(FLAGS.storyboard, geom)
  req = sampler.Request(
    sb.prompts[0][0],
    sb.num_frames,
    sb.height,
    sb.width,
    context=sb.context,
    loop=sb.loop,
    prompts=sb.prompts,
  )
  return [dataclasses.replace(req, seed=sb.seed + k) for k in range(FLAGS.num_variants)], sb.fps


def expand_prompts(run, requests: list[sampler.Request]) -> tuple[list, list[dict]]:
  """--expand_prompt: the requests with expanded prompts, and what each became."""
  spec = FLAGS.expander or run.cfg.sample.get("expander")
  if not spec:
    raise sampler.RequestError(
      "--expand_prompt needs --expander=DIR (python -m sora_jax.train_expander) or "
      "--expander=command:PROGRAM, or sample.expander in the run's config"
    )
  expanded, said = expand.expand_requests(expand.load(spec), requests, seed=FLAGS.seed)
  for e in said[:: max(1, FLAGS.num_variants)]:
    cli.say(f"prompt: {e['prompt']!r}\n  expanded: {e['expanded']!r}")
  return expanded, said


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments {argv[1:]}")
  if bool(FLAGS.workdir) == bool(FLAGS.model):
    sys.exit("error: pass one of --workdir=RUN or --model=EXPORT_DIR")
  cli.quiet()
  distributed.initialize_from_flags()
  cli.log_to_file(os.path.join(FLAGS.output, "logs"), "sample")
  fps = None
  try:
    if not FLAGS.storyboard:
      requests = read_requests(
        FLAGS.prompt,
        FLAGS.prompts_file,
        (FLAGS.num_frames, FLAGS.height, FLAGS.width),
        FLAGS.seed,
        FLAGS.num_variants,
      )
    presets = [adapters.parse_spec(p) for p in FLAGS.preset]
    run = run_lib.load(
      FLAGS.workdir or FLAGS.model, FLAGS.step, autoencoder=FLAGS.autoencoder, presets=presets
    )
    if FLAGS.storyboard:
      requests, fps = storyboard_requests(run.geom)
      notes = []
    else:
      requests, notes = plan_requests(requests, run.geom)
    for note in notes:
      cli.say(f"note: {note}")
    asked, expansions = requests, []
    if FLAGS.expand_prompt:
      requests, expansions = expand_prompts(run, requests)
    videos = run_lib.generate(
      run,
      requests,
      steps=FLAGS.steps,
      cfg_scale=FLAGS.cfg_scale,
      method=FLAGS.sampler,
      frames_cfg_scale=FLAGS.frames_cfg_scale,
      eta=FLAGS.eta,
    )
  except (
    sampler.RequestError,
    checkpointing.CheckpointError,
    adapters.ExportError,
    expand.ExpandError,
    FileNotFoundError,
  ) as e:
    sys.exit(f"error: {e}")
  paths = write_outputs(
    FLAGS.output, asked, videos, FLAGS.fps or fps or run.cfg.sample.fps, FLAGS.num_variants
  )
  if expansions:
    names = [os.path.basename(p) for p in paths]
    with open(os.path.join(FLAGS.output, "prompts.json"), "w") as f:
      json.dump([{"file": n, **e} for n, e in zip(names, expansions, strict=False)], f, indent=2)
    paths.append(os.path.join(FLAGS.output, "prompts.json"))
  print(
    f"{len(requests)} sample(s) from step {run.step} written to {os.path.abspath(FLAGS.output)}:"
  )
  for p in paths:
    print(f"  {p}")


if __name__ == "__main__":
  define_flags()
  cli.run(main)
