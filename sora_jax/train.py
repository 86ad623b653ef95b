r"""Trains a text-to-video diffusion transformer on packed spacetime patches.

  python -m sora_jax.train --config=experiments/demo.py --workdir=DIR \
      [--config.data.data_dir=DATA] [--config.train.num_steps=N] ...

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
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags, logging
from ml_collections import config_flags

from data_pipelines import pipeline, shards
from data_pipelines import tokenizer as tokenizer_lib
from sora_jax import (
  checkpointing,
  config_lib,
  factory,
  flops,
  flow,
  input_pipeline,
  metrics,
  optim,
  sharding,
)

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Experiment config file.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and the config.")


class TrainingError(RuntimeError):
  """Training cannot go on; the message says why and what is intact."""


def load_tokenizer(cfg) -> tokenizer_lib.Tokenizer:
  if cfg.data.tokenizer:
    return tokenizer_lib.Tokenizer(cfg.data.tokenizer)
  return tokenizer_lib.load(cfg.data.data_dir)


def train(cfg, workdir: str) -> dict[str, float]:
  """Runs (or resumes) training; returns the last logged metrics."""
  # ----------------------------------------------------------------------------
  # Config and mesh.
  # ----------------------------------------------------------------------------
  config_lib.validate(cfg)
  mesh = sharding.make_mesh(cfg.mesh)
  rules = tuple(cfg.sharding.rules)
  config_lib.check_batch_layout(cfg, mesh, jax.process_count())
  is_writer = jax.process_index() == 0
  logging.info(
    "mesh %s over %d devices (%d processes)", dict(mesh.shape), mesh.size, jax.process_count()
  )

  # ----------------------------------------------------------------------------
  # Workdir: the config and tokenizer travel with the checkpoints.
  # ----------------------------------------------------------------------------
  tokenizer = load_tokenizer(cfg)
  if is_writer:
    os.makedirs(workdir, exist_ok=True)
    shards.atomic_write_json(os.path.join(workdir, "config.json"), config_lib.to_json(cfg))
    shutil.copyfile(tokenizer.model_path, os.path.join(workdir, tokenizer_lib.MODEL_NAME))
  writer = metrics.Writer(os.path.join(workdir, "tensorboard"))

  # ----------------------------------------------------------------------------
  # Input pipeline: this process's shard, assembled into global arrays.
  # ----------------------------------------------------------------------------
  stage = factory.stage(cfg)
  dataset = input_pipeline.make_dataset(
    cfg, tokenizer, stage, jax.process_index(), jax.process_count()
  )
  dit_cfg = factory.dit_config(cfg, tokenizer.vocab_size)
  model = factory.Model(dit_cfg, mesh, rules)
  counts = flops.param_counts(model.abstract_params)

  def to_device(local_batch):
    useful = flops.step_flops(local_batch, counts, dit_cfg) * jax.process_count()
    real = int((local_batch["segment_ids"] > 0).sum()) * jax.process_count()
    return sharding.global_batch(local_batch, mesh, rules), useful, real

  data_iter = input_pipeline.BatchIterator(dataset, transform=to_device)

  # ----------------------------------------------------------------------------
  # Model, optimizer and train state.
  # ----------------------------------------------------------------------------
  num_steps = cfg.train.num_steps
  tx, lr_schedule = optim.make(cfg.optim, num_steps)
  flow_cfg = factory.flow_config(cfg)
  num_segments = factory.num_segments(cfg)
  logging.info(
    "model: %s parameters (%s per video token, %s per caption token)",
    f"{counts['total']:,}",
    f"{counts['video']:,}",
    f"{counts['text']:,}",
  )

  def init_state(params):
    return {
      "step": jnp.zeros((), jnp.int32),
      "params": params,
      "opt_state": tx.init(params),
      "nonfinite_step": jnp.full((), -1, jnp.int32),
    }

  with jax.set_mesh(mesh):
    abstract_state = jax.eval_shape(init_state, model.abstract_params)
    opt_shardings = _follow_param_shardings(
      abstract_state["opt_state"], model.param_shardings, mesh
    )
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  state_shardings = {
    "step": replicated,
    "params": model.param_shardings,
    "opt_state": opt_shardings,
    "nonfinite_step": replicated,
  }
  abstract_state = jax.tree.map(
    lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_state, state_shardings
  )

  # ----------------------------------------------------------------------------
  # Checkpoints: resume from the latest, or start fresh.
  # ----------------------------------------------------------------------------
  mngr = checkpointing.manager(
    workdir, keep=cfg.train.keep_checkpoints, async_save=cfg.train.async_checkpointing
  )
  start = mngr.latest_step()
  if start is not None:
    logging.info("resuming from step %d in %s", start, workdir)
    state, ema = checkpointing.restore_train(
      mngr, start, abstract_state, model.abstract_params, data_iter
    )
  else:
    start = 0
    params = model.init(cfg.seed)
    with jax.set_mesh(mesh):
      state = jax.jit(init_state, out_shardings=state_shardings)(params)
    ema = jax.tree.map(jnp.copy, params)

  # ----------------------------------------------------------------------------
  # The update step.
  # ----------------------------------------------------------------------------
  base_key = jax.random.key(cfg.seed)
  ema_decay = float(cfg.optim.ema_decay)

  def train_step(state, ema, batch):
    step = state["step"] + 1
    rng = jax.random.fold_in(base_key, step)

    def loss_of(params):
      return flow.loss_fn(model.merge(params), batch, rng, flow_cfg, num_segments)

    (loss, aux), grads = jax.value_and_grad(loss_of, has_aux=True)(state["params"])
    grad_norm = optax.global_norm(grads)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    new_state = {
      "step": step,
      "params": keep(params, state["params"]),
      "opt_state": keep(opt_state, state["opt_state"]),
      "nonfinite_step": jnp.where(
        (state["nonfinite_step"] < 0) & ~finite, step, state["nonfinite_step"]
      ),
    }
    new_ema = keep(optim.ema_update(ema, params, step, ema_decay), ema)
    out = {
      "loss": loss,
      "grad_norm": grad_norm,
      "param_norm": optax.global_norm(state["params"]),
      "update_norm": optax.global_norm(updates),
      "lr": lr_schedule(state["step"]),
      "examples": aux["num_examples"],
    }
    return new_state, new_ema, out

  batch_shardings = {
    k: jax.sharding.NamedSharding(mesh, sharding.spec(("batch",), rules, mesh))
    for k in pipeline.BATCH_KEYS
  }
  with jax.set_mesh(mesh):
    step_fn = jax.jit(
      train_step,
      in_shardings=(state_shardings, model.param_shardings, batch_shardings),
      out_shardings=(state_shardings, model.param_shardings, None),
      donate_argnums=(0, 1),
    )

  # ----------------------------------------------------------------------------
  # The loop.
  # ----------------------------------------------------------------------------
  peak, peak_source = flops.device_peak_flops(dtype=dit_cfg.compute_dtype)
  logging.info("peak %.1f TFLOP/s per device (%s)", peak / 1e12, peak_source)
  row_tokens = cfg.train.global_batch_size * cfg.data.seq_len
  config_json = config_lib.to_json(cfg)

  def check_finite(step: int) -> None:
    bad = int(jax.device_get(state["nonfinite_step"]))
    if bad >= 0:
      mngr.wait_until_finished()
      last = mngr.latest_step()
      raise TrainingError(
        f"non-finite loss or gradient at step {bad}; stopped at step {step} without saving. "
        f"The last good checkpoint ({'step ' + str(last) if last is not None else 'none'}) "
        "is intact; lower config.optim.lr or raise config.optim.warmup_steps."
      )

  window, window_flops, window_real, timed_steps, t0 = [], 0.0, 0, 0, None
  last: dict[str, float] = {}
  profile_start = start + 2 if cfg.train.profile_steps and is_writer else -1
  with jax.set_mesh(mesh), sharding.axis_rules(rules):
    for step in range(start + 1, num_steps + 1):
      if step == profile_start:
        jax.profiler.start_trace(os.path.join(workdir, "profile"))
      batch, useful, real = next(data_iter)
      state, ema, out = step_fn(state, ema, batch)
      window.append(out)
      if t0 is None:  # The first step compiles: time from its end.
        jax.block_until_ready(out)
        t0 = time.perf_counter()
      else:
        timed_steps, window_flops, window_real = (
          timed_steps + 1,
          window_flops + useful,
          window_real + real,
        )
      if step == profile_start + cfg.train.profile_steps:
        jax.block_until_ready(state)
        jax.profiler.stop_trace()
      if step % cfg.train.log_every == 0 or step == num_steps:
        check_finite(step)
        host = jax.device_get(window)
        dt = time.perf_counter() - t0
        last = {k: float(np.mean([h[k] for h in host])) for k in host[0]}
        if timed_steps:
          last.update(
            step_time=dt / timed_steps,
            tokens_per_s=window_real / dt,
            real_token_fraction=window_real / (timed_steps * row_tokens),
            tflops_per_s=window_flops / dt / 1e12,
            mfu=window_flops / dt / (peak * jax.device_count()),
          )
        writer.scalars(step, last)
        writer.flush()
        window, window_flops, window_real, timed_steps = [], 0.0, 0, 0
        t0 = time.perf_counter()
      if step % cfg.train.checkpoint_every == 0 or step == num_steps:
        check_finite(step)
        checkpointing.save(mngr, step, state, ema, data_iter, config_json)

  mngr.wait_until_finished()
  mngr.close()
  data_iter.close()
  writer.close()
  return last


def _follow_param_shardings(opt_state, param_shardings, mesh):
  """Optimizer moments shard like their parameters; scalars are replicated."""
  flat_params = {
    tuple(map(str, p)): s for p, s in jax.tree_util.tree_flatten_with_path(param_shardings)[0]
  }
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

  def one(path, leaf):
    keys = tuple(map(str, path))
    for n in range(len(keys)):
      if keys[n:] in flat_params and len(leaf.shape) > 0:
        return flat_params[keys[n:]]
    return replicated

  return jax.tree_util.tree_map_with_path(one, opt_state)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments {argv[1:]}")
  if not _WORKDIR.value:
    sys.exit("error: --workdir is required")
  if _CONFIG.value is None:
    sys.exit("error: --config is required, e.g. --config=experiments/demo.py")
  try:
    last = train(_CONFIG.value, _WORKDIR.value)
  except (config_lib.ConfigError, shards.DatasetError, FileNotFoundError, TrainingError) as e:
    sys.exit(f"error: {e}")
  if jax.process_index() == 0:
    print(json.dumps({"workdir": _WORKDIR.value, **{k: round(v, 6) for k, v in last.items()}}))


if __name__ == "__main__":
  app.run(main)
