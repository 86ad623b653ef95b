r"""Trains a text-to-video diffusion transformer on packed spacetime patches.

  python -m sora_jax.train --config=experiments/demo.py --workdir=DIR \
      [--config.data.data_dir=DATA] [--config.train.num_steps=N] ...
  python -m sora_jax.train --config=experiments/demo.py --workdir=DIR \
      --config.init_from=EXPORT [--config.lora.rank=8]       # fine-tune, or train an adapter

Reads top to bottom: config, mesh, workdir, input pipeline, model and optimizer,
checkpoint restore, the update step, and the loop. Rerunning the same command
resumes from the latest checkpoint in DIR.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Sequence

import jax
import numpy as np
from absl import flags, logging
from ml_collections import config_flags

from data_pipelines import shards
from data_pipelines import tokenizer as tokenizer_lib
from sora_jax.core import checkpointing, cli, configs, distributed, flops, metrics, sharding
from sora_jax.diffusion import latent
from sora_jax.model_io import adapters, model_dir
from sora_jax.models import lora
from sora_jax.training import guard, heldout, input_pipeline, validation
from sora_jax.training.preemption import Preemption, TimeLimit
from sora_jax.training.trainer import Trainer

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Flags exist only when this module runs as a program, so binaries can import each other."""
  config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
  distributed.define_flags()
  flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and the config.")


def train(cfg, workdir: str) -> dict[str, float]:
  """Runs (or resumes) training; returns the last logged metrics."""
  preemption = Preemption()  # From the start: a SIGTERM while compiling saves at step 1.
  try:
    return _train(cfg, workdir, preemption)
  finally:
    preemption.close()


def _train(cfg, workdir: str, preemption: Preemption) -> dict[str, float]:
  # ----------------------------------------------------------------------------
  # Config and mesh. Starting from an export (config.init_from), its tokenizer and
  # autoencoder are used unless the config names others.
  # ----------------------------------------------------------------------------
  base_model = None
  if cfg.get("init_from"):
    try:
      base_model = model_dir.ModelDir(cfg.init_from)
    except model_dir.ExportError as e:
      raise configs.ConfigError(f"config.init_from={cfg.init_from}: {e}") from None
    if not cfg.data.tokenizer:
      cfg.data.tokenizer = base_model.tokenizer_path
    if cfg.latent.get("kind") == "autoencoder" and not cfg.latent.autoencoder:
      cfg.latent.autoencoder = base_model.autoencoder_dir
    if cfg.latent.get("kind") == "pca" and not cfg.latent.get("pca"):
      cfg.latent.pca = base_model.stage_dir
  validation.validate(cfg)
  try:
    mesh = sharding.make_mesh(cfg.mesh)
  except ValueError as e:
    raise configs.ConfigError(f"config.mesh: {e}") from None
  rules = tuple(cfg.sharding.rules)
  validation.check_batch_layout(cfg, mesh, jax.process_count())
  is_writer = jax.process_index() == 0
  logging.info(
    "mesh %s over %d devices (%d processes)", dict(mesh.shape), mesh.size, jax.process_count()
  )

  # ----------------------------------------------------------------------------
  # Workdir: the config and tokenizer travel with the checkpoints.
  # ----------------------------------------------------------------------------
  tokenizer = input_pipeline.load_tokenizer(cfg)
  if is_writer:
    os.makedirs(workdir, exist_ok=True)
    shards.atomic_write_json(os.path.join(workdir, "config.json"), configs.to_json(cfg))
    shutil.copyfile(tokenizer.model_path, os.path.join(workdir, tokenizer_lib.MODEL_NAME))
  writer = metrics.Writer(os.path.join(workdir, "tensorboard"))

  # ----------------------------------------------------------------------------
  # Model, optimizer, train state (sora_jax.training.trainer) and the input pipeline:
  # this process's shard, assembled into global arrays in a prefetch thread.
  # ----------------------------------------------------------------------------
  trainer = Trainer(cfg, mesh, tokenizer.vocab_size)
  counts = trainer.counts
  cli.say(
    f"model: {counts['total']:,} parameters ({counts['video']:,} per video token, "
    f"{counts['text']:,} per caption token); mesh {dict(mesh.shape)} over {mesh.size} "
    f"{jax.devices()[0].platform} device(s), {jax.process_count()} process(es)"
  )
  stage = latent.stage_for(cfg)
  if is_writer and latent.copy_name(cfg.latent):
    # Sampling decodes with this copy, whatever happens to the original.
    stage.export(os.path.join(workdir, latent.copy_name(cfg.latent)))
  dataset = input_pipeline.make_dataset(
    cfg, tokenizer, stage, jax.process_index(), jax.process_count()
  )

  def to_device(local_batch):
    useful = trainer.step_flops(local_batch) * jax.process_count()
    real = int((local_batch["segment_ids"] > 0).sum()) * jax.process_count()
    return sharding.global_batch(local_batch, mesh, rules), useful, real

  data_iter = input_pipeline.BatchIterator(dataset, transform=to_device)
  # The fixed held-out set a scaling-law fit reads (config.heldout; off when rows=0).
  held_out = heldout.HeldOutLoss(cfg, trainer, tokenizer, stage) if heldout.enabled(cfg) else None

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
  elif base_model is not None:
    start = 0
    base_abstract = lora.split(trainer.model.abstract_params)[0]
    try:
      base = base_model.restore_params(base_abstract, trainer.dit_cfg)
    except model_dir.ExportError as e:
      raise configs.ConfigError(f"config.init_from={cfg.init_from}: {e}") from None
    state, ema = trainer.init(cfg.seed, base=base)
    if is_writer:  # Adapters trained here record the base they belong to.
      shards.atomic_write_json(
        os.path.join(workdir, adapters.BASE_FILE),
        {"path": base_model.path, "fingerprint": base_model.fingerprint},
      )
    cli.say(f"initialized from {base_model.path} (fingerprint {base_model.fingerprint})")
  else:
    start = 0
    state, ema = trainer.init(cfg.seed)

  # ----------------------------------------------------------------------------
  # The loop.
  # ----------------------------------------------------------------------------
  num_steps = cfg.train.num_steps
  peak, peak_source = flops.device_peak_flops(dtype=trainer.dit_cfg.compute_dtype)
  logging.info("peak %.1f TFLOP/s per device (%s)", peak / 1e12, peak_source)
  row_tokens = cfg.train.global_batch_size * cfg.data.seq_len

  meter = Meter(row_tokens, peak * jax.device_count())
  last: dict[str, float] = {}
  # Every process traces the same window into its own directory.
  profile = range(start + 2, start + 2 + cfg.train.profile_steps)
  profile_dir = os.path.join(workdir, "profile", f"process_{jax.process_index()}")
  # The wall-clock cap (config.train.time_limit_minutes) is a safety net: every process
  # takes process 0's decision, so all stop at the same step and save it together.
  deadline = TimeLimit(cfg.train.get("time_limit_minutes", 0), every=cfg.train.log_every)
  bar = cli.progress(num_steps, initial=start, desc="train")
  try:
    for step in range(start + 1, num_steps + 1):
      if profile and step == profile.start:
        jax.profiler.start_trace(profile_dir)
      batch, useful, real = next(data_iter)
      state, ema, out = trainer.step(state, ema, batch)
      meter.add(out, useful, real)
      bar.update()
      if profile and step == profile.stop - 1:
        jax.block_until_ready(state)
        jax.profiler.stop_trace()
      out_of_time = deadline.reached(step)  # Only ever at a log step.
      if step % cfg.train.log_every == 0 or step == num_steps:
        guard.check_finite(state, mngr, step)
        last = meter.flush()
        if out_of_time:
          last["time_limit_step"] = float(step)
        writer.scalars(step, last)
        writer.flush()
        bar.set_postfix(loss=f"{last['loss']:.4f}", refresh=False)
      if held_out and (step == num_steps or (cfg.heldout.every and step % cfg.heldout.every == 0)):
        last.update(held_out(state["params"]))
        writer.scalars(step, {k: v for k, v in last.items() if k.startswith("heldout_")})
        writer.flush()
      preempted = preemption.reached(step)
      if step % cfg.train.checkpoint_every == 0 or step == num_steps or preempted or out_of_time:
        guard.check_finite(state, mngr, step)
        checkpointing.save(mngr, step, state, ema, data_iter, config_json)
      if preempted:
        bar.close()
        cli.say(f"preempted: saved step {step}; exiting (rerun the command to resume)")
        break
      if out_of_time:
        bar.close()
        cli.say(
          f"time limit: config.train.time_limit_minutes={deadline.minutes:g} reached at step "
          f"{step} of {num_steps}; saved it (rerun the command to continue)"
        )
        break
  finally:  # The bar's last line comes before any error line.
    bar.close()

  mngr.wait_until_finished()
  if mngr.latest_step() is not None:
    cli.say(f"checkpoint: step {mngr.latest_step()} in {checkpointing.directory(workdir)}")
  mngr.close()
  data_iter.close()
  writer.close()
  return last


