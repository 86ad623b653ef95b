"""A trained prompt expander's directory (sora_jax/model_io/small_model.py): written by
`sora_jax.train_expander`, read by `sora_jax.sampling.expand`.

  DIR/
    config.json            {"model": ExpanderConfig fields, "sample": {"temperature"},
                            "train": the whole config, "losses": {...}}
    expander.safetensors   the parameters
    tokenizer.model        the sentencepiece model both captions were tokenized with
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from flax import nnx

from data_pipelines import tokenizer as tokenizer_lib
from sora_jax.model_io import small_model
from sora_jax.models import expander

NAME = "expander"
TOKENIZER = "tokenizer.model"
ExpanderError = small_model.SmallModelError


def save(path: str, model: expander.CaptionLM, tokenizer_path: str, extra: dict[str, Any]) -> None:
  config = {"model": dataclasses.asdict(model.cfg), **extra}
  small_model.save(path, NAME, model, config, {TOKENIZER: tokenizer_path})


def load(path: str) -> tuple[expander.CaptionLM, tokenizer_lib.Tokenizer, dict[str, Any]]:
  """(model, tokenizer, config.json) of DIR; ExpanderError (one line) if it is not one."""
  hint = "; train one with python -m sora_jax.train_expander"
  config = small_model.read_config(path, NAME, (TOKENIZER,), hint)
  model = expander.CaptionLM(expander.ExpanderConfig(**config["model"]), rngs=nnx.Rngs(0))
  small_model.load_params(path, NAME, model)
  return model, tokenizer_lib.Tokenizer(os.path.join(path, TOKENIZER)), config
