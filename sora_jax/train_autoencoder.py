r"""Trains the causal 3D video autoencoder on clips of mixed resolution and duration.

  python -m sora_jax.train_autoencoder --config=experiments/autoencoder_demo.py \
      --workdir=DIR [--config.data.data_dir=DATA] [--config.train.num_steps=N] ...

Reads top to bottom like `sora_jax.train`: config, mesh, workdir, clip stream,
model and optimizers, checkpoint restore, and the loop. Logs loss, L1, KL,
PSNR and the adversarial terms every `log_every` steps; every `eval_every`
steps the EMA parameters reconstruct the eval split (PSNR, SSIM, and
side-by-side reconstructions as TensorBoard images and a PNG in the workdir).
At the end, the latent scale and shift are estimated over training batches
and written to DIR/latent_stats.json for the diffusion pipeline. Rerunning
the same command resumes from the latest checkpoint.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence

import jax
import numpy as np
from absl import flags
from ml_collections import config_flags

from data_pipelines import clips, media, pipeline, shards
from sora_jax.core import checkpointing, cli, configs, distributed, metrics, sharding
from sora_jax.diffusion import latent
from sora_jax.training import autoencoder_trainer as aet
from sora_jax.training import guard, input_pipeline, validation
from sora_jax.training.preemption import Preemption

FLAGS = flags.FLAGS


def define_flags() -> None:
  config_flags.DEFINE_config_file("config", None, "Autoencoder config file.", lock_config=True)
  distributed.define_flags()
  flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and the config.")


def clip_batches(cfg, split: str, seed: int, *, stream: bool = False):
  """This process's clip batches of a split: random access, or a checkpointable stream."""
  source, decode = pipeline.open_source(
    cfg.data.source, cfg.data.data_dir, split, cfg.data.tfds_name
  )
  kw = dict(
    global_batch_size=cfg.train.global_batch_size,
    seed=seed,
    process_index=jax.process_index(),
    process_count=jax.process_count(),
    decode_record=decode,
  )
  opts = clips.ClipOptions.from_config(cfg.data)
  if stream:
    return clips.Stream(clips.make_dataset(source, opts, **kw))
  return clips.ClipBatches(source, opts, **kw)


def side_by_side(video: np.ndarray, recon: np.ndarray, max_clips: int = 4, max_frames: int = 5):
  """uint8 grid: for each clip, its frames on one row, the reconstruction on the next."""
  rows = []
  for v, r in zip(video[:max_clips], recon[:max_clips], strict=True):
    idx = np.linspace(0, v.shape[0] - 1, min(max_frames, v.shape[0])).round().astype(int)
    for clip in (v, r):
      frames = [latent.to_uint8(clip[i]) for i in idx]
      rows.append(np.concatenate(frames, axis=1))
  width = max(r.shape[1] for r in rows)
  rows = [np.pad(r, ((0, 2), (0, width - r.shape[1]), (0, 0))) for r in rows]
  return np.concatenate(rows, axis=0)


def train(cfg, workdir: str) -> dict[str, float]:
  preemption = Preemption()
  try:
    return _train(cfg, workdir, preemption)
  finally:
    preemption.close()


