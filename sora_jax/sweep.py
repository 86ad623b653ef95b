r"""Runs a scaling-law sweep: one training run per point of a sweep file, each with a result.json.

  python -m sora_jax.sweep --sweep=experiments/sweeps/cpu_isoflop.py --root=DIR --dry_run
  python -m sora_jax.sweep --sweep=experiments/sweeps/cpu_isoflop.py --root=DIR [--parallel=N]
  python -m sora_jax.sweep --sweep=FILE --root=DIR --point=K        # one point (a pod job)
  python -m sora_jax.sweep --sweep=FILE --root=DIR --launcher=slurm|jobset|tpu

--dry_run prints the manifest (points, parameters, tokens, FLOPs, estimated time) and
writes DIR/manifest.json. The local launcher runs the points that have no result yet, N at
a time, each in its own process: a rerun skips finished points and retries failed ones, and
a failed point is recorded in DIR/NAME/failure.json without stopping the others. The pod
launchers write one job per point into DIR/launch/ (a SLURM array, a JobSet per point, a TPU
slice per point) that runs `--point=K`; see BUILD.md. Then fit and plot:

  python -m sora_jax.scaling --root=DIR --output=OUT
"""

from __future__ import annotations

import concurrent.futures
import os
import subprocess
import sys
from collections.abc import Sequence

from absl import flags

from data_pipelines import shards
from sora_jax.core import cli, configs
from sora_jax.training import sweep_jobs, sweeps

FLAGS = flags.FLAGS
LAUNCHERS = ("local", "slurm", "jobset", "tpu")


def define_flags() -> None:
  flags.DEFINE_string("sweep", None, "Sweep file (experiments/sweeps/NAME.py).")
  flags.DEFINE_string("root", None, "Directory for the manifest and one workdir per point.")
  flags.DEFINE_bool("dry_run", False, "Print the manifest and stop.")
  flags.DEFINE_string(
    "point",
    None,
    "Run only point K (an index), or 'array': the index in SLURM_ARRAY_TASK_ID or "
    "SORA_JAX_SWEEP_POINT.",
  )
  flags.DEFINE_integer("parallel", 1, "Points trained at once by the local launcher.")
  flags.DEFINE_enum("launcher", "local", LAUNCHERS, "Where the points run.")
  flags.DEFINE_string("data_dir", None, "Overrides config.data.data_dir of every point.")


def point_index(value: str, count: int) -> int:
  if value == "array":
    value = os.environ.get("SLURM_ARRAY_TASK_ID") or os.environ.get(sweep_jobs.ENV_POINT) or ""
    if not value:
      raise sweeps.SweepError(
        f"--point=array: neither SLURM_ARRAY_TASK_ID nor {sweep_jobs.ENV_POINT} is set"
      )
  try:
    k = int(value)
  except ValueError:
    raise sweeps.SweepError(f"--point={value}: not an index (0..{count - 1}) or 'array'") from None
  if not 0 <= k < count:
    raise sweeps.SweepError(f"--point={k}: the sweep has points 0..{count - 1}")
  return k


def ensure_data(sweep: sweeps.Sweep, data_dir: str) -> None:
  """Generates the sweep's built-in dataset (and tokenizer) where data_dir has none."""
  if os.path.isfile(os.path.join(data_dir, shards.MANIFEST)):
    return
  if sweep.synthetic_data is None:
    raise sweeps.SweepError(
      f"config.data.data_dir={data_dir}: no dataset there; pass --data_dir=DIR"
    )
  print(f"generating the built-in dataset in {data_dir}", flush=True)
  args = [f"--{k}={v}" for k, v in sweep.synthetic_data.items()]
  for cmd in (
    ["-m", "data_pipelines.synthetic", f"--output_dir={data_dir}", *args],
    ["-m", "data_pipelines.tokenizer", f"--data_dir={data_dir}", "--vocab_size=128"],
  ):
    subprocess.run([sys.executable, *cmd], check=True)


def print_manifest(manifest, flops_per_s: float) -> None:
  head = (
    f"{'#':>3} {'point':<16} {'role':<7} {'budget':>9} {'steps':>6} {'FLOPs':>9} {'err':>6} "
    f"{'6ND':>9} {'N(blocks)':>10} {'N(total)':>9} {'tokens':>9} {'est.min':>7}  status"
  )
  print(head)
  total = 0.0
  for e in manifest["points"]:
    est = sweeps.estimate_seconds(e, flops_per_s, manifest["overhead_s"])
    state = sweeps.status(manifest["root"], e)
    total += 0.0 if state == "done" else est
    print(
      f"{e['index']:>3} {e['name']:<16} {e['role']:<7} {e['budget']:>9.2e} {e['steps']:>6} "
      f"{e['flops']:>9.3e} {e['budget_error']:>+6.2%} {e['flops_6nd']:>9.2e} "
      f"{e['params']['non_embedding']:>10,} {e['params']['total']:>9,} "
      f"{e['tokens']['video']:>9.2e} {est / 60:>7.1f}  {state}"
    )
  print(
    f"{len(manifest['points'])} points; estimated {total / 60:.0f} min for those not done "
    f"at {flops_per_s / 1e9:.0f} GFLOP/s (manifest: {manifest['root']}/{sweeps.MANIFEST})"
  )


