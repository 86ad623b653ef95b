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
"""

from __future__ import annotations

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
from sora_jax.sampling import run as run_lib
from sora_jax.sampling import sampler

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
  flags.DEFINE_enum("sampler", None, list(sampler.SAMPLERS), "ODE solver (default: the config's).")
  flags.DEFINE_integer("seed", 0, "Seed of the first variant; variant k uses seed + k.")
  flags.DEFINE_integer("num_variants", 1, "Videos per prompt.")
  flags.DEFINE_string("output", "out/samples", "Output directory.")
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


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments {argv[1:]}")
  if bool(FLAGS.workdir) == bool(FLAGS.model):
    sys.exit("error: pass one of --workdir=RUN or --model=EXPORT_DIR")
  cli.quiet()
  distributed.initialize_from_flags()
  cli.log_to_file(os.path.join(FLAGS.output, "logs"), "sample")
  try:
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
    videos = run_lib.generate(
      run, requests, steps=FLAGS.steps, cfg_scale=FLAGS.cfg_scale, method=FLAGS.sampler
    )
  except (
    sampler.RequestError,
    checkpointing.CheckpointError,
    adapters.ExportError,
    FileNotFoundError,
  ) as e:
    sys.exit(f"error: {e}")
  paths = write_outputs(
    FLAGS.output, requests, videos, FLAGS.fps or run.cfg.sample.fps, FLAGS.num_variants
  )
  print(
    f"{len(requests)} sample(s) from step {run.step} written to {os.path.abspath(FLAGS.output)}:"
  )
  for p in paths:
    print(f"  {p}")


if __name__ == "__main__":
  define_flags()
  cli.run(main)