def _train(cfg, workdir: str, preemption: Preemption) -> dict[str, float]:
  # ----------------------------------------------------------------------------
  # Config and mesh.
  # ----------------------------------------------------------------------------
  validation.validate_autoencoder(cfg)
  try:
    mesh = sharding.make_mesh(cfg.mesh)
  except ValueError as e:
    raise configs.ConfigError(f"config.mesh: {e}") from None
  rules = tuple(cfg.sharding.rules)
  validation.check_batch_layout(cfg, mesh, jax.process_count())
  if cfg.data.source == "array_record":
    shards.read_manifest(cfg.data.data_dir, "config.data.data_dir")
  is_writer = jax.process_index() == 0
  if is_writer:
    os.makedirs(workdir, exist_ok=True)
    shards.atomic_write_json(os.path.join(workdir, "config.json"), configs.to_json(cfg))
  writer = metrics.Writer(os.path.join(workdir, "tensorboard"))

  # ----------------------------------------------------------------------------
  # Model, discriminator and optimizers; this process's rows of each clip batch.
  # ----------------------------------------------------------------------------
  trainer = aet.AutoencoderTrainer(cfg, mesh)
  cli.say(f"autoencoder: {trainer.num_params:,} parameters")
  train_stream = clip_batches(cfg, cfg.data.split, cfg.seed, stream=True)
  eval_batches = clip_batches(cfg, cfg.data.eval_split, cfg.seed + 1)

  def to_device(local):
    return sharding.global_batch(local, mesh, rules)["video"]

  data_iter = input_pipeline.BatchIterator(train_stream, transform=to_device)

  # ----------------------------------------------------------------------------
  # Checkpoints: resume from the latest, or start fresh.
  # ----------------------------------------------------------------------------
  config_json = configs.to_json(cfg)
  mngr = checkpointing.manager(
    workdir, keep=cfg.train.keep_checkpoints, async_save=cfg.train.async_checkpointing
  )
  start = mngr.latest_step()
  if start is not None:
    cli.say(f"resuming from step {start} in {workdir}")
    state, ema = checkpointing.restore_train(
      mngr,
      start,
      trainer.abstract_state,
      trainer.model.abstract_params,
      data_iter,
      config_json,
    )
  else:
    start = 0
    state, ema = trainer.init(cfg.seed)

  def evaluate(step: int) -> dict[str, float]:
    psnr, ssim = [], []
    for i in range(cfg.train.eval_batches):
      local = eval_batches[i]
      recon, p, s = trainer.evaluate(ema, to_device(local))
      psnr.append(p)
      ssim.append(s)
      if i == 0 and is_writer:  # Process 0's rows lead the global batch.
        grid = side_by_side(local["video"], recon)
        writer.image(step, "eval/reconstruction", grid)
        media.write_png(os.path.join(workdir, "reconstructions", f"step_{step:07d}.png"), grid)
    return {"eval_psnr": float(np.mean(psnr)), "eval_ssim": float(np.mean(ssim))}

  # ----------------------------------------------------------------------------
  # The loop.
  # ----------------------------------------------------------------------------
  num_steps = cfg.train.num_steps
  last: dict[str, float] = {}
  logged, frames, t0 = [], 0, None
  bar = cli.progress(num_steps, initial=start, desc="train_autoencoder")
  for step in range(start + 1, num_steps + 1):
    video = next(data_iter)
    state, ema, out = trainer.step(state, ema, video)
    logged.append(out)
    bar.update()
    if t0 is None:  # The first step compiles; time from its end.
      jax.block_until_ready(out)
      t0 = time.perf_counter()
    else:
      frames += int(np.prod(video.shape[:2]))
    if step % cfg.train.log_every == 0 or step == num_steps:
      guard.check_finite(state, mngr, step)
      host = jax.device_get(logged)
      last = {k: float(np.mean([h[k] for h in host])) for k in host[0]}
      dt = time.perf_counter() - t0
      last["frames_per_s"] = frames / max(dt, 1e-9)
      logged, frames, t0 = [], 0, time.perf_counter()
      if step % cfg.train.eval_every == 0 or step == num_steps:
        last.update(evaluate(step))
      writer.scalars(step, last)
      writer.flush()
      postfix = {"loss": f"{last['loss']:.4f}", "psnr": f"{last['psnr']:.1f}"}
      if "eval_psnr" in last:
        postfix["eval_psnr"] = f"{last['eval_psnr']:.1f}"
      bar.set_postfix(postfix, refresh=False)
    preempted = preemption.reached(step)
    if step % cfg.train.checkpoint_every == 0 or step == num_steps or preempted:
      guard.check_finite(state, mngr, step)
      checkpointing.save(mngr, step, state, ema, data_iter, config_json)
    if preempted:
      bar.close()
      cli.say(f"preempted: saved step {step}; exiting (rerun the command to resume)")
      break
  else:
    bar.close()
    stats = latent_statistics(trainer, ema, cfg, to_device)
    if is_writer:
      latent.write_stats(os.path.join(workdir, latent.STATS_FILE), stats, step=num_steps)
      cli.say(f"latent statistics: {os.path.join(workdir, latent.STATS_FILE)}")

  mngr.wait_until_finished()
  if mngr.latest_step() is not None:
    cli.say(f"checkpoint: step {mngr.latest_step()} in {checkpointing.directory(workdir)}")
  mngr.close()
  data_iter.close()
  writer.close()
  return last


def latent_statistics(trainer, params, cfg, to_device) -> dict:
  """Per-channel shift and scale of the latents of `train.stats_batches` training batches."""
  ds = clip_batches(cfg, cfg.data.split, cfg.seed + 2)
  stats = latent.LatentStats(trainer.ae_cfg.latent_channels)
  for i in range(cfg.train.stats_batches):
    stats.add_moments(*trainer.encode(params, to_device(ds[i])))
  return stats.to_json()


def main(argv: Sequence[str]) -> None:
  cli.require(argv, workdir="", config=", e.g. --config=experiments/autoencoder_demo.py")
  cli.quiet()
  distributed.initialize_from_flags()
  log_file = cli.log_to_file(os.path.join(FLAGS.workdir, "logs"), "train_autoencoder")
  cli.say(f"sora_jax.train_autoencoder: logs in {log_file}")
  try:
    last = train(FLAGS.config, FLAGS.workdir)
  except (
    configs.ConfigError,
    shards.DatasetError,
    FileNotFoundError,
    guard.TrainingError,
    ValueError,
  ) as e:
    sys.exit(f"error: {e}")
  if jax.process_index() == 0:
    print(json.dumps({"workdir": FLAGS.workdir, **{k: round(v, 6) for k, v in last.items()}}))


if __name__ == "__main__":
  define_flags()
  cli.run(main)
