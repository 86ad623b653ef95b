"""The ahead-of-time compile binary: memory and FLOPs for a target, one-line errors, OOM.

The binary runs in a subprocess because it sets the number of fake CPU devices
itself, before jax starts a backend.
"""

import importlib.util
import json
import re
import resource
import subprocess
import sys

import pytest

from sora_jax import compile as aot


def _run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
  return subprocess.run(
    [sys.executable, "-m", "sora_jax.compile", *args],
    capture_output=True,
    text=True,
    timeout=timeout,
  )


def _error_lines(proc: subprocess.CompletedProcess) -> list[str]:
  return [line for line in proc.stderr.splitlines() if line.startswith("error:")]


def test_tiny_preset_compiles_on_fake_devices_with_fsdp_and_tensor(tmp_path):
  out = tmp_path / "report.json"
  proc = _run(
    "--config=experiments/dit_tiny.py",
    "--topology=cpu:8",
    "--config.mesh.fsdp=4",
    "--config.mesh.tensor=2",
    "--hbm_gb=1",
    f"--output_json={out}",
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr
  # Library logs (absl's "I1129 ..." lines) go to a file beside the report, not the terminal.
  assert not re.search(r"^[IW]\d{4} ", proc.stderr, re.M), proc.stderr[-3000:]
  assert (tmp_path / "logs" / "compile.log").exists()
  assert "mesh data=1 fsdp=4 context=1 tensor=2" in proc.stdout
  for line in ("arguments", "temporaries", "total", "XLA cost analysis", "analytic, full rows"):
    assert line in proc.stdout, line
  assert "% of 1 GiB" in proc.stdout
  r = json.loads(out.read_text())
  assert r["devices"] == 8 and r["mesh"] == {"data": 1, "fsdp": 4, "context": 1, "tensor": 2}
  assert 0 < r["total_gb"] < 1 and r["fits"]
  assert r["arguments_gb"] > 0 and r["temporaries_gb"] > 0
  assert r["xla_flops_per_device"] > 0
  # The traced count multiplies the scanned layers out: within 20% of the analytic count
  # for full rows (remat is off in the tiny preset).
  assert 0.8 < r["traced_over_analytic"] < 1.2
  assert r["xla_flops_per_device"] < r["traced_flops_per_device"]  # A scan counts once.


@pytest.mark.parametrize(
  "args, message",
  [
    (["--config.mesh.fsdp=3"], "config.mesh: mesh="),
    (["--config.mesh.fsdp=-1", "--config.train.global_batch_size=6"], "global_batch_size=6"),
  ],
)
def test_a_layout_that_does_not_divide_is_one_error_line(args, message):
  proc = _run("--config=experiments/dit_tiny.py", "--topology=cpu:8", *args)
  assert proc.returncode != 0
  errors = _error_lines(proc)
  assert len(errors) == 1 and message in errors[0], proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr


def test_topology_names():
  t = aot.parse_topology("cpu:2x4")
  assert (t.kind, t.num_devices, t.hosts, t.estimate) == ("cpu", 8, 2, False)
  t = aot.parse_topology("h100:8")
  assert (t.kind, t.num_devices, t.estimate) == ("gpu", 8, True)
  assert aot.GPU_KINDS[t.generation] == "NVIDIA H100 80GB HBM3"
  t = aot.parse_topology("v5p:2x2x2")
  assert (t.kind, t.num_devices, t.dims) == ("tpu", 8, (2, 2, 2))
  for bad, message in [
    ("v5e:2x2x1", "has 2 dimensions"),
    ("v5p:2x2", "has 3 dimensions"),
    ("tpu:8", "unknown device"),
    ("cpu", "not NAME:SHAPE"),
    ("cpu:0", "must be positive"),
  ]:
    with pytest.raises(ValueError, match=message):
      aot.parse_topology(bad)


def test_hbm_and_peak_tables_know_the_device_kinds():
  from sora_jax.core import flops

  kinds = {
    "NVIDIA H100 80GB HBM3": 80,
    "NVIDIA H200": 141,
    "NVIDIA A100-SXM4-40GB": 40,
    "NVIDIA A100-SXM4-80GB": 80,
    "TPU v4": 32,
    "TPU v5 lite": 16,
    "TPU v5": 95,
    "TPU v6 lite": 32,
  }
  for kind, gib in kinds.items():
    assert flops.by_device_kind(flops.HBM_GIB, kind) == gib, kind
    assert flops.by_device_kind(flops.PEAK_TFLOPS, kind) > 0, kind
  assert flops.by_device_kind(flops.HBM_GIB, "cpu") is None


@pytest.mark.skipif(
  importlib.util.find_spec("libtpu") is not None, reason="libtpu is installed here"
)
def test_tpu_topology_without_libtpu_says_how_to_install_it():
  proc = _run("--config=experiments/dit_tiny.py", "--topology=v5e:2x2")
  assert proc.returncode != 0
  errors = _error_lines(proc)
  assert len(errors) == 1 and "make install ACCEL=tpu" in errors[0], proc.stderr[-2000:]


def test_8b_preset_compiles_abstractly_and_out_of_memory_is_caught():
  """dit_8b on 8 fake H100s: compiled without allocating its 8.9B parameters (nor their Adam
  moments and EMA, ~140 GB), and reported out of memory before any GPU is booked."""
  proc = _run("--config=experiments/dit_8b.py", "--topology=h100:8")
  assert proc.returncode != 0
  errors = _error_lines(proc)
  assert len(errors) == 1, proc.stderr[-3000:]
  assert errors[0].startswith("error: out of memory on --topology=h100:8: the step needs")
  assert "80 GiB (estimate)" in errors[0]
  assert "8.90B parameters" in proc.stdout and "temporaries" in proc.stdout
  peak_rss_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
  assert peak_rss_gib < 6, peak_rss_gib


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None, reason="needs libtpu")
def test_tpu_compiler_reports_out_of_memory():
  proc = _run("--config=experiments/dit_3b.py", "--topology=v5e:2x2")
  assert proc.returncode != 0
  errors = _error_lines(proc)
  assert len(errors) == 1 and errors[0].startswith("error: out of memory on --topology=v5e:2x2")