class Meter:
  """Averages step metrics between log lines and measures throughput.

  The first step after (re)start compiles, so timing starts when it finishes.
  """

  def __init__(self, row_tokens: int, peak_flops: float):
    self.row_tokens = row_tokens
    self.peak_flops = peak_flops
    self.metrics, self.flops, self.real, self.steps, self.t0 = [], 0.0, 0, 0, None

  def add(self, metrics, useful_flops: float, real_tokens: int) -> None:
    self.metrics.append(metrics)
    if self.t0 is None:
      jax.block_until_ready(metrics)
      self.t0 = time.perf_counter()
    else:
      self.flops += useful_flops
      self.real += real_tokens
      self.steps += 1

  def flush(self) -> dict[str, float]:
    host = jax.device_get(self.metrics)
    dt = time.perf_counter() - self.t0
    out = {k: float(np.mean([h[k] for h in host])) for k in host[0]}
    if self.steps:
      out.update(
        step_time=dt / self.steps,
        tokens_per_s=self.real / dt,
        real_token_fraction=self.real / (self.steps * self.row_tokens),
        tflops_per_s=self.flops / dt / 1e12,
        mfu=self.flops / dt / self.peak_flops,
      )
    self.metrics, self.flops, self.real, self.steps = [], 0.0, 0, 0
    self.t0 = time.perf_counter()
    return out


def main(argv: Sequence[str]) -> None:
  cli.require(argv, workdir="", config=", e.g. --config=experiments/demo.py")
  cli.quiet()
  distributed.initialize_from_flags()
  log_file = cli.log_to_file(os.path.join(FLAGS.workdir, "logs"), "train")
  cli.say(f"sora_jax.train: logs in {log_file}")
  try:
    last = train(FLAGS.config, FLAGS.workdir)
  except (
    configs.ConfigError,
    checkpointing.CheckpointError,
    shards.DatasetError,
    FileNotFoundError,
    guard.TrainingError,
  ) as e:
    sys.exit(f"error: {e}")
  if jax.process_index() == 0:
    print(json.dumps({"workdir": FLAGS.workdir, **{k: round(v, 6) for k, v in last.items()}}))


if __name__ == "__main__":
  define_flags()
  cli.run(main)
