"""A trained diffusion run, loaded for inference: `load(workdir, step)`, then `generate`.

  run = load("out/demo/run")                    # config, tokenizer, latent stage, model
  videos = generate(run, [Request(...), ...])   # uint8 [T, H, W, 3] per request

The EMA parameters are restored on first use of `run.params`, so a bad request
fails before any weight is read. A latent-space run decodes with the
autoencoder copy saved beside its checkpoints (WORKDIR/autoencoder), or with
the one `autoencoder=` names.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from absl import logging

from data_pipelines import pipeline
from data_pipelines.tokenizer import MODEL_NAME, Tokenizer
from sora_jax.core import checkpointing, configs, sharding
from sora_jax.core.sharded_model import ShardedModel
from sora_jax.diffusion import flow, latent
from sora_jax.models import dit
from sora_jax.sampling import sampler


class Run:
  """Everything inference needs from a workdir; see the module docstring."""

  def __init__(
    self,
    workdir: str,
    step: int | None = None,
    *,
    autoencoder: str | None = None,
    mesh: jax.sharding.Mesh | None = None,
  ):
    self.workdir = workdir
    self.step, self.config_json = checkpointing.restore_config(workdir, step)
    self.cfg = configs.from_json(self.config_json)
    self.tokenizer = Tokenizer(os.path.join(workdir, MODEL_NAME))
    if self.cfg.latent.get("kind") == "autoencoder" and not autoencoder:
      autoencoder = os.path.join(workdir, latent.AUTOENCODER_COPY)
      if not os.path.isdir(autoencoder):
        raise FileNotFoundError(
          f"{autoencoder}: this latent-space run has no autoencoder copy; name one with "
          "--autoencoder"
        )
    self.stage = latent.stage_for(self.cfg, autoencoder)
    self.geom = latent.geometry_for(self.cfg, self.stage)
    self.opts = pipeline.Options.from_config(self.cfg.data)
    self.flow_cfg = flow.FlowConfig.from_config(self.cfg.flow)
    self.mesh = mesh or sharding.make_mesh({"fsdp": -1})
    self.rules = tuple(self.cfg.sharding.rules)
    dit_cfg = dit.DiTConfig.from_config(
      self.cfg.model, self.geom.patch_dim, self.tokenizer.vocab_size, dit.packing_of(self.cfg.data)
    )
    self.model = ShardedModel(dit_cfg, self.mesh, self.rules, dit.DiT)
    self._params = None

  @property
  def params(self) -> Any:
    """The EMA parameters on the run's mesh (restored on first use)."""
    if self._params is None:
      self._params = checkpointing.restore_ema(self.workdir, self.step, self.model.abstract_params)
    return self._params


def load(
  workdir: str,
  step: int | None = None,
  *,
  autoencoder: str | None = None,
  mesh: jax.sharding.Mesh | None = None,
) -> Run:
  """The run in `workdir` at `step` (default: the latest checkpoint)."""
  return Run(workdir, step, autoencoder=autoencoder, mesh=mesh)


def generate(
  run: Run,
  requests: Sequence[sampler.Request],
  *,
  steps: int | None = None,
  cfg_scale: float | None = None,
  method: str | None = None,
  progress: bool = True,
) -> list[np.ndarray]:
  """Videos, uint8 `[T, H, W, 3]` per request; unset settings come from the run's config."""
  for r in requests:  # Fail on a bad size before restoring any weights.
    sampler.check_request(r, run.geom, run.opts)
  params = run.params
  rows = sampler.pack_requests(requests, run.geom, run.tokenizer, run.opts)
  logging.info(
    "%d requests packed into %d rows of %d tokens",
    len(requests),
    len(rows["tokens"]),
    run.opts.seq_len,
  )
  sample = sampler.Sampler(run.model, params, run.flow_cfg, run.opts.num_segments)
  s = run.cfg.sample
  with jax.set_mesh(run.mesh), sharding.axis_rules(run.rules):
    tokens = sample(
      rows,
      steps=steps or s.steps,
      cfg_scale=s.cfg_scale if cfg_scale is None else cfg_scale,
      method=method or s.sampler,
      guidance_interval=tuple(s.get("guidance_interval", (0.0, 1.0))),
      progress=progress,
      put=sampler.batch_put(run.mesh, run.rules),
    )
  return sampler.unpack(rows, tokens, requests, run.geom, run.stage)
