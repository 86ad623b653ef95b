r"""Which caption words does a trained model use? Loss with the true word against swapped words.

For packed batches of the synthetic dataset's eval split, each example's
caption has one attribute word (color, shape, motion or background) replaced
by every other word of the vocabulary, and the flow loss is computed with the
same noise and the same timestep t for the true and the swapped caption. A
model that uses the word has a lower loss with the true one: the printed win
rate is the fraction of (example, other word) pairs where it does (0.5: the
word is ignored), and the gap the mean loss difference, per t. Sampling
decides layout and motion at high t, so a word ignored there cannot steer
samples however large the guidance scale.

`denoising` asks the same batches a question that needs no captions: how close
the model's clean estimate x0_hat is to the clean tokens at each t, in dB (peak
to peak 2, so PSNR for pixels in [-1, 1]), beside the same figure for its noisy
input. Sampling ends on the estimate at its smallest t, so a model that is
worse there than its own input leaves that damage in every sample.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from data_pipelines import vocab
from sora_jax.core import sharding
from sora_jax.diffusion import flow
from sora_jax.sampling import run as run_lib
from sora_jax.training import input_pipeline

WORDS = {
  "color": vocab.COLORS,
  "shape": vocab.SHAPES,
  "motion": vocab.MOTIONS,
  "background": vocab.BACKGROUNDS,
}


def evaluate(
  run: run_lib.Run,
  data_dir: str,
  attribute: str,
  timesteps: Sequence[float],
  *,
  split: str = "eval",
  batches: int = 3,
  seed: int = 0,
) -> dict[float, dict[str, float]]:
  """{t: {"win_rate", "gap", "pairs"}} for the swapped `attribute` word."""
  cfg = run.cfg.copy_and_resolve_references()
  with cfg.unlocked():  # (Runs from before word_dropout lack the key.)
    cfg.data.update(data_dir=data_dir, caption_dropout=0.0, word_dropout=0.0)
  tok, model, k = run.tokenizer, run.model, run.opts.num_segments
  text_len, max_len = run.opts.text_len, cfg.data.max_text_len

  @jax.jit
  def per_example(params, batch, t, noise):
    err = flow.token_loss(model.merge(params), batch, t, noise, run.flow_cfg)
    return flow.per_segment(err, batch["segment_ids"], k)[0]

  def with_captions(batch, rows):
    """The batch with each row's (segment, caption) pairs as its text."""
    ids = np.zeros((len(rows), text_len), np.int32)
    seg = np.zeros_like(ids)
    for r, row in enumerate(rows):
      pos = 0
      for s, caption in row:
        t = tok.ids(caption, max_len)
        ids[r, pos : pos + len(t)], seg[r, pos : pos + len(t)] = t, s
        pos += len(t)
    return {**batch, "text_ids": ids, "text_segment_ids": seg}

  params = run.params
  stream = iter(input_pipeline.make_dataset(cfg, tok, run.stage, 0, 1, split=split))
  rng = np.random.default_rng(seed)
  wins = {t: [] for t in timesteps}
  gaps = {t: [] for t in timesteps}
  with jax.set_mesh(run.mesh), sharding.axis_rules(run.rules):
    for _ in range(batches):
      batch = next(stream)
      rows = []
      for r in range(batch["segment_ids"].shape[0]):
        row = []
        for s in range(1, int(batch["segment_ids"][r].max()) + 1):
          ids = batch["text_ids"][r][batch["text_segment_ids"][r] == s]
          row.append((s, tok.decode([int(i) for i in ids])))
        rows.append(row)
      for t_value in timesteps:
        t = np.where(batch["segment_ids"] > 0, t_value, 0.0).astype(np.float32)
        noise = rng.standard_normal(batch["tokens"].shape).astype(np.float32)
        base = np.asarray(per_example(params, with_captions(batch, rows), t, noise))
        for word in WORDS[attribute]:
          swapped, keys = [], []
          for r, row in enumerate(rows):
            new = []
            for s, caption in row:
              try:
                want = vocab.parse_caption(caption)[attribute]
              except ValueError:
                want = None
              if want and want != word:
                keys.append((r, s))
                caption = caption.replace(f" {want} ", f" {word} ", 1)
              new.append((s, caption))
            swapped.append(new)
          other = np.asarray(per_example(params, with_captions(batch, swapped), t, noise))
          for r, s in keys:
            wins[t_value].append(base[r, s - 1] < other[r, s - 1])
            gaps[t_value].append(other[r, s - 1] - base[r, s - 1])
  return {
    t: {"win_rate": float(np.mean(wins[t])), "gap": float(np.mean(gaps[t])), "pairs": len(wins[t])}
    for t in timesteps
    if wins[t]
  }


def denoising(
  run: run_lib.Run,
  data_dir: str,
  timesteps: Sequence[float],
  *,
  split: str = "eval",
  batches: int = 2,
  seed: int = 0,
) -> dict[float, dict[str, float]]:
  """{t: {"estimate_db", "input_db"}}: 10 log10(4 / MSE) of the model's clean estimate
  and of its noisy input against the clean tokens, over the real tokens of `batches`
  packed batches (captions kept, no guidance)."""
  cfg = run.cfg.copy_and_resolve_references()
  with cfg.unlocked():  # (Runs from before word_dropout lack the key.)
    cfg.data.update(data_dir=data_dir, caption_dropout=0.0, word_dropout=0.0)
  model = run.model

  @jax.jit
  def errors(params, batch, t, noise):
    x0 = batch["tokens"]
    xt, out = flow.network_output(model.merge(params), batch, t, noise)
    real = (batch["segment_ids"] > 0)[..., None].astype(jnp.float32)
    n = real.sum() * x0.shape[-1]
    estimate = flow.clean_estimate(out, xt, t, run.flow_cfg)
    return (
      jnp.sum(real * jnp.square(estimate - x0)) / n,
      jnp.sum(real * jnp.square(xt - x0)) / n,
    )

  stream = iter(input_pipeline.make_dataset(cfg, run.tokenizer, run.stage, 0, 1, split=split))
  data = [next(stream) for _ in range(batches)]
  rng = np.random.default_rng(seed)
  result = {}
  with jax.set_mesh(run.mesh), sharding.axis_rules(run.rules):
    for t_value in timesteps:
      est, inp = [], []
      for batch in data:
        t = np.where(batch["segment_ids"] > 0, t_value, 0.0).astype(np.float32)
        noise = rng.standard_normal(batch["tokens"].shape).astype(np.float32)
        e, i = errors(run.params, batch, t, noise)
        est.append(float(e))
        inp.append(float(i))
      result[t_value] = {
        "estimate_db": float(10 * np.log10(4.0 / max(np.mean(est), 1e-12))),
        "input_db": float(10 * np.log10(4.0 / max(np.mean(inp), 1e-12))),
      }
  return result
