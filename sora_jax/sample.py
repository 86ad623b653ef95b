r"""Generates videos and images from a trained checkpoint.

  python -m sora_jax.sample --workdir=DIR --prompt="a red circle moving left on a black background" \
      --width=72 --height=40 --num_frames=8 --output=out/samples

Prompts come from --prompt (repeatable) and/or --prompts_file: one prompt per
line, or JSON lines {"prompt": ..., "width": ..., "height": ..., "num_frames": ...}
to give each prompt its own size. All requests, of any size, are packed into
rows and denoised together. Writes one mp4 per video (png when num_frames = 1)
and contact_sheet.png into --output, using the EMA parameters of the latest
(or --step) checkpoint.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Sequence

import jax
import numpy as np
from absl import app, flags, logging

from data_pipelines import contact_sheet, media
from data_pipelines.tokenizer import MODEL_NAME, Tokenizer
from sora_jax import checkpointing, config_lib, distributed, factory, latent, sampling, sharding

FLAGS = flags.FLAGS


def define_flags() -> None:
  flags.DEFINE_string("workdir", None, "Training workdir holding checkpoints/.")
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
  flags.DEFINE_enum("sampler", None, list(sampling.SAMPLERS), "ODE solver (default: the config's).")
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
) -> list[sampling.Request]:
  """Requests from flags; raises RequestError naming the flag on bad input."""
  frames, height, width = size
  items = [(p, frames, height, width) for p in prompts]
  if prompts_file:
    if not os.path.isfile(prompts_file):
      raise sampling.RequestError(f"--prompts_file={prompts_file}: no such file")
    with open(prompts_file, encoding="utf-8", errors="replace") as f:
      lines = [ln.strip() for ln in f if ln.strip()]
    if not lines:
      raise sampling.RequestError(f"--prompts_file={prompts_file} holds no prompts")
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
          raise sampling.RequestError(f"--prompts_file line {i}: bad JSON request ({e})") from None
      else:
        items.append((line, frames, height, width))
  if not items:
    raise sampling.RequestError("no prompts: pass --prompt=... or --prompts_file=FILE")
  if variants < 1:
    raise sampling.RequestError(f"--num_variants={variants}: must be at least 1")
  for _, t, h, w in items:
    if t <= 0 or h <= 0 or w <= 0:
      raise sampling.RequestError(
        f"sizes must be positive; got num_frames={t} height={h} width={w}"
      )
  return [sampling.Request(p, t, h, w, seed + k) for p, t, h, w in items for k in range(variants)]


def output_name(index: int, req: sampling.Request, variants: int) -> str:
  slug = re.sub(r"[^a-z0-9]+", "_", req.prompt.lower()).strip("_")[:60] or "empty"
  suffix = f"_v{index % variants}" if variants > 1 else ""
  return f"{index // variants:03d}_{slug}{suffix}." + ("png" if req.num_frames == 1 else "mp4")


def generate(
  workdir: str,
  requests: list[sampling.Request],
  *,
  step: int | None = None,
  steps: int | None = None,
  cfg_scale: float | None = None,
  sampler: str | None = None,
  progress: bool = True,
  autoencoder: str | None = None,
):
  """Returns (videos uint8 [T, H, W, 3] per request, the run's config, the step).

  A latent-space run decodes with `autoencoder`, else the copy in its workdir.
  """
  step, config = checkpointing.restore_config(workdir, step)
  cfg = config_lib.from_json(config)
  tokenizer_path = os.path.join(workdir, MODEL_NAME)
  tokenizer = Tokenizer(tokenizer_path)
  if cfg.latent.get("kind") == "autoencoder" and not autoencoder:
    autoencoder = os.path.join(workdir, latent.AUTOENCODER_COPY)
    if not os.path.isdir(autoencoder):
      raise FileNotFoundError(
        f"{autoencoder}: this latent-space run has no autoencoder copy; name one with --autoencoder"
      )
  stage = factory.stage(cfg, autoencoder)
  geom = factory.geometry(cfg, stage)
  opts = factory.options(cfg)
  for r in requests:  # Fail on a bad size before restoring any weights.
    sampling.check_request(r, geom, opts)
  mesh = sharding.make_mesh({"fsdp": -1})
  rules = tuple(cfg.sharding.rules)
  model = factory.Model(factory.dit_config(cfg, tokenizer.vocab_size, geom), mesh, rules)
  params = checkpointing.restore_ema(workdir, step, model.abstract_params)
  rows = sampling.pack_requests(requests, geom, tokenizer, opts)
  logging.info(
    "%d requests packed into %d rows of %d tokens", len(requests), len(rows["tokens"]), opts.seq_len
  )
  sample = sampling.Sampler(model, params, factory.flow_config(cfg), factory.num_segments(cfg))
  with jax.set_mesh(mesh), sharding.axis_rules(rules):
    tokens = sample(
      rows,
      steps=steps or cfg.sample.steps,
      cfg_scale=cfg.sample.cfg_scale if cfg_scale is None else cfg_scale,
      method=sampler or cfg.sample.sampler,
      guidance_interval=tuple(cfg.sample.get("guidance_interval", (0.0, 1.0))),
      progress=progress,
      put=sampling.batch_put(mesh, rules),
    )
  return sampling.unpack(rows, tokens, requests, geom, stage), cfg, step


def write_outputs(
  output: str, requests: list[sampling.Request], videos: list[np.ndarray], fps: float, variants: int
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
  if not FLAGS.workdir:
    sys.exit("error: --workdir is required")
  distributed.initialize_from_flags()
  try:
    requests = read_requests(
      FLAGS.prompt,
      FLAGS.prompts_file,
      (FLAGS.num_frames, FLAGS.height, FLAGS.width),
      FLAGS.seed,
      FLAGS.num_variants,
    )
    videos, cfg, step = generate(
      FLAGS.workdir,
      requests,
      step=FLAGS.step,
      steps=FLAGS.steps,
      cfg_scale=FLAGS.cfg_scale,
      sampler=FLAGS.sampler,
      autoencoder=FLAGS.autoencoder,
    )
  except (sampling.RequestError, checkpointing.CheckpointError, FileNotFoundError) as e:
    sys.exit(f"error: {e}")
  paths = write_outputs(
    FLAGS.output, requests, videos, FLAGS.fps or cfg.sample.fps, FLAGS.num_variants
  )
  print(f"{len(requests)} sample(s) from step {step} written to {os.path.abspath(FLAGS.output)}:")
  for p in paths:
    print(f"  {p}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