def peak_flops_in_child() -> float:
  """One device's peak FLOP/s (flops.device_peak_flops), found by a child process: this
  launcher never starts jax, so it holds none of the accelerator memory its training
  children need (the first process to start jax on a GPU preallocates most of it)."""
  code = "from sora_jax.core import flops; print(flops.device_peak_flops()[0])"
  r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
  if r.returncode:
    last = (r.stderr.strip().splitlines() or ["no output"])[-1]
    raise sweeps.SweepError(f"measuring the device's peak FLOP/s failed: {last}")
  return float(r.stdout.split()[-1])


def achieved_flops_per_s(manifest, peak: float) -> float:
  """The median of finished points' FLOP/s (compile and start-up included), else peak x MFU."""
  rates = []
  for e in manifest["points"]:
    r = sweeps._read_json(os.path.join(sweeps.point_dir(manifest["root"], e), sweeps.RESULT))
    if r and r.get("wall_s"):
      rates.append(r["flops"] / max(0.5 * r["wall_s"], r["wall_s"] - manifest["overhead_s"]))
  if rates:
    return float(sorted(rates)[len(rates) // 2])
  return peak * manifest["expected_mfu"]


def run_local(manifest, parallel: int) -> int:
  """Trains every point without a result; returns the number that failed."""
  todo = [e for e in manifest["points"] if sweeps.status(manifest["root"], e) != "done"]
  done = len(manifest["points"]) - len(todo)
  print(f"{done} points done, {len(todo)} to run ({parallel} at a time)", flush=True)
  failed = 0
  with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
    futures = {pool.submit(sweeps.run_point, manifest, e): e for e in todo}
    for i, fut in enumerate(concurrent.futures.as_completed(futures), 1):
      e, out = futures[fut], fut.result()
      if "heldout_loss" in out:
        line = f"held-out loss {out['heldout_loss']:.4f} in {out['wall_s'] / 60:.1f} min"
      else:
        failed += 1
        line = f"FAILED (exit {out.get('returncode')}): see {sweeps.point_dir(manifest['root'], e)}"
      print(f"[{i}/{len(todo)}] {e['name']}: {line}", flush=True)
  return failed


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments {argv[1:]}")
  for name in ("sweep", "root"):
    if not getattr(FLAGS, name):
      sys.exit(f"error: --{name} is required")
  cli.quiet()
  cli.one_process()  # The launcher and a --point process leave jax to their children.
  try:
    sweep = sweeps.load_sweep(FLAGS.sweep)
    extra = {"data.data_dir": FLAGS.data_dir} if FLAGS.data_dir else {}
    data_dir = FLAGS.data_dir or sweep.base.data.data_dir
    if FLAGS.point is not None and os.path.isfile(os.path.join(FLAGS.root, sweeps.MANIFEST)):
      manifest = sweeps.read_manifest(FLAGS.root)  # A pod job: the launcher resolved it.
    else:
      ensure_data(sweep, data_dir)
      manifest = sweeps.resolve(sweep, FLAGS.sweep, FLAGS.root, extra)
      sweeps.write_manifest(FLAGS.root, manifest)
    if FLAGS.point is not None:
      entry = manifest["points"][point_index(FLAGS.point, len(manifest["points"]))]
      out = sweeps.run_point(manifest, entry)
      if "heldout_loss" not in out:
        sys.exit(f"error: point {entry['name']} failed; see {sweeps.point_dir(FLAGS.root, entry)}")
      print(f"{entry['name']}: held-out loss {out['heldout_loss']:.4f}")
      return
    peak = peak_flops_in_child()
    # Not for a --point process (returned above): its training child logs in the point's folder.
    cli.say(f"sora_jax.sweep: logs in {cli.log_to_file(os.path.join(FLAGS.root, 'logs'), 'sweep')}")
    print_manifest(manifest, achieved_flops_per_s(manifest, peak))
    if FLAGS.dry_run:
      return
    if FLAGS.launcher != "local":
      for line in sweep_jobs.write(FLAGS.launcher, manifest, FLAGS.sweep):
        print(line)
      return
    failed = run_local(manifest, FLAGS.parallel)
  except (sweeps.SweepError, configs.ConfigError, shards.DatasetError, FileNotFoundError) as e:
    sys.exit(f"error: {e}")
  except subprocess.CalledProcessError as e:
    sys.exit(f"error: generating the dataset failed: {' '.join(map(str, e.cmd))}")
  print(
    f"results in {FLAGS.root}/*/{sweeps.RESULT}; fit: python -m sora_jax.scaling --root={FLAGS.root}"
  )
  if failed:
    sys.exit(f"error: {failed} point(s) failed; rerun the same command to retry them")


if __name__ == "__main__":
  define_flags()
  cli.run(main)
