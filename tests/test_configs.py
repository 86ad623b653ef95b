"""Every preset validates and has the parameter count its docstring states."""

import importlib

import jax
import pytest
from flax import nnx

from sora_jax import config_lib, factory
from sora_jax.models import dit

# DiT parameters without the text encoder, as the preset docstrings state.
PRESETS = {
  "dit_s": 30.1e6,
  "dit_b": 119.6e6,
  "dit_l": 413.8e6,
  "dit_xl": 608.8e6,
  "dit_1b": 1.082e9,
  "dit_3b": 3.420e9,
  "dit_8b": 8.218e9,
  "dit_30b": 29.37e9,
}


@pytest.mark.parametrize("name", [*PRESETS, "dit_tiny", "demo", "base"])
def test_config_validates(name):
  cfg = importlib.import_module(f"experiments.{name}").get_config()
  config_lib.validate(cfg, for_training=False)


@pytest.mark.parametrize("name", PRESETS)
def test_preset_parameter_counts(name):
  cfg = importlib.import_module(f"experiments.{name}").get_config()
  model = nnx.eval_shape(lambda: dit.DiT(factory.dit_config(cfg, 32000), rngs=nnx.Rngs(0)))
  total = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  text = sum(x.size for x in jax.tree.leaves(nnx.state(model.text_encoder, nnx.Param)))
  assert abs((total - text) / PRESETS[name] - 1) < 0.01


def test_config_json_round_trip():
  cfg = importlib.import_module("experiments.demo").get_config()
  back = config_lib.from_json(config_lib.to_json(cfg))
  assert back.model.patch == cfg.model.patch
  assert back.sharding.rules == cfg.sharding.rules
  assert back.to_dict() == cfg.to_dict()
