"""Builds the pieces a binary needs from a config: geometry, model, sharded parameters.

Parameters travel as plain nested dicts of arrays (`nnx.to_pure_dict`), which
optax, orbax and jit shardings all take directly; `merge` turns them back into
a model inside a traced function.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
from flax import nnx

from data_pipelines import pipeline, shards, sizing
from sora_jax import flow, latent, sharding
from sora_jax.models import dit


def stage(cfg: ml_collections.ConfigDict, directory: str | None = None) -> latent.LatentStage:
  """The config's latent stage; `directory` overrides the autoencoder (e.g. a run's copy).

  Training on cached latents without latent.stats_file normalizes with the
  statistics the cache was made with.
  """
  lat = dict(cfg.latent)
  if lat.get("kind") == "autoencoder" and not lat.get("stats_file") and directory is None:
    cached = cached_latents(cfg)
    if cached:
      lat["stats_file"] = os.path.join(cfg.data.data_dir, cached["stats_file"])
  return latent.make_stage(lat, directory)


def cached_latents(cfg: ml_collections.ConfigDict) -> dict[str, Any] | None:
  """The "latent" entry of a cached-latent dataset's manifest, or None."""
  d = cfg.data
  if d.source != "array_record" or not d.data_dir:
    return None
  try:
    return shards.read_manifest(d.data_dir).get("latent")
  except shards.DatasetError:
    return None


def geometry(
  cfg: ml_collections.ConfigDict, stage_: latent.LatentStage | None = None
) -> sizing.Geometry:
  """Token geometry; without a stage, read from the latent stage's config (no weights loaded)."""
  if stage_ is not None:
    return latent.geometry(stage_, cfg.model.patch)
  compression, channels = latent.stage_shape(cfg.latent)
  return sizing.Geometry(tuple(int(p) for p in cfg.model.patch), compression, channels)


def options(cfg: ml_collections.ConfigDict) -> pipeline.Options:
  return pipeline.Options.from_config(cfg.data)


def num_segments(cfg: ml_collections.ConfigDict) -> int:
  """Segment ids 0 (padding) .. K (max examples per row)."""
  return int(cfg.data.max_examples_per_row) + 1


def flow_config(cfg: ml_collections.ConfigDict) -> flow.FlowConfig:
  return flow.FlowConfig.from_config(cfg.flow)


def dit_config(
  cfg: ml_collections.ConfigDict, vocab_size: int, geom: sizing.Geometry | None = None
) -> dit.DiTConfig:
  model = cfg.model.to_dict()
  model.pop("patch")
  return dit.DiTConfig.from_config(model, (geom or geometry(cfg)).patch_dim, vocab_size)


class Model:
  """A model's graph definition plus how its parameters are sharded on a mesh.

  `build(cfg, rngs)` makes the module; the default builds a DiT (the
  autoencoder trainer passes its own).
  """

  def __init__(self, cfg: Any, mesh: jax.sharding.Mesh, rules, build: Callable | None = None):
    self.cfg = cfg
    self.mesh = mesh
    self.rules = tuple(rules)
    self.build = build or (lambda c, rngs: dit.DiT(c, rngs=rngs))
    abstract = nnx.eval_shape(lambda: self.build(cfg, nnx.Rngs(0)))
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
      return nnx.to_pure_dict(nnx.state(self.build(self.cfg, nnx.Rngs(seed)), nnx.Param))

    with jax.set_mesh(self.mesh):
      return jax.jit(create, out_shardings=self.param_shardings)()

  def merge(self, params: dict[str, Any]) -> nnx.Module:
    """A model using `params` (call inside jit)."""
    return nnx.merge(self.graphdef, params)
