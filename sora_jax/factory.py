"""Builds the pieces a binary needs from a config: geometry, model, sharded parameters.

Parameters travel as plain nested dicts of arrays (`nnx.to_pure_dict`), which
optax, orbax and jit shardings all take directly; `merge` turns them back into
a model inside a traced function.
"""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
from flax import nnx

from data_pipelines import pipeline, sizing
from sora_jax import flow, latent, sharding
from sora_jax.models import dit


def stage(cfg: ml_collections.ConfigDict) -> latent.LatentStage:
  return latent.make_stage(cfg.latent)


def geometry(
  cfg: ml_collections.ConfigDict, stage_: latent.LatentStage | None = None
) -> sizing.Geometry:
  return latent.geometry(stage_ or stage(cfg), cfg.model.patch)


def options(cfg: ml_collections.ConfigDict) -> pipeline.Options:
  return pipeline.Options.from_config(cfg.data)


def num_segments(cfg: ml_collections.ConfigDict) -> int:
  """Segment ids 0 (padding) .. K (max examples per row)."""
  return int(cfg.data.max_examples_per_row) + 1


def flow_config(cfg: ml_collections.ConfigDict) -> flow.FlowConfig:
  return flow.FlowConfig.from_config(cfg.flow)


def dit_config(cfg: ml_collections.ConfigDict, vocab_size: int) -> dit.DiTConfig:
  model = cfg.model.to_dict()
  model.pop("patch")
  return dit.DiTConfig.from_config(model, geometry(cfg).patch_dim, vocab_size)


class Model:
  """A DiT's graph definition plus how its parameters are sharded on a mesh."""

  def __init__(self, dit_cfg: dit.DiTConfig, mesh: jax.sharding.Mesh, rules):
    self.cfg = dit_cfg
    self.mesh = mesh
    self.rules = tuple(rules)
    abstract = nnx.eval_shape(lambda: dit.DiT(dit_cfg, rngs=nnx.Rngs(0)))
    self.graphdef, abstract_params = nnx.split(abstract, nnx.Param)
    self.param_shardings = nnx.to_pure_dict(
      sharding.param_shardings(abstract_params, self.rules, mesh)
    )
    self.abstract_params = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      nnx.to_pure_dict(abstract_params),
      self.param_shardings,
    )

  def init(self, seed: int) -> dict[str, Any]:
    """Freshly initialized parameters, created directly in their shards."""

    def create():
      return nnx.to_pure_dict(nnx.state(dit.DiT(self.cfg, rngs=nnx.Rngs(seed)), nnx.Param))

    with jax.set_mesh(self.mesh):
      return jax.jit(create, out_shardings=self.param_shardings)()

  def merge(self, params: dict[str, Any]) -> dit.DiT:
    """A model using `params` (call inside jit)."""
    return nnx.merge(self.graphdef, params)
