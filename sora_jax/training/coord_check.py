"""The muP coordinate check: activation scales across widths during the first steps.

For each parametrization and width (depth, head dim and everything else fixed), trains a
few real steps at one learning rate (no warmup, no decay) and records, before each step,
the mean |activation| over real tokens at three sites on one fixed noised batch: the
embedded input ("embedded"), the last block's output ("hidden") and the network output
("output"). Under muP these stay flat across widths; under the standard parametrization
the updated layers' activations grow with width (Yang et al. 2022, Figure 5).
`slopes` gives d log(scale) / d log(width) at each step, `drift` the largest of their
magnitudes: near 0 under muP, of order 1 under the standard parametrization.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from sora_jax.core import sharding
from sora_jax.diffusion import flow, latent
from sora_jax.training import input_pipeline
from sora_jax.training.trainer import Trainer

SITES = ("embedded", "hidden", "output")


def width_config(cfg: ml_collections.ConfigDict, width: int, parametrization: str, steps: int):
  """`cfg` at `width` (heads keep the head dim) with a constant learning rate."""
  c = ml_collections.ConfigDict(cfg.to_dict())
  head_dim = cfg.model.width // cfg.model.heads
  if width % head_dim:
    raise ValueError(f"width {width} is not a multiple of the head dim {head_dim}")
  c.model.update(width=width, heads=width // head_dim, parametrization=parametrization)
  if not c.model.mup_base_width:
    c.model.mup_base_width = cfg.model.width
  c.optim.update(warmup_steps=0, decay_steps=1_000_000, ema_decay=0.0)
  c.train.num_steps = steps
  return c


def run(
  cfg: ml_collections.ConfigDict,
  widths: Sequence[int],
  steps: int,
  mesh: jax.sharding.Mesh,
  parametrizations: Sequence[str] = ("standard", "mup"),
  progress=None,
) -> dict[str, Any]:
  """{parametrization: {"widths": [...], "sites": {site: [[scale per step] per width]},
  "slopes": {site: [slope per step]}, "drift": {site: max |slope|}}}."""
  tok = input_pipeline.load_tokenizer(cfg)
  it = iter(input_pipeline.make_dataset(cfg, tok, latent.stage_for(cfg)))
  host = [next(it) for _ in range(steps + 1)]  # Batch 0 is measured, 1.. train.
  noise = np.random.default_rng(0).standard_normal(host[0]["tokens"].shape).astype(np.float32)
  out = {}
  for p in parametrizations:
    sites = {s: [] for s in SITES}
    for w in widths:
      if progress:
        progress(f"{p} width {w}")
      c = width_config(cfg, w, p, steps)
      trainer = Trainer(c, mesh, tok.vocab_size)
      batches = [sharding.global_batch(b, mesh, trainer.rules) for b in host]
      measure = jax.jit(lambda params, batch, eps, tr=trainer: _scales(tr, params, batch, eps))
      state, ema = trainer.init(c.seed)
      per_step = []
      for k in range(steps + 1):
        with jax.set_mesh(mesh), sharding.axis_rules(trainer.rules):
          per_step.append(jax.device_get(measure(state["params"], batches[0], noise)))
        if k < steps:
          state, ema, _ = trainer.step(state, ema, batches[k + 1])
      for s in SITES:
        sites[s].append([float(v[s]) for v in per_step])
    slopes = {s: _slopes(widths, np.array(sites[s])) for s in SITES}
    drift = {s: max((abs(v) for v in slopes[s] if np.isfinite(v)), default=0.0) for s in SITES}
    out[p] = {"widths": list(widths), "sites": sites, "slopes": slopes, "drift": drift}
  return out


def _slopes(widths: Sequence[int], scales: np.ndarray) -> list[float]:
  """d log(scale) / d log(width) at each step (nan where a scale is 0, e.g. a zero readout)."""
  out = []
  for k in range(scales.shape[1]):
    col = scales[:, k]
    out.append(
      float(np.polyfit(np.log(widths), np.log(col), 1)[0]) if np.all(col > 0) else float("nan")
    )
  return out


def _scales(trainer: Trainer, params, batch, noise) -> dict[str, jax.Array]:
  model = trainer.model.merge(params)
  seg = batch["segment_ids"]
  t = jnp.full(seg.shape, 0.5)
  xt = flow.noised(batch["tokens"], noise, t, seg)
  out = model(xt, batch["coords"], seg, t, batch["text_ids"], batch["text_segment_ids"])
  inter = nnx.pop(model, nnx.Intermediate)
  real = (seg > 0).astype(jnp.float32)[..., None]

  def scale(x):
    return jnp.sum(jnp.abs(x.astype(jnp.float32)) * real) / (jnp.sum(real) * x.shape[-1])

  return {
    "embedded": scale(inter["embedded"][0]),
    "hidden": scale(inter["hidden"][0]),
    "output": scale(out),
  }
