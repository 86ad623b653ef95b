"""A trained diffusion model, loaded for inference: `load(path, step)`, then `generate`.

  run = load("out/demo/run")                    # a training workdir (its EMA weights), or
  run = load("out/demo/model")                  # an exported model directory (sora_jax.export)
  run = load(path, presets=[("out/style", 0.8)])  # with LoRA adapters merged in at scales
  videos = generate(run, [Request(...), ...])   # uint8 [T, H, W, 3] per request

The weights are restored on first use of `run.params`, so a bad request fails
before any weight is read. A latent-space run decodes with the autoencoder copy
saved beside its checkpoints (WORKDIR/autoencoder, or an export's autoencoder/),
or with the one `autoencoder=` names.
"""

from __future__ import annotations

import dataclasses
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
from sora_jax.model_io import adapters, common, model_dir
from sora_jax.models import dit
from sora_jax.sampling import plans, sampler


class Run:
  """Everything inference needs from a workdir; see the module docstring."""

  def __init__(
    self,
    path: str,
    step: int | None = None,
    *,
    autoencoder: str | None = None,
    mesh: jax.sharding.Mesh | None = None,
    presets: Sequence[tuple[str, float]] = (),
  ):
    self.workdir = path
    self.export = model_dir.ModelDir(path) if model_dir.is_model_dir(path) else None
    if self.export is not None:
      if step is not None:
        raise checkpointing.CheckpointError(
          f"--step={step}: {path} is an exported model (one step); drop --step"
        )
      self.step = self.export.config["provenance"]["step"]
      self.config_json = self.export.config["train_config"]
      tokenizer_path = self.export.tokenizer_path
    else:
      self.step, self.config_json = checkpointing.restore_config(path, step)
      tokenizer_path = os.path.join(path, MODEL_NAME)
    self.cfg = configs.from_json(self.config_json)
    self.tokenizer = Tokenizer(tokenizer_path)
    copy = latent.copy_name(self.cfg.latent)
    stage_dir = autoencoder if self.cfg.latent.get("kind") == "autoencoder" else None
    if copy and not stage_dir:
      stage_dir = os.path.join(self.export.path if self.export else path, copy)
      if not os.path.isdir(stage_dir):
        raise FileNotFoundError(
          f"{stage_dir}: this latent-space run has no copy of its latent stage"
          + ("; name one with --autoencoder" if copy == latent.AUTOENCODER_COPY else "")
        )
    self.stage = latent.stage_for(self.cfg, stage_dir)
    self.geom = latent.geometry_for(self.cfg, self.stage)
    self.opts = pipeline.Options.from_config(self.cfg.data)
    self.flow_cfg = flow.FlowConfig.from_config(self.cfg.flow)
    self.mesh = mesh or sharding.make_mesh({"fsdp": -1})
    self.rules = tuple(self.cfg.sharding.rules)
    # A workdir of an adapter run (config.lora) samples with its adapter.
    lora_cfg = None if self.export is not None else self.cfg.get("lora")
    self.dit_cfg = dit.DiTConfig.from_config(
      self.cfg.model,
      self.geom.patch_dim,
      self.tokenizer.vocab_size,
      dit.packing_of(self.cfg.data),
      lora_cfg=lora_cfg,
    )
    self.model = ShardedModel(self.dit_cfg, self.mesh, self.rules, dit.DiT)
    self.presets = [(adapters.read(d), float(s)) for d, s in presets]  # Checked before weights.
    if self.presets and self.dit_cfg.lora is not None:
      raise adapters.ExportError(f"{path} is an adapter run; apply presets to its base model")
    if self.export is not None:
      for a, _ in self.presets:
        adapters.check_base(a, self.export.fingerprint)
    self._params = None

  @property
  def params(self) -> Any:
    """The EMA (or exported) parameters on the run's mesh, presets merged (on first use)."""
    if self._params is None:
      if self.export is not None:
        params = self.export.restore_params(self.model.abstract_params, self.dit_cfg)
      else:
        params = checkpointing.restore_ema(self.workdir, self.step, self.model.abstract_params)
      if self.presets:
        base_fp = self.fingerprint(params)
        loaded = [
          (*adapters.load(a.directory, self.dit_cfg, base_fp, self.mesh), scale)
          for a, scale in self.presets
        ]
        params = adapters.apply(params, loaded, self.model.param_shardings)
      self._params = params
    return self._params

  def fingerprint(self, params: Any) -> str:
    """The base weights' fingerprint (an export's is recorded; a workdir's is computed)."""
    if self.export is not None:
      return self.export.fingerprint
    return common.fingerprint(params, common.layer_positions(self.dit_cfg))


