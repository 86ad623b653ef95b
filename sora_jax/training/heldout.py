"""A held-out loss that scaling laws can be fitted to.

The rectified-flow loss of the trained parameters on a fixed set of packed rows
(`config.heldout`): the first `rows` rows of the `split` stream, built with the
pipeline's own packing from a fixed seed, with no caption dropout, random
resolution or token dropping; at T stratified timesteps t = (i + 0.5) / T,
unshifted, with the same noise for every run (drawn on the host from `seed`).
The loss at each t is the mean over examples of each example's mean squared
velocity error (the training objective's `flow.token_loss`); `heldout_loss` is
the mean over the T timesteps, a midpoint estimate of the loss integrated over
t in [0, 1].

Every process builds all the rows (they are few), so the rows, the noise and
hence the number do not depend on the mesh or the process count; the batch dim
is sharded over the mesh where it divides and replicated where it does not.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from sora_jax.core import sharding
from sora_jax.diffusion import flow
from sora_jax.training import input_pipeline


def enabled(cfg: ml_collections.ConfigDict) -> bool:
  return "heldout" in cfg and int(cfg.heldout.rows) > 0


def timesteps(num: int) -> np.ndarray:
  """The stratified grid t_i = (i + 0.5) / num."""
  return (np.arange(num, dtype=np.float32) + 0.5) / num


def heldout_rows(cfg: ml_collections.ConfigDict, tokenizer, stage) -> dict[str, np.ndarray]:
  """The fixed held-out rows (host arrays), the same in every process."""
  h = cfg.heldout
  c = ml_collections.ConfigDict(cfg.to_dict())
  c.train.global_batch_size = int(h.rows)
  c.data.update(
    num_shards=1,
    caption_dropout=0.0,
    word_dropout=0.0,
    min_token_fraction=1.0,
    token_drop_rate=0.0,
    num_workers=0,
  )
  stream = input_pipeline.make_dataset(c, tokenizer, stage, 0, 1, split=h.split, seed=int(h.seed))
  return next(iter(stream))


class HeldOutLoss:
  """Evaluates `heldout_loss` (and one value per timestep) for a trainer's parameters."""

  def __init__(self, cfg: ml_collections.ConfigDict, trainer: Any, tokenizer, stage):
    h = cfg.heldout
    self.trainer = trainer
    self.t_grid = timesteps(int(h.timesteps))
    rows = heldout_rows(cfg, tokenizer, stage)
    rng = np.random.default_rng(int(h.seed))
    noise = rng.standard_normal((len(self.t_grid), *rows["tokens"].shape)).astype(np.float32)
    mesh, rules = trainer.mesh, trainer.rules

    def put(x, names):
      s = sharding.named_sharding(names, rules, mesh, x.shape)
      return jax.make_array_from_callback(x.shape, s, lambda idx: x[idx])

    self.batch = {k: put(v, ("batch",) + (None,) * (v.ndim - 1)) for k, v in rows.items()}
    self.noise = put(noise, (None, "batch", None, None))
    self.num_examples = int(sum(len(np.unique(r[r > 0])) for r in rows["segment_ids"]))

    def losses(params, batch, noise, t_grid):  # -> [T]
      seg = batch["segment_ids"]

      def at(args):
        t, eps = args
        model = trainer.model.merge(
          params
        )  # Inside the loop body: nnx modules stay in their trace.
        tok = flow.token_loss(model, batch, jnp.full(seg.shape, t), eps, trainer.flow_cfg)
        return flow.segment_mean(tok, seg, trainer.num_segments)[0]

      return jax.lax.map(at, (t_grid, noise))

    self._losses = jax.jit(losses)

  def __call__(self, params) -> dict[str, float]:
    with jax.set_mesh(self.trainer.mesh), sharding.axis_rules(self.trainer.rules):
      by_t = np.asarray(jax.device_get(self._losses(params, self.batch, self.noise, self.t_grid)))
    out = {"heldout_loss": float(by_t.mean())}
    out.update({f"heldout_loss_t{t:.3f}": float(v) for t, v in zip(self.t_grid, by_t)})
    return out
