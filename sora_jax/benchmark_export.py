r"""Peak host memory and time of `sora_jax.export` on a checkpoint of any size.

  python -m sora_jax.benchmark_export --config=experiments/dit_xl.py \
      --tokenizer=out/demo/data/tokenizer.model --workdir=/tmp/bench_export \
      [--dtype=bfloat16] [--max_shard_size=2GB] [--restore_group_size=256MB]

Writes a checkpoint of the config's model with freshly initialized weights
(EMA item only; the export reads nothing else) into --workdir, then runs the
export command in a child process and reads that process's peak resident
memory (VmHWM, which exec resets; rusage's maxrss would carry the parent's),
beside the peak of a child that only imports the same modules. Prints one JSON line (also written to WORKDIR/benchmark_export.json):
parameters, checkpoint bytes, largest tensor, shard cap, peak RSS, the growth
over the import baseline, and seconds.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence

import jax
import numpy as np
from absl import flags
from ml_collections import config_flags

from data_pipelines import tokenizer as tokenizer_lib
from sora_jax.core import checkpointing, cli, configs, safetensors_io, sharding
from sora_jax.core.sharded_model import ShardedModel
from sora_jax.diffusion import latent
from sora_jax.models import dit

FLAGS = flags.FLAGS


def define_flags() -> None:
  config_flags.DEFINE_config_file("config", None, "Model config (e.g. experiments/dit_xl.py).")
  flags.DEFINE_string("tokenizer", None, "A sentencepiece model (sets the vocabulary size).")
  flags.DEFINE_string("workdir", None, "Scratch directory for the checkpoint and the export.")
  flags.DEFINE_string("dtype", "bfloat16", "Export dtype.")
  flags.DEFINE_string("max_shard_size", "2GB", "Export shard cap.")
  flags.DEFINE_string("restore_group_size", "256MB", "Arrays restored at a time by the export.")


def write_checkpoint(cfg, tokenizer_path: str, workdir: str) -> dict[str, int]:
  """A one-step run directory holding freshly initialized EMA weights of cfg's DiT."""
  tok = tokenizer_lib.Tokenizer(tokenizer_path)
  dit_cfg = dit.DiTConfig.from_config(
    cfg.model, latent.geometry_for(cfg).patch_dim, tok.vocab_size, dit.packing_of(cfg.data)
  )
  mesh = sharding.make_mesh({"fsdp": -1})
  model = ShardedModel(dit_cfg, mesh, tuple(cfg.sharding.rules), dit.DiT)
  params = model.init(0)
  leaves = jax.tree.leaves(params)
  stats = {
    "num_params": int(sum(x.size for x in leaves)),
    "checkpoint_bytes": int(sum(x.nbytes for x in leaves)),
    "largest_tensor_bytes": int(max(x.nbytes for x in leaves)),
  }
  os.makedirs(workdir, exist_ok=True)
  shutil.copyfile(tokenizer_path, os.path.join(workdir, tokenizer_lib.MODEL_NAME))
  mngr = checkpointing.manager(workdir, keep=1, async_save=False)
  state = {"step": np.zeros((), np.int32)}
  checkpointing.save(mngr, 1, state, params, None, configs.to_json(cfg))
  mngr.wait_until_finished()
  mngr.close()
  return stats


_WRAPPER = """
import atexit, os, runpy, sys
def report():
  with open("/proc/self/status") as f:
    hwm = next(line for line in f if line.startswith("VmHWM"))
  with open(os.environ["SORA_JAX_HWM_FILE"], "w") as f:
    f.write(str(int(hwm.split()[1]) * 1024))
atexit.register(report)
sys.argv = sys.argv[1:]
if sys.argv[0] == "-c":
  exec(sys.argv[1])
else:
  runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""


def peak_rss(args: list[str], scratch: str) -> tuple[int, float, int, str]:
  """(peak resident bytes, seconds, return code, stderr tail) of `python ARGS` in a child."""
  hwm_file = os.path.join(scratch, "hwm")
  env = dict(os.environ, SORA_JAX_HWM_FILE=hwm_file)
  t0 = time.perf_counter()
  r = subprocess.run(
    [sys.executable, "-c", _WRAPPER, *args], env=env, capture_output=True, text=True
  )
  seconds = time.perf_counter() - t0
  with open(hwm_file) as f:
    return int(f.read()), seconds, r.returncode, r.stderr[-2000:]


def measure(
  cfg, tokenizer_path: str, workdir: str, dtype: str, max_shard_size: str, group: str
) -> dict[str, float]:
  run = os.path.join(workdir, "run")
  out = os.path.join(workdir, "export")
  for stale in (run, out):  # WORKDIR/logs stays: the command's log is open there.
    shutil.rmtree(stale, ignore_errors=True)
  stats = write_checkpoint(cfg, tokenizer_path, run)
  baseline, _, rc, err = peak_rss(["-c", "import jax, sora_jax.export; jax.devices()"], workdir)
  if rc:
    raise RuntimeError(f"baseline child failed: {err}")
  peak, seconds, rc, err = peak_rss(
    [
      "sora_jax.export",
      f"--workdir={run}",
      f"--output={out}",
      f"--dtype={dtype}",
      f"--max_shard_size={max_shard_size}",
      f"--restore_group_size={group}",
    ],
    workdir,
  )
  if rc:
    raise RuntimeError(f"export failed: {err}")
  result = {
    **stats,
    "dtype": dtype,
    "max_shard_size_bytes": safetensors_io.parse_size(max_shard_size),
    "restore_group_bytes": safetensors_io.parse_size(group),
    "export_bytes": int(
      sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out) if "safetensors" in f)
    ),
    "peak_rss_bytes": peak,
    "import_baseline_rss_bytes": baseline,
    "growth_bytes": peak - baseline,
    "export_seconds": round(seconds, 2),
  }
  with open(os.path.join(workdir, "benchmark_export.json"), "w") as f:
    json.dump(result, f, indent=2)
  return result


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments {argv[1:]}")
  for name in ("config", "tokenizer", "workdir"):
    if not FLAGS[name].value:
      sys.exit(f"error: --{name} is required")
  if not os.path.isfile(FLAGS.tokenizer):
    sys.exit(f"error: --tokenizer={FLAGS.tokenizer}: no such file")
  cli.quiet()
  log_file = cli.log_to_file(os.path.join(FLAGS.workdir, "logs"), "benchmark_export")
  cli.say(f"sora_jax.benchmark_export: logs in {log_file}")
  try:
    result = measure(
      FLAGS.config,
      FLAGS.tokenizer,
      FLAGS.workdir,
      FLAGS.dtype,
      FLAGS.max_shard_size,
      FLAGS.restore_group_size,
    )
  except RuntimeError as e:
    sys.exit(f"error: {str(e).strip().splitlines()[-1]}")
  print(json.dumps(result))


if __name__ == "__main__":
  define_flags()
  cli.run(main)