def load(
  path: str,
  step: int | None = None,
  *,
  autoencoder: str | None = None,
  mesh: jax.sharding.Mesh | None = None,
  presets: Sequence[tuple[str, float]] = (),
) -> Run:
  """The run in workdir `path` at `step` (default: the latest checkpoint), or the exported
  model directory `path`, with `presets` ((adapter directory, scale), ...) merged in."""
  return Run(path, step, autoencoder=autoencoder, mesh=mesh, presets=presets)


def generate(
  run: Run,
  requests: Sequence[sampler.Request],
  *,
  steps: int | None = None,
  cfg_scale: float | None = None,
  method: str | None = None,
  frames_cfg_scale: float | None = None,
  eta: float | None = None,
  progress: bool = True,
) -> list[np.ndarray]:
  """Videos, uint8 `[T, H, W, 3]` per request; unset settings come from the run's config.

  A request with `loop` and no context takes a second pass: its first result's first
  token frame is given at the start and its first frame at the end.
  """
  for r in requests:  # Fail on a bad size before restoring any weights.
    sampler.check_request(r, run.geom, run.opts)
  rows = sampler.pack_requests(requests, run.geom, run.tokenizer, run.opts, run.stage)
  kw = dict(
    steps=steps,
    cfg_scale=cfg_scale,
    method=method,
    frames_cfg_scale=frames_cfg_scale,
    eta=eta,
    progress=progress,
  )
  videos = _denoise(run, rows, requests, **kw)
  loops = [i for i, r in enumerate(requests) if r.loop and not r.context]
  if loops:
    again = []
    for i in loops:
      r, v = requests[i], videos[i]
      head = plans.token_frame_span(run.geom, 0, r.num_frames)
      context = (
        plans.Given(v[: head.stop], start=0, name="--loop"),
        plans.Given(v[:1], start=r.num_frames - 1, image=True, name="--loop"),
      )
      again.append(dataclasses.replace(r, context=context, loop=False))
    rows = sampler.pack_requests(again, run.geom, run.tokenizer, run.opts, run.stage)
    for i, v in zip(loops, _denoise(run, rows, again, **kw), strict=True):
      videos[i] = v
  return videos


def _denoise(
  run, rows, requests, *, steps, cfg_scale, method, frames_cfg_scale, eta, progress
) -> list[np.ndarray]:
  logging.info(
    "%d requests packed into %d rows of %d tokens",
    len(requests),
    len(rows["tokens"]),
    run.opts.seq_len,
  )
  sample = sampler.Sampler(run.model, run.params, run.flow_cfg, run.opts.num_segments)
  s = run.cfg.sample
  with jax.set_mesh(run.mesh), sharding.axis_rules(run.rules):
    tokens = sample(
      rows,
      steps=steps or s.steps,
      cfg_scale=s.cfg_scale if cfg_scale is None else cfg_scale,
      method=method or s.sampler,
      guidance_interval=tuple(s.get("guidance_interval", (0.0, 1.0))),
      frames_scale=s.get("frames_cfg_scale", 1.0) if frames_cfg_scale is None else frames_cfg_scale,
      eta=s.get("eta", sampler.ETA) if eta is None else eta,
      progress=progress,
      put=sampler.batch_put(run.mesh, run.rules),
    )
  return sampler.unpack(rows, tokens, requests, run.geom, run.stage)
