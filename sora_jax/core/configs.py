"""Configs as JSON, and the one error every config check raises.

A run saves its ml_collections config as JSON beside its checkpoints; `from_json`
rebuilds it (JSON lists become tuples again, as configs write them).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import ml_collections


class ConfigError(ValueError):
  """The config is invalid; the message names the field, the value and what is allowed."""


def require(ok: bool, msg: str) -> None:
  """Raises ConfigError(msg) unless `ok`."""
  if not ok:
    raise ConfigError(msg)


def to_json(cfg: ml_collections.ConfigDict) -> dict[str, Any]:
  """A JSON-safe dict of the config (tuples become lists)."""
  return json.loads(cfg.to_json())


def from_json(d: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """The inverse of `to_json`: JSON lists become tuples again, as configs write them."""

  def tuples(x):
    if isinstance(x, dict):
      return {k: tuples(v) for k, v in x.items()}
    if isinstance(x, list):
      return tuple(tuples(v) for v in x)
    return x

  return ml_collections.ConfigDict(tuples(json.loads(json.dumps(dict(d)))))
