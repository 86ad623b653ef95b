"""The benchmark binaries run end to end on a tiny config and report sane numbers."""

from absl import flags

from data_pipelines import benchmark as data_benchmark
from experiments import dit_tiny
from sora_jax import benchmark


def _cfg(data_dir):
  cfg = dit_tiny.get_config()
  cfg.data.data_dir = data_dir
  return cfg


def test_training_benchmark_reports_throughput_memory_and_packing_ratio(tiny_data_dir):
  result = benchmark.run(_cfg(tiny_data_dir), steps=2, warmup=1, padded=True)
  for key in ("steps_per_s", "tokens_per_s", "tflops_per_s", "mfu", "packed_over_padded"):
    assert result[key] > 0, key
  assert 0 < result["real_token_fraction"] <= 1
  assert 0 < result["padded_real_token_fraction"] <= 1
  assert result["compiled_bytes_per_device_gb"] > 0
  assert result["params"] > 0


def test_data_benchmark_reports_packing_against_buckets(tiny_data_dir):
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  result = data_benchmark.run(_cfg(tiny_data_dir), tiny_data_dir, num_batches=3, workers=[0])
  assert result["rows_per_s@0_workers"] > 0
  assert 0 < result["real_token_fraction@0_workers"] <= 1
  assert 0 < result["bucketed_real_token_fraction"] <= 1
  assert result["one_per_row_real_token_fraction"] < result["real_token_fraction@0_workers"]
