"""Directories of the small auxiliary models (the prompt expander, the evaluation probe):

DIR/
  config.json         {"model": the model's config fields, ...what the trainer adds}
  NAME.safetensors    the parameters, float32, names joined by "."
  (other files the model needs, e.g. tokenizer.model)
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from typing import Any

import numpy as np
from flax import nnx
from safetensors import numpy as safetensors_numpy

from data_pipelines import shards
from sora_jax.core import safetensors_io

CONFIG = "config.json"


class SmallModelError(ValueError):
  """A directory that does not hold the model asked for; one line says why."""


def save(
  path: str, name: str, model: nnx.Module, config: Mapping[str, Any], files: Mapping[str, str] = {}
) -> None:
  """Writes DIR: config.json, NAME.safetensors and copies of `files` ({name in DIR: source})."""
  os.makedirs(path, exist_ok=True)
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  flat = {k: np.asarray(v, np.float32) for k, v in safetensors_io.flatten(params).items()}
  tmp = os.path.join(path, f"{name}.safetensors.tmp")
  safetensors_numpy.save_file(flat, tmp)
  os.replace(tmp, os.path.join(path, f"{name}.safetensors"))
  for target, source in files.items():
    if os.path.abspath(source) != os.path.abspath(os.path.join(path, target)):
      shutil.copyfile(source, os.path.join(path, target))
  shards.atomic_write_json(os.path.join(path, CONFIG), dict(config))


def read_config(path: str, name: str, needs: tuple[str, ...] = (), hint: str = "") -> dict:
  """DIR's config.json, after checking NAME.safetensors and `needs` are there."""
  files = [CONFIG, f"{name}.safetensors", *needs]
  missing = [f for f in files if not os.path.exists(os.path.join(path, f))]
  if missing:
    raise SmallModelError(f"{path} is not a trained {name} (no {', '.join(missing)}){hint}")
  with open(os.path.join(path, CONFIG)) as f:
    return json.load(f)


def load_params(path: str, name: str, model: nnx.Module) -> nnx.Module:
  """Puts DIR/NAME.safetensors into `model` (built from DIR's config); returns it."""
  flat = safetensors_numpy.load_file(os.path.join(path, f"{name}.safetensors"))
  state = nnx.state(model, nnx.Param)
  like = nnx.to_pure_dict(state)
  if set(flat) != set(safetensors_io.flatten(like)):
    raise SmallModelError(f"{path}/{name}.safetensors does not hold what its config describes")
  nnx.replace_by_pure_dict(state, safetensors_io.unflatten(flat, like))
  nnx.update(model, state)
  return model
