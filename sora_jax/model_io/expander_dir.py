"""A trained prompt expander's directory: written by `sora_jax.train_expander`, read by
`sora_jax.sampling.expand`.

  DIR/
    config.json            {"model": ExpanderConfig fields, "sample": {"temperature"},
                            "train": the whole config, "losses": {...}}
    expander.safetensors   the parameters (float32, names joined by ".")
    tokenizer.model        the sentencepiece model both captions were tokenized with
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from typing import Any

import numpy as np
from flax import nnx
from safetensors import numpy as safetensors_numpy

from data_pipelines import shards
from data_pipelines import tokenizer as tokenizer_lib
from sora_jax.core import safetensors_io
from sora_jax.models import expander

CONFIG = "config.json"
WEIGHTS = "expander.safetensors"
TOKENIZER = "tokenizer.model"


class ExpanderError(ValueError):
  """A directory that is not a trained expander."""


def save(path: str, model: expander.CaptionLM, tokenizer_path: str, extra: dict[str, Any]) -> None:
  """Writes DIR (atomically per file)."""
  os.makedirs(path, exist_ok=True)
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  flat = {k: np.asarray(v, np.float32) for k, v in safetensors_io.flatten(params).items()}
  tmp = os.path.join(path, WEIGHTS + ".tmp")
  safetensors_numpy.save_file(flat, tmp)
  os.replace(tmp, os.path.join(path, WEIGHTS))
  if os.path.abspath(tokenizer_path) != os.path.abspath(os.path.join(path, TOKENIZER)):
    shutil.copyfile(tokenizer_path, os.path.join(path, TOKENIZER))
  config = {"model": dataclasses.asdict(model.cfg), **extra}
  shards.atomic_write_json(os.path.join(path, CONFIG), config)


def load(path: str) -> tuple[expander.CaptionLM, tokenizer_lib.Tokenizer, dict[str, Any]]:
  """(model, tokenizer, config.json) of DIR; ExpanderError (one line) if it is not one."""
  files = [os.path.join(path, f) for f in (CONFIG, WEIGHTS, TOKENIZER)]
  missing = [os.path.basename(f) for f in files if not os.path.exists(f)]
  if missing:
    raise ExpanderError(
      f"{path} is not a trained expander (no {', '.join(missing)}); train one with "
      "python -m sora_jax.train_expander"
    )
  with open(files[0]) as f:
    config = json.load(f)
  cfg = expander.ExpanderConfig(**config["model"])
  model = expander.CaptionLM(cfg, rngs=nnx.Rngs(0))
  flat = safetensors_numpy.load_file(files[1])
  state = nnx.state(model, nnx.Param)
  like = nnx.to_pure_dict(state)
  if set(flat) != set(safetensors_io.flatten(like)):
    raise ExpanderError(f"{files[1]} does not hold the parameters its config.json describes")
  nnx.replace_by_pure_dict(state, safetensors_io.unflatten(flat, like))
  nnx.update(model, state)
  return model, tokenizer_lib.Tokenizer(files[2]), config
