"""LoRA adapters on the DiT: a fresh adapter changes nothing, merging equals applying,
scale 0 is the base, the factors shard like their weights, and bad configs are named."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from experiments import dit_tiny
from sora_jax.core import configs, sharding
from sora_jax.core.sharded_model import ShardedModel
from sora_jax.models import dit, lora, text_encoder
from sora_jax.training import validation


def _cfg(adapters=None):
  return dit.DiTConfig(
    patch_dim=12,
    depth=2,
    width=32,
    heads=2,
    text=text_encoder.TextConfig(vocab_size=20, width=16, depth=1, heads=1),
    lora=adapters,
  )


def _inputs(seed=0, length=20, lt=10):
  rng = np.random.default_rng(seed)
  seg = np.zeros((1, length), np.int32)
  seg[0, :8], seg[0, 8:17] = 1, 2
  tseg = np.zeros((1, lt), np.int32)
  tseg[0, :4], tseg[0, 4:9] = 1, 2
  return (
    jnp.asarray(rng.standard_normal((1, length, 12)), jnp.float32),
    jnp.asarray(rng.integers(0, 4, (1, length, 3)), jnp.int32),
    jnp.asarray(seg),
    jnp.asarray(rng.uniform(size=(1, length)), jnp.float32),
    jnp.asarray(rng.integers(4, 20, (1, lt)), jnp.int32),
    jnp.asarray(tseg),
  )


def _params(cfg, seed=0, noise=0.05):
  """Parameters with the zero-initialized gates, output layer and B factors made non-zero."""
  params = nnx.to_pure_dict(nnx.state(dit.DiT(cfg, rngs=nnx.Rngs(seed)), nnx.Param))
  rng = np.random.default_rng(seed + 1)
  return jax.tree.map(lambda p: p + noise * rng.standard_normal(p.shape).astype(p.dtype), params)


def _apply(cfg, params, x):
  graphdef, _ = nnx.split(dit.DiT(cfg, rngs=nnx.Rngs(0)), nnx.Param)
  return np.asarray(nnx.merge(graphdef, params)(*x))


ADAPTERS = lora.LoraConfig(rank=4, alpha=8.0)


def test_a_fresh_adapter_leaves_the_model_unchanged():
  base_cfg, lora_cfg = _cfg(), _cfg(ADAPTERS)
  base = _params(base_cfg)
  fresh = nnx.to_pure_dict(nnx.state(dit.DiT(lora_cfg, rngs=nnx.Rngs(3)), nnx.Param))
  _, factors = lora.split(fresh)
  assert all(np.all(b == 0) for b in jax.tree.leaves(factors) if b.shape[-2] == 4)  # B = 0
  x = _inputs()
  np.testing.assert_array_equal(
    _apply(lora_cfg, lora.combine(base, factors), x), _apply(base_cfg, base, x)
  )


def test_merging_equals_applying_and_scale_zero_is_the_base():
  base_cfg, lora_cfg = _cfg(), _cfg(ADAPTERS)
  full = _params(lora_cfg, noise=0.2)
  base, factors = lora.split(full)
  x = _inputs(1)
  applied = _apply(lora_cfg, full, x)
  merged = _apply(base_cfg, lora.merge(base, factors, 1.0, ADAPTERS.scale), x)
  plain = _apply(base_cfg, base, x)
  assert np.abs(applied - plain).max() > 1e-3  # The adapter does something...
  np.testing.assert_allclose(merged, applied, rtol=1e-4, atol=1e-5)  # ...and merging is exact.
  zero = lora.merge(base, factors, 0.0, ADAPTERS.scale)
  jax.tree.map(np.testing.assert_array_equal, zero, base)
  # Half the scale is half the weight change.
  half = lora.merge(base, factors, 0.5, ADAPTERS.scale)
  k = ("blocks", "attn", "q", "kernel")
  d_full = lora.merge(base, factors, 1.0, ADAPTERS.scale)
  get = lambda t: t[k[0]][k[1]][k[2]][k[3]]  # noqa: E731
  np.testing.assert_allclose(get(half) - get(base), 0.5 * (get(d_full) - get(base)), atol=1e-6)


def test_only_the_chosen_projections_get_adapters():
  only_mlp = _cfg(lora.LoraConfig(rank=2, alpha=2.0, targets=("mlp",)))
  params = nnx.to_pure_dict(nnx.state(dit.DiT(only_mlp, rngs=nnx.Rngs(0)), nnx.Param))
  _, factors = lora.split(params)
  assert set(factors["blocks"]) == {"mlp"}
  assert "text_encoder" not in factors
  assert lora.count(factors) == 2 * (32 * 2 + 2 * 128) * 2  # 2 layers x (up + down)


def test_factors_shard_like_the_weights_they_adapt():
  cfg = dataclasses.replace(_cfg(ADAPTERS), width=64, heads=4)
  mesh = sharding.make_mesh({"fsdp": 4, "tensor": 2})
  rules = tuple(dit_tiny.get_config().sharding.rules)
  model = ShardedModel(cfg, mesh, rules, dit.DiT)
  q = model.param_shardings["blocks"]["attn"]["q"]
  up = model.param_shardings["blocks"]["mlp"]["up"]
  # q: kernel [layers, embed, heads, kv]; A [layers, embed(in), r], B [layers, r, heads*kv(out)].
  assert q["kernel"].spec[1] == "fsdp" and q["lora"]["lora_a"].spec[1] == "fsdp"
  assert q["kernel"].spec[2] == "tensor" and q["lora"]["lora_b"].spec[2] == "tensor"
  assert up["lora"]["lora_b"].spec[2] == "tensor" and up["lora"]["lora_a"].spec[1] == "fsdp"


@pytest.mark.parametrize(
  "update, message",
  [
    (dict(rank=4, targets=("attention",)), "config.lora.targets"),
    (dict(rank=4, alpha=0.0), "config.lora.alpha"),
    (dict(rank=-1), "config.lora.rank=-1"),
    (dict(rank=4), "set config.init_from"),
  ],
)
def test_bad_adapter_configs_are_named(update, message):
  cfg = dit_tiny.get_config()
  cfg.lora.update(update)
  with pytest.raises(configs.ConfigError, match=message.replace(".", r"\.")):
    validation.validate(cfg, for_training=False)
