"""Input-pipeline measurements: packing efficiency and throughput, packed against bucketed.

`measure` times packed batches of a config's training pipeline for each
worker count (rows/s, real tokens/s, real-token fraction), then takes the same
kind of examples and pads each alone to the smallest of the bucket lengths
L/8, L/4, L/2, L (what bucketing trainers do), and to the full row L, and
reports their real-token fractions. The token geometry is an argument: pixel
configs get it from their patch (`pixel_geometry`); latent configs need their
autoencoder, so `sora_jax.benchmark --input_pipeline` passes it in.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence

import numpy as np

from data_pipelines import pipeline, sizing, tokenizer


def pixel_geometry(cfg) -> sizing.Geometry:
  """The token geometry of a pixel-space config (`config.latent.kind == "pixel"`)."""
  kind = cfg.latent.get("kind", "pixel") if "latent" in cfg else "pixel"
  if kind != "pixel":
    raise ValueError(
      f"config.latent.kind={kind!r}: the latent geometry needs the autoencoder; run "
      "`python -m sora_jax.benchmark --input_pipeline --config=...` instead"
    )
  return sizing.Geometry(tuple(int(p) for p in cfg.model.patch), (1, 1, 1), 3)


def time_packed(
  cfg, geom: sizing.Geometry, data_dir: str, workers: int, num_batches: int
) -> dict[str, float]:
  opts = pipeline.Options.from_config(cfg.data)
  opts = pipeline.Options(**{**opts.__dict__, "num_workers": workers})
  source, decode = pipeline.open_source(cfg.data.source, data_dir, cfg.data.split)
  tok = tokenizer.load(data_dir)
  tokenize = pipeline.Tokenize(opts, geom, tok, decode_record=decode)
  ds = pipeline.make_dataset(source, tokenize, batch_size=cfg.train.global_batch_size, seed=0)
  it = iter(ds)
  next(it)  # Start-up (workers, first packing round) is not timed.
  real = total = 0
  t0 = time.perf_counter()
  for _ in range(num_batches):
    batch = next(it)
    real += int((batch["segment_ids"] > 0).sum())
    total += batch["segment_ids"].size
  dt = time.perf_counter() - t0
  rows = num_batches * cfg.train.global_batch_size
  return {"rows_per_s": rows / dt, "tokens_per_s": real / dt, "real_token_fraction": real / total}


def padded_fractions(
  cfg, geom: sizing.Geometry, data_dir: str, num_examples: int
) -> dict[str, float]:
  """Real-token fractions of the same kind of examples padded one per row."""
  opts = pipeline.Options.from_config(cfg.data)
  source, decode = pipeline.open_source(cfg.data.source, data_dir, cfg.data.split)
  tokenize = pipeline.Tokenize(opts, geom, tokenizer.load(data_dir), decode)
  rng = np.random.default_rng(0)
  lengths = []
  for i in range(num_examples):
    ex = tokenize(source[i % len(source)], rng)
    if ex is not None:
      lengths.append(len(ex["tokens"]))
  lengths = np.asarray(lengths)
  buckets = np.asarray(pipeline.bucket_lengths(opts.seq_len))
  padded = buckets[np.searchsorted(buckets, lengths)]
  return {
    "bucketed_real_token_fraction": float(lengths.sum() / padded.sum()),
    "one_per_row_real_token_fraction": float(lengths.mean() / opts.seq_len),
    "mean_example_tokens": float(lengths.mean()),
    "buckets": buckets.tolist(),
  }


def measure(
  cfg, geom: sizing.Geometry, data_dir: str, num_batches: int, workers: Sequence[int]
) -> dict:
  """Packed throughput per worker count and the padded layouts' real-token fractions."""
  result = {
    "data_dir": data_dir,
    "seq_len": cfg.data.seq_len,
    "rows_per_batch": cfg.train.global_batch_size,
  }
  for w in workers:
    for k, v in time_packed(cfg, geom, data_dir, w, num_batches).items():
      result[f"{k}@{w}_workers"] = v
  result.update(padded_fractions(cfg, geom, data_dir, num_batches * cfg.train.global_batch_size))
  return result


def report(result: dict, output_json: str | None = None) -> None:
  """Prints a result table (shared by the benchmark commands) and optionally writes JSON."""
  width = max(map(len, result))
  for k, v in result.items():
    print(f"{k:<{width}}  {v:.4g}" if isinstance(v, float) else f"{k:<{width}}  {v}")
  if output_json:
    with open(output_json, "w") as f:
      json.dump(result, f, indent=2)
