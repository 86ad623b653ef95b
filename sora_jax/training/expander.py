"""Training the prompt expander (sora_jax.models.expander) on (short, descriptive) caption
pairs of a recaptioned dataset (data_pipelines.recaption).

Every pair of the split is tokenized once into a fixed array `[N, max_len]` with a mask
of the positions whose next token is descriptive; steps draw seeded random batches
from it. The loss is the mean cross-entropy of the descriptive tokens (EOS included)
given the short caption and what came before.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from data_pipelines import shards
from data_pipelines import tokenizer as tokenizer_lib
from sora_jax.core import configs
from sora_jax.model_io import expander_dir
from sora_jax.models import expander
from sora_jax.training import optim


@dataclasses.dataclass
class Pairs:
  ids: np.ndarray  # [N, max_len] int32, PAD_ID after the end
  targets: np.ndarray  # [N, max_len] bool: the next token is part of the descriptive caption


def read_pairs(data_dir: str, split: str, tok: tokenizer_lib.Tokenizer, max_len: int) -> Pairs:
  """Every (first short caption, descriptive caption) pair of the split."""
  rows, marks = [], []
  for path in shards.split_files(data_dir, split):
    for ex in shards.read_shard(path):
      for long in ex.descriptive_captions:
        seq, start = expander.sequence(
          tok.ids(ex.captions[0], max_len), tok.ids(long, max_len), max_len
        )
        row = np.full(max_len, tokenizer_lib.PAD_ID, np.int32)
        row[: len(seq)] = seq
        mark = np.zeros(max_len, bool)
        mark[start - 1 : len(seq) - 1] = True  # position i predicts token i + 1
        rows.append(row)
        marks.append(mark)
  if not rows:
    raise shards.DatasetError(
      f"split {split!r} of {data_dir} has no descriptive captions; write them first "
      f"(python -m data_pipelines.recaption --data_dir=... --output_dir={data_dir})"
    )
  return Pairs(np.stack(rows), np.stack(marks))


def loss_fn(model: expander.CaptionLM, ids: jax.Array, targets: jax.Array) -> jax.Array:
  logits = model(ids[:, :-1])
  nll = optax.softmax_cross_entropy_with_integer_labels(logits, ids[:, 1:])
  w = targets[:, :-1].astype(jnp.float32)
  return jnp.sum(nll * w) / jnp.maximum(jnp.sum(w), 1.0)


def validate(cfg: ml_collections.ConfigDict) -> None:
  configs.require(cfg.train.num_steps >= 1, "train.num_steps must be >= 1")
  configs.require(cfg.train.batch_size >= 1, "train.batch_size must be >= 1")
  configs.require(cfg.model.width % cfg.model.heads == 0, "model.width must divide by model.heads")
  configs.require(cfg.data.max_len >= 8, "data.max_len must be >= 8")
  configs.require(cfg.sample.temperature >= 0, "sample.temperature must be >= 0")


def train(
  cfg: ml_collections.ConfigDict,
  workdir: str,
  progress: Callable[[int, dict[str, float]], None] = lambda step, m: None,
) -> dict[str, Any]:
  """Trains and writes the expander directory to `workdir`; returns the losses."""
  validate(cfg)
  tok = tokenizer_lib.load(cfg.data.data_dir)
  max_len = cfg.data.max_len
  train_pairs = read_pairs(cfg.data.data_dir, cfg.data.split, tok, max_len)
  eval_pairs = read_pairs(cfg.data.data_dir, cfg.data.eval_split, tok, max_len)
  model_cfg = expander.ExpanderConfig.from_config(
    {**dict(cfg.model), "max_len": max_len}, tok.vocab_size
  )
  model = expander.CaptionLM(model_cfg, rngs=nnx.Rngs(cfg.seed))
  tx, _ = optim.make(cfg.optim, cfg.train.num_steps)
  opt = nnx.Optimizer(model, tx, wrt=nnx.Param)

  @nnx.jit
  def step(model, opt, ids, targets):
    loss, grads = nnx.value_and_grad(loss_fn)(model, ids, targets)
    opt.update(model, grads)
    return loss

  @nnx.jit
  def eval_loss(model, ids, targets):
    return loss_fn(model, ids, targets)

  def held_out() -> float:
    n = min(len(eval_pairs.ids), 256)
    return float(eval_loss(model, eval_pairs.ids[:n], eval_pairs.targets[:n]))

  rng = np.random.default_rng(cfg.seed)
  first_eval = held_out()
  history, losses, start = [], [], time.perf_counter()
  for i in range(1, cfg.train.num_steps + 1):
    pick = rng.integers(0, len(train_pairs.ids), cfg.train.batch_size)
    losses.append(step(model, opt, train_pairs.ids[pick], train_pairs.targets[pick]))
    if i % cfg.train.log_every == 0 or i == cfg.train.num_steps:
      row = {"step": i, "loss": float(np.mean(jax.device_get(losses)))}
      losses = []
      if i % cfg.train.eval_every == 0 or i == cfg.train.num_steps:
        row["eval_loss"] = held_out()
      history.append(row)
      progress(i, row)
  result = {
    "train_pairs": len(train_pairs.ids),
    "eval_pairs": len(eval_pairs.ids),
    "eval_loss_at_start": first_eval,
    "eval_loss": history[-1]["eval_loss"],
    "history": history,
    "seconds": round(time.perf_counter() - start, 1),
    "parameters": sum(int(np.prod(p.shape)) for p in jax.tree.leaves(nnx.state(model, nnx.Param))),
  }
  expander_dir.save(
    workdir,
    model,
    os.path.join(cfg.data.data_dir, tokenizer_lib.MODEL_NAME),
    {"sample": dict(cfg.sample), "train": configs.to_json(cfg), "losses": result},
  )
  return result
