"""Meshes, logical axis rules, and the same training math on 1 device and on 8."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from data_pipelines import tokenizer
from experiments import dit_tiny
from sora_jax.core import sharding
from sora_jax.diffusion import latent
from sora_jax.training import input_pipeline
from sora_jax.training.trainer import Trainer

RULES = (("batch", ("data", "fsdp")), ("embed", "fsdp"), ("mlp", "tensor"), ("heads", "tensor"))


def test_make_mesh_fills_the_free_axis_and_validates():
  mesh = sharding.make_mesh({"data": 2, "fsdp": -1, "tensor": 2})
  assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "context": 1, "tensor": 2}
  with pytest.raises(ValueError, match="devices"):
    sharding.make_mesh({"data": 3, "fsdp": 1})
  with pytest.raises(ValueError, match="unknown"):
    sharding.make_mesh({"model": 2})
  with pytest.raises(ValueError, match="at most one -1"):
    sharding.make_mesh({"data": -1, "fsdp": -1})


def test_rules_map_logical_names_to_mesh_axes():
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  assert sharding.spec(("embed", "mlp"), RULES, mesh) == P("fsdp", "tensor")
  assert sharding.spec(("batch", "length", "embed"), RULES, mesh) == P(("data", "fsdp"), None, None)
  assert sharding.spec(("heads", "unknown"), RULES, mesh) == P("tensor", None)
  # A dimension that does not divide is replicated rather than failing.
  assert sharding.spec(("embed", "mlp"), RULES, mesh, shape=(6, 3)) == P("fsdp", None)


def _config(data_dir):
  cfg = dit_tiny.get_config()
  cfg.data.data_dir = data_dir
  cfg.data.caption_dropout = 0.0
  return cfg


def _two_steps(cfg, mesh, batch, vocab):
  trainer = Trainer(cfg, mesh, vocab)
  state, ema = trainer.init(0)
  gb = sharding.global_batch(batch, mesh, trainer.rules)
  state, ema, m1 = trainer.step(state, ema, gb)
  state, ema, m2 = trainer.step(state, ema, gb)
  return trainer, state, [float(m1["loss"]), float(m2["loss"])], gb


def test_loss_on_one_device_equals_loss_on_eight_sharded(tiny_data_dir):
  cfg = _config(tiny_data_dir)
  tok = tokenizer.load(tiny_data_dir)
  batch = next(iter(input_pipeline.make_dataset(cfg, tok, latent.stage_for(cfg), 0, 1)))

  one = sharding.make_mesh({"fsdp": 1}, devices=jax.devices()[:1])
  _, state1, losses1, _ = _two_steps(cfg, one, batch, tok.vocab_size)
  eight = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  trainer8, state8, losses8, gb8 = _two_steps(cfg, eight, batch, tok.vocab_size)

  # The first loss and the loss after one sharded update agree.
  np.testing.assert_allclose(losses8, losses1, atol=1e-5)
  p1 = jax.tree.leaves(jax.device_get(state1["params"]))
  p8 = jax.tree.leaves(jax.device_get(state8["params"]))
  for a, b in zip(p1, p8, strict=True):
    np.testing.assert_allclose(a, b, atol=2e-5)

  # Parameters are really split: an FSDP x tensor kernel holds a quarter per device.
  kernel = state8["params"]["blocks"]["mlp"]["up"]["kernel"]  # [layers, embed, mlp]
  assert kernel.sharding.spec == P(None, "fsdp", "tensor")
  shard = kernel.addressable_shards[0].data
  assert shard.shape == (kernel.shape[0], kernel.shape[1] // 2, kernel.shape[2] // 2)
  # The batch is split over data x fsdp.
  assert gb8["tokens"].addressable_shards[0].data.shape[0] == batch["tokens"].shape[0] // 4
  # Optimizer moments follow their parameters.
  mu = state8["opt_state"][1][0].mu["blocks"]["mlp"]["up"]["kernel"]
  assert mu.sharding.spec == kernel.sharding.spec


def test_context_parallel_training_matches_one_device(tiny_data_dir):
  """The same two steps with the sequence split over 4 context devices."""
  cfg = _config(tiny_data_dir)
  tok = tokenizer.load(tiny_data_dir)
  batch = next(iter(input_pipeline.make_dataset(cfg, tok, latent.stage_for(cfg), 0, 1)))
  one = sharding.make_mesh({"fsdp": 1}, devices=jax.devices()[:1])
  _, _, losses1, _ = _two_steps(cfg, one, batch, tok.vocab_size)
  cp = sharding.make_mesh({"data": 2, "context": 4})
  _, _, losses_cp, gb = _two_steps(cfg, cp, batch, tok.vocab_size)
  np.testing.assert_allclose(losses_cp, losses1, atol=1e-5)
