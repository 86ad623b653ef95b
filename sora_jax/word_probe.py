r"""Which caption words does a trained model use? Loss with the true word against swapped words.

  python -m sora_jax.word_probe --workdir=RUN --data_dir=DATA [--attribute=motion] \
      [--t=0.5,0.8,0.95,1.0] [--batches=3]

For packed batches of the synthetic dataset's eval split, each example's
caption has one attribute word (color, shape, motion or background) replaced
by every other word of the vocabulary, and the flow loss is computed with the
same noise and the same timestep t for the true and the swapped caption. A
model that uses the word has a lower loss with the true one: the printed win
rate is the fraction of (example, other word) pairs where it does (0.5: the
word is ignored), and the gap the mean loss difference, per t. Sampling
decides layout and motion at high t, so a word ignored there cannot steer
samples however large the guidance scale.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from data_pipelines import shards, vocab
from data_pipelines.tokenizer import MODEL_NAME, Tokenizer
from sora_jax import checkpointing, config_lib, factory, flow, input_pipeline, sharding

FLAGS = flags.FLAGS
WORDS = {
  "color": vocab.COLORS,
  "shape": vocab.SHAPES,
  "motion": vocab.MOTIONS,
  "background": vocab.BACKGROUNDS,
}


def define_flags() -> None:
  flags.DEFINE_string("workdir", None, "Training workdir holding checkpoints/.")
  flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
  flags.DEFINE_string("data_dir", None, "The synthetic dataset whose captions are probed.")
  flags.DEFINE_string("split", "eval", "Split to read.")
  flags.DEFINE_enum("attribute", "motion", list(WORDS), "Which caption word to swap.")
  flags.DEFINE_list("t", ["0.5", "0.8", "0.95", "1.0"], "Timesteps (1 = pure noise).")
  flags.DEFINE_integer("batches", 3, "Packed batches to read.")


def probe(
  workdir: str,
  data_dir: str,
  attribute: str,
  timesteps: Sequence[float],
  *,
  step: int | None = None,
  split: str = "eval",
  batches: int = 3,
  seed: int = 0,
) -> dict[float, dict[str, float]]:
  """{t: {"win_rate", "gap", "pairs"}} for the swapped `attribute` word."""
  step, config = checkpointing.restore_config(workdir, step)
  cfg = config_lib.from_json(config)
  cfg.data.data_dir, cfg.data.caption_dropout = data_dir, 0.0
  tok = Tokenizer(f"{workdir}/{MODEL_NAME}")
  mesh = sharding.make_mesh({"fsdp": -1})
  rules = tuple(cfg.sharding.rules)
  stage = factory.stage(cfg)
  model = factory.Model(
    factory.dit_config(cfg, tok.vocab_size, factory.geometry(cfg, stage)), mesh, rules
  )
  params = checkpointing.restore_ema(workdir, step, model.abstract_params)
  fc, k = factory.flow_config(cfg), factory.num_segments(cfg)
  text_len, max_len = factory.options(cfg).text_len, cfg.data.max_text_len

  @jax.jit
  def per_example(params, tokens, coords, seg, t, noise, text_ids, text_seg):
    real = (seg > 0)[..., None]
    xt = jnp.where(real, (1 - t[..., None]) * tokens + t[..., None] * noise, 0.0)
    out = model.merge(params)(xt, coords, seg, t, text_ids, text_seg)
    err = jnp.mean(jnp.square(flow.velocity(out, xt, t, fc, min_t=fc.min_t) - (noise - tokens)), -1)
    one_hot = jax.nn.one_hot(seg, k)[..., 1:]
    return jnp.einsum("bl,blk->bk", err, one_hot) / jnp.maximum(one_hot.sum(1), 1)

  def text_arrays(rows):
    ids = np.zeros((len(rows), text_len), np.int32)
    seg = np.zeros_like(ids)
    for r, row in enumerate(rows):
      pos = 0
      for s, caption in row:
        t = tok.ids(caption, max_len)
        ids[r, pos : pos + len(t)], seg[r, pos : pos + len(t)] = t, s
        pos += len(t)
    return ids, seg

  stream = iter(input_pipeline.make_dataset(cfg, tok, stage, 0, 1, split=split))
  rng = np.random.default_rng(seed)
  wins = {t: [] for t in timesteps}
  gaps = {t: [] for t in timesteps}
  with jax.set_mesh(mesh), sharding.axis_rules(rules):
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
        args = (batch["tokens"], batch["coords"], batch["segment_ids"], t, noise)
        base = np.asarray(per_example(params, *args, *text_arrays(rows)))
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
          other = np.asarray(per_example(params, *args, *text_arrays(swapped)))
          for r, s in keys:
            wins[t_value].append(base[r, s - 1] < other[r, s - 1])
            gaps[t_value].append(other[r, s - 1] - base[r, s - 1])
  return {
    t: {"win_rate": float(np.mean(wins[t])), "gap": float(np.mean(gaps[t])), "pairs": len(wins[t])}
    for t in timesteps
    if wins[t]
  }


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments {argv[1:]}")
  for name in ("workdir", "data_dir"):
    if not getattr(FLAGS, name):
      sys.exit(f"error: --{name} is required")
  try:
    timesteps = [float(t) for t in FLAGS.t]
  except ValueError:
    sys.exit(f"error: --t={','.join(FLAGS.t)}: expected numbers in (0, 1]")
  if not all(0 < t <= 1 for t in timesteps):
    sys.exit(f"error: --t={','.join(FLAGS.t)}: timesteps must lie in (0, 1]")
  try:
    result = probe(
      FLAGS.workdir,
      FLAGS.data_dir,
      FLAGS.attribute,
      timesteps,
      step=FLAGS.step,
      split=FLAGS.split,
      batches=FLAGS.batches,
    )
  except (checkpointing.CheckpointError, shards.DatasetError, FileNotFoundError) as e:
    sys.exit(f"error: {e}")
  for t, r in result.items():
    print(
      f"t={t:<5} {FLAGS.attribute}: the true word has the lower loss in "
      f"{r['win_rate']:.0%} of {r['pairs']} swaps; mean loss gap {r['gap']:+.5f}"
    )
  print(json.dumps({str(t): r for t, r in result.items()}))


if __name__ == "__main__":
  define_flags()
  app.run(main)
