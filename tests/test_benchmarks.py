"""The benchmark binaries run end to end on a tiny config and report sane numbers."""

import json

import pytest
from absl import flags

from data_pipelines import benchmark as data_benchmark
from data_pipelines import pipeline
from experiments import dit_tiny
from sora_jax import benchmark


def _cfg(data_dir):
  cfg = dit_tiny.get_config()
  cfg.data.data_dir = data_dir
  return cfg


def test_padded_buckets_fit_the_rows_or_the_examples():
  demo = pipeline.Options(seq_len=256, max_tokens_per_example=40)
  assert benchmark.bucket_lengths(demo) == [32, 64, 128, 256]
  assert benchmark.bucket_lengths(demo, "examples") == [8, 16, 32, 64]
  long_rows = pipeline.Options(seq_len=16384, max_tokens_per_example=96)
  assert benchmark.bucket_lengths(long_rows) == [2048, 4096, 8192, 16384]
  assert benchmark.bucket_lengths(long_rows, "examples") == [16, 32, 64, 128]
  whole_row = pipeline.Options(seq_len=256, max_tokens_per_example=256)
  assert benchmark.bucket_lengths(whole_row, "examples") == [32, 64, 128, 256]
  with pytest.raises(ValueError, match="padded_buckets=tight"):
    benchmark.bucket_lengths(demo, "tight")


def test_padded_batches_are_full_with_every_example_in_its_bucket():
  import numpy as np

  opts = pipeline.Options(seq_len=64, max_tokens_per_example=32, max_text_len=4)
  examples = [
    {
      "tokens": np.full((n, 3), n, np.float32),
      "coords": np.zeros((n, 3), np.int32),
      "text_ids": np.ones(2, np.int32),
    }
    for n in (5, 9, 30, 31)
  ]
  batches = benchmark.padded_batches(examples, opts, rows=2, data_shards=1, fit="examples")
  # Buckets 4..32: 5 -> 8 (16 rows), 9 -> 16 (8 rows), 30 and 31 -> 32 (4 rows), all
  # full (2 x 64 tokens each), a bucket's examples cycled to fill its batch.
  assert [b["tokens"].shape[:2] for b in batches] == [(16, 8), (8, 16), (4, 32)]
  for b in batches:
    lengths = (b["segment_ids"] > 0).sum(1)
    np.testing.assert_array_equal(lengths, b["tokens"][:, 0, 0])
  assert sorted(set((batches[2]["segment_ids"] > 0).sum(1).tolist())) == [30, 31]
  with pytest.raises(ValueError, match="no example fits"):
    benchmark.padded_batches([], opts, rows=2, data_shards=1)


def test_training_benchmark_reports_throughput_memory_and_packing_ratio(tiny_data_dir):
  cfg = _cfg(tiny_data_dir)
  result = benchmark.run(cfg, steps=2, warmup=1, padded=True, rounds=2, padded_buckets="examples")
  opts = pipeline.Options.from_config(cfg.data)
  assert result["padded_buckets"] == benchmark.bucket_lengths(opts, "examples")
  for key in ("steps_per_s", "tokens_per_s", "tflops_per_s", "mfu", "packed_over_padded"):
    assert result[key] > 0, key
  # Packed and padded took turns; the reported ratio is the median of the rounds'.
  assert len(result["packed_over_padded_rounds"]) == 2
  assert min(result["packed_over_padded_rounds"]) <= result["packed_over_padded"]
  assert result["packed_over_padded"] <= max(result["packed_over_padded_rounds"])
  assert 0 < result["real_token_fraction"] <= 1
  assert 0 < result["padded_real_token_fraction"] <= 1
  assert result["compiled_bytes_per_device_gb"] > 0
  assert result["params"] > 0
  waste = {k: v for k, v in result.items() if k.startswith("attention_waste_")}
  assert {"attention_waste_xla", "attention_waste_pallas_gpu", "attention_waste_segments"} <= set(
    waste
  )
  # The real packer's rows keep the segments backend's contract (ids 1..n, contiguous).
  assert result["attention_segments_broken_rows"] == 0
  assert 0 < result["cross_attention_waste_segments"] < result["cross_attention_waste_xla"] < 1
  json.dumps(result)  # What --output_json writes: plain Python numbers.
  assert all(0 <= v < 1 for v in waste.values()) and 0 < result["attention_useful_fraction"] < 1


def test_data_benchmark_reports_packing_against_buckets(tiny_data_dir):
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  result = data_benchmark.run(_cfg(tiny_data_dir), tiny_data_dir, num_batches=3, workers=[0])
  assert result["rows_per_s@0_workers"] > 0
  assert 0 < result["real_token_fraction@0_workers"] <= 1
  assert 0 < result["bucketed_real_token_fraction"] <= 1
  assert result["one_per_row_real_token_fraction"] < result["real_token_fraction@0_workers"]
  # The training benchmark measures the same input pipeline with the config's stage geometry.
  same = benchmark.run_input_pipeline(_cfg(tiny_data_dir), 3, ["0"], 0)
  assert same["real_token_fraction@0_workers"] == result["real_token_fraction@0_workers"]
  assert same["bucketed_real_token_fraction"] == result["bucketed_real_token_fraction"]


def test_training_benchmark_compares_mesh_layouts_on_the_same_batches(tiny_data_dir):
  layouts = benchmark.parse_layouts("fsdp=2,context=4; data=1")
  assert layouts == [{"fsdp": 2, "context": 4}, {"data": 1}]
  result = benchmark.run(_cfg(tiny_data_dir), steps=1, warmup=1, padded=False, layouts=layouts)
  rows = result["layouts"]
  assert [(r["layout"], r["devices"]) for r in rows] == [("fsdp=2,context=4", 8), ("1 device", 1)]
  for r in rows:
    for key in ("steps_per_s", "tokens_per_s", "tflops_per_s", "mfu", "compiled_gb_per_device"):
      assert r[key] > 0, (r["layout"], key)
  # The cost of context parallelism: tokens/s against the 1-device mesh, per device.
  assert rows[1]["x1dev"] == 1.0
  assert rows[0]["eff"] == rows[0]["x1dev"] / 8 > 0
  table = benchmark.format_layouts(rows).splitlines()
  assert table[0].split() == ["layout", "dev", "steps/s", "tokens/s", "TFLOP/s", "MFU"] + [
    "GiB/dev",
    "x1dev",
    "eff",
  ]
  assert len(table) == 3


def test_layouts_flag_syntax_and_the_one_device_baseline():
  assert benchmark.parse_layouts("fsdp=8;tensor=2,fsdp=4;context=-1;") == [
    {"fsdp": 8},
    {"tensor": 2, "fsdp": 4},
    {"context": -1},
  ]
  for bad in ("fsdp", "fsdp=0", "pipeline=2", "fsdp=-1,tensor=-1", "fsdp=2,fsdp=4", ";"):
    with pytest.raises(ValueError, match="--layouts"):
      benchmark.parse_layouts(bad)
  assert benchmark.with_baseline([{"context": 4}]) == [{"context": 4}, {}]
  assert benchmark.with_baseline([{"context": 4}, {"tensor": 1}]) == [{"context": 4}, {"tensor": 1}]
  assert benchmark.with_baseline([{"fsdp": 8}]) == [{"fsdp": 8}]
