"""Text-video alignment: do generated clips show what their prompts say?

Two readers of a clip's caption attributes (colour, shape, motion, background):

  readback   data_pipelines.readback, rules over the pixels
  probe      a small learned video classifier (sora_jax.models.probe), trained by
             `python -m sora_jax.train_probe` on the built-in data and shipped in
             DEFAULT_PROBE; its features also serve the Fréchet distance
             (sora_jax.evaluators.frechet)

Each reports, per attribute the prompt states, the fraction of clips where it reads
what the prompt asks.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from data_pipelines import readback, vocab
from sora_jax.model_io import small_model
from sora_jax.models import probe as probe_lib

DEFAULT_PROBE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "probe")
NAME = "probe"


def save_probe(path: str, model: probe_lib.VideoProbe, extra: dict[str, Any]) -> None:
  small_model.save(path, NAME, model, {"model": dataclasses.asdict(model.cfg), **extra})


class Probe:
  """A trained probe directory: `features(videos)` and `read(videos)`."""

  def __init__(self, path: str = DEFAULT_PROBE):
    hint = "; train one with python -m sora_jax.train_probe"
    self.config = small_model.read_config(path, NAME, hint=hint)
    m = dict(self.config["model"])
    m["channels"] = tuple(m["channels"])
    self.cfg = probe_lib.ProbeConfig(**m)
    self.model = small_model.load_params(
      path, NAME, probe_lib.VideoProbe(self.cfg, rngs=nnx.Rngs(0))
    )
    self._run = nnx.jit(lambda model, x: model(x))

  def _batches(self, videos):
    for i in range(0, len(videos), 64):
      x = np.stack(
        [probe_lib.resample(v, self.cfg.frames, self.cfg.size) for v in videos[i : i + 64]]
      )
      yield self._run(self.model, jnp.asarray(x))

  def features(self, videos) -> np.ndarray:
    """`[N, features]` float64."""
    return np.concatenate([np.asarray(f, np.float64) for f, _ in self._batches(videos)])

  def read(self, videos) -> list[dict[str, str]]:
    """Per clip, the probe's word for each attribute."""
    out = []
    for _, logits in self._batches(videos):
      ids = {k: np.argmax(np.asarray(v), -1) for k, v in logits.items()}
      n = len(next(iter(ids.values())))
      out.extend({k: probe_lib.HEADS[k][int(ids[k][i])] for k in ids} for i in range(n))
    return out


def evaluate(videos, prompts: list[str], probe: Probe | None) -> dict:
  """Per attribute, the fraction of clips read as their prompt asks, by readback and (given
  a probe) by the probe; images are not asked for motion."""
  wants = [vocab.try_parse_caption(p) for p in prompts]  # None: free text, not scored
  keys = ("color", "shape", "motion", "background")
  hits: dict[str, list[bool]] = {f"readback_{k}": [] for k in keys}
  for v, p, want in zip(videos, prompts, wants, strict=True):
    if want is None:
      continue
    for k, ok in readback.score(v, p).items():
      if k in keys:
        hits[f"readback_{k}"].append(bool(ok))
  if probe is not None:
    for k in keys:
      hits[f"probe_{k}"] = []
    for got, want, v in zip(probe.read(videos), wants, videos, strict=True):
      for k in keys:
        if want and want.get(k) and not (k == "motion" and len(v) == 1):
          hits[f"probe_{k}"].append(got[k] == want[k])
  scored = sum(w is not None for w in wants)
  return {k: float(np.mean(v)) if v else None for k, v in hits.items()} | {"n": scored}
