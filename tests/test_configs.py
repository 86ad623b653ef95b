"""Every preset validates and has the parameter count its docstring states."""

import importlib
import os
import pathlib

import jax
import pytest
from flax import nnx

from data_pipelines import pipeline
from sora_jax import sample
from sora_jax.core import configs
from sora_jax.diffusion import latent
from sora_jax.models import dit
from sora_jax.sampling import sampler as sampling
from sora_jax.training import validation

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


@pytest.mark.parametrize("name", [*PRESETS, "dit_tiny", "demo", "base", "long_rows"])
def test_config_validates(name):
  cfg = importlib.import_module(f"experiments.{name}").get_config()
  validation.validate(cfg, for_training=False)


EXPERIMENTS = sorted(
  p.stem
  for p in pathlib.Path(__file__).parent.parent.joinpath("experiments").glob("*.py")
  if p.stem != "__init__"
)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_has_valid_data_options(name):
  # Caught one: the demo's caption budget inherited by a config with caption windows.
  cfg = importlib.import_module(f"experiments.{name}").get_config()
  if "data" in cfg:
    pipeline.Options.from_config(cfg.data).validate()


@pytest.mark.parametrize("name", PRESETS)
def test_preset_parameter_counts(name):
  cfg = importlib.import_module(f"experiments.{name}").get_config()
  model = nnx.eval_shape(
    lambda: dit.DiT(
      dit.DiTConfig.from_config(cfg.model, latent.geometry_for(cfg).patch_dim, 32000),
      rngs=nnx.Rngs(0),
    )
  )
  total = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  text = sum(x.size for x in jax.tree.leaves(nnx.state(model.text_encoder, nnx.Param)))
  assert abs((total - text) / PRESETS[name] - 1) < 0.01


def test_config_json_round_trip():
  cfg = importlib.import_module("experiments.demo").get_config()
  back = configs.from_json(configs.to_json(cfg))
  assert back.model.patch == cfg.model.patch
  assert back.sharding.rules == cfg.sharding.rules
  assert back.to_dict() == cfg.to_dict()


def test_demo_prompts_are_sizes_the_demo_trains_on():
  """make demo's prompts are valid requests within the per-example token budget it trains on."""
  cfg = importlib.import_module("experiments.demo").get_config()
  geom, opts = latent.geometry_for(cfg), pipeline.Options.from_config(cfg.data)
  prompts = os.path.join(os.path.dirname(__file__), "..", "experiments", "demo_prompts.jsonl")
  requests = sample.read_requests([], prompts, (8, 32, 32), 0, 1)
  ratios = set()
  for req in requests:
    sampling.check_request(req, geom, opts)
    assert geom.num_tokens(req.num_frames, req.height, req.width) <= opts.max_tokens_per_example
    ratios.add((req.num_frames > 1, round(req.width / req.height, 1)))
  assert {(True, 1.7), (True, 0.6), (True, 1.0)} <= ratios  # 16:9, 9:16, 1:1 videos.
  assert any(req.num_frames == 1 for req in requests)  # And an image.


def test_an_unknown_mlp_kind_is_named():
  cfg = importlib.import_module("experiments.dit_tiny").get_config()
  cfg.model.mlp = "geglu"
  with pytest.raises(
    configs.ConfigError, match=r"config\.model\.mlp='geglu'; allowed: gelu, swiglu"
  ):
    validation.validate(cfg, for_training=False)
