"""Prompt expansion: a short prompt in, a descriptive caption out, before sampling.

Two expanders behind one call, `expander(prompts, seed) -> expanded prompts`:

  Learned   a trained expander directory (sora_jax.train_expander): samples the
            descriptive caption token by token at the directory's temperature; prompt
            i draws from seed + i, so an expansion does not depend on its batch.
  Command   a team's own expander (an LLM behind a script), `command:PROGRAM ARGS`:
            started per call, sent one JSON line per prompt {"prompt": ..., "seed": ...}
            on stdin, and answering one line per prompt {"expanded": ...}, in order.

`load(spec)` takes a directory or `command:...`.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import subprocess
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from data_pipelines import tokenizer as tokenizer_lib
from sora_jax.model_io import expander_dir
from sora_jax.models import expander as expander_lib

COMMAND_PREFIX = "command:"


class ExpandError(ValueError):
  """The expander failed; one line says why."""


class Learned:
  def __init__(self, path: str, temperature: float | None = None):
    self.model, self.tokenizer, self.config = expander_dir.load(path)
    self.temperature = (
      float(self.config.get("sample", {}).get("temperature", 0.7))
      if temperature is None
      else temperature
    )
    self.max_len = self.model.cfg.max_len
    self._logits = nnx.jit(lambda model, ids: jax.nn.log_softmax(model(ids), axis=-1))

  def __call__(self, prompts: Sequence[str], seed: int = 0) -> list[str]:
    if not prompts:
      return []
    n, pad = len(prompts), tokenizer_lib.PAD_ID
    ids = np.full((n, self.max_len), pad, np.int32)
    pos = np.zeros(n, np.int64)
    for i, p in enumerate(prompts):
      prefix = expander_lib.prompt_prefix(self.tokenizer.ids(p, self.max_len), self.max_len)
      ids[i, : len(prefix)] = prefix
      pos[i] = len(prefix)
    start = pos.copy()
    rngs = [np.random.default_rng(seed + i) for i in range(n)]
    done = pos >= self.max_len
    while not done.all():
      logp = np.asarray(self._logits(self.model, jnp.asarray(ids)))  # [n, L, V]
      for i in np.flatnonzero(~done):
        row = logp[i, pos[i] - 1].astype(np.float64)
        row[[pad, tokenizer_lib.BOS_ID, tokenizer_lib.UNK_ID]] = -np.inf
        if self.temperature <= 0:
          tok = int(np.argmax(row))
        else:
          p = np.exp((row - row.max()) / self.temperature)
          tok = int(rngs[i].choice(len(p), p=p / p.sum()))
        ids[i, pos[i]] = tok
        pos[i] += 1
        done[i] = tok == tokenizer_lib.EOS_ID or pos[i] >= self.max_len
    out = []
    for i in range(n):
      body = [int(t) for t in ids[i, start[i] : pos[i]] if t != tokenizer_lib.EOS_ID]
      text = self.tokenizer.decode(body).strip()
      out.append(text or prompts[i])  # An empty expansion keeps the prompt.
    return out


class Command:
  def __init__(self, command: str, timeout: float = 120.0):
    self.argv = shlex.split(command)
    if not self.argv:
      raise ExpandError("--expander=command: names no program")
    self.timeout = timeout

  def __call__(self, prompts: Sequence[str], seed: int = 0) -> list[str]:
    lines = "".join(
      json.dumps({"prompt": p, "seed": seed + i}) + "\n" for i, p in enumerate(prompts)
    )
    try:
      r = subprocess.run(
        self.argv, input=lines, capture_output=True, text=True, timeout=self.timeout
      )
    except (OSError, subprocess.TimeoutExpired) as e:
      raise ExpandError(f"expander command {self.argv[0]!r}: {type(e).__name__}: {e}") from None
    if r.returncode != 0:
      tail = (r.stderr.strip().splitlines() or [""])[-1][:200]
      raise ExpandError(f"expander command exited with status {r.returncode}: {tail}")
    out = []
    for line in r.stdout.splitlines():
      try:
        text = json.loads(line)["expanded"]
      except (json.JSONDecodeError, KeyError, TypeError):
        continue  # Not a response (a log line, say).
      if isinstance(text, str) and len(out) < len(prompts):
        out.append(text.strip() or prompts[len(out)])  # An empty expansion keeps the prompt.
    if len(out) != len(prompts):
      raise ExpandError(f"expander command answered {len(out)} of {len(prompts)} prompts")
    return out


def load(spec: str, temperature: float | None = None):
  """The expander named by `spec`: a trained expander directory or `command:PROGRAM ARGS`."""
  if spec.startswith(COMMAND_PREFIX):
    return Command(spec[len(COMMAND_PREFIX) :])
  try:
    return Learned(spec, temperature)
  except expander_dir.ExpanderError as e:
    raise ExpandError(str(e)) from None


def expand_requests(expander, requests: Sequence, seed: int = 0) -> tuple[list, list[dict]]:
  """Requests whose prompts (and storyboard window texts) are expanded, and per request
  {"prompt", "expanded"} (the window texts under "windows")."""
  texts: list[str] = []
  for req in requests:
    texts.append(req.prompt)
    texts.extend(text for text, _, _ in req.prompts)
  unique = list(dict.fromkeys(texts))
  table = dict(zip(unique, expander(unique, seed=seed), strict=True))
  out, said = [], []
  for req in requests:
    windows = tuple((table[t], a, b) for t, a, b in req.prompts)
    out.append(dataclasses.replace(req, prompt=table[req.prompt], prompts=windows))
    entry = {"prompt": req.prompt, "expanded": table[req.prompt]}
    if windows:
      entry["windows"] = [{"prompt": t, "expanded": table[t]} for t, _, _ in req.prompts]
    said.append(entry)
  return out, said
