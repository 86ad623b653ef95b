"""Pod behaviour on one machine: 2 processes x 4 devices, killed, resumed on 1 x 8 and 1 x 1;
SIGTERM saves at a step boundary and exits 0."""

import contextlib
import os
import signal
import subprocess
import sys
import time

import numpy as np

from sora_jax.core import metrics
from sora_jax.sampling import run as run_lib
from sora_jax.sampling import sampler as sampling

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARGS = ["--config.train.num_steps=16", "--config.train.checkpoint_every=4"]


def _train(workdir, data_dir, *extra):
  return [
    sys.executable,
    "-m",
    "sora_jax.train",
    "--config=experiments/dit_tiny.py",
    f"--workdir={workdir}",
    f"--config.data.data_dir={data_dir}",
    *ARGS,
    *extra,
  ]


def _env(devices):
  return dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")


def _losses(workdir):
  """step -> loss, the last logged value of each step."""
  return {d["step"]: d["loss"] for d in metrics.read_jsonl(os.path.join(workdir, "tensorboard"))}


def _steps(workdir):
  ckpt = os.path.join(workdir, "checkpoints")
  return sorted(int(s) for s in os.listdir(ckpt) if s.isdigit()) if os.path.isdir(ckpt) else []


def _wait_for(path, proc, timeout=600):
  deadline = time.time() + timeout
  while not os.path.exists(path) and proc.poll() is None and time.time() < deadline:
    time.sleep(0.05)


def _kill_session(sid):
  """SIGKILLs every process of a session: local.sh puts each process in its own group."""
  for pid in os.listdir("/proc"):
    if not pid.isdigit():
      continue
    try:
      with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
      continue
    if int(fields[3]) == sid:  # Field 6 of stat, the session id.
      with contextlib.suppress(ProcessLookupError):
        os.kill(int(pid), signal.SIGKILL)


def test_two_processes_killed_resume_on_one_process_with_the_same_losses(tmp_path, tiny_data_dir):
  full = str(tmp_path / "full")
  r = subprocess.run(
    _train(full, tiny_data_dir), cwd=REPO, env=_env(8), capture_output=True, text=True, timeout=900
  )
  assert r.returncode == 0, r.stderr[-3000:]

  pod = str(tmp_path / "pod")
  env = dict(_env(4), DEVICES_PER_PROCESS="4")
  proc = subprocess.Popen(
    ["bash", "launch/local.sh", "2", *_train(pod, tiny_data_dir)],
    cwd=REPO,
    env=env,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
    start_new_session=True,
  )
  _wait_for(os.path.join(pod, "checkpoints", "4"), proc)
  _kill_session(proc.pid)  # The whole stand-in pod dies at once.
  proc.wait()
  killed_at = _steps(pod)
  assert killed_at and killed_at[-1] < 16, killed_at
  # Both processes wrote their data-shard states into the checkpoint.
  data = os.path.join(pod, "checkpoints", str(killed_at[-1]), "data")
  states = sorted(f for f in os.listdir(data) if f.endswith(".json"))
  assert states == ["process_0-of-2.json", "process_1-of-2.json"]

  r = subprocess.run(
    _train(pod, tiny_data_dir), cwd=REPO, env=_env(8), capture_output=True, text=True, timeout=900
  )
  assert r.returncode == 0, r.stderr[-3000:]
  want, got = _losses(full), _losses(pod)
  for step in range(killed_at[-1] + 1, 17):
    np.testing.assert_allclose(got[step], want[step], rtol=1e-5, err_msg=f"step {step}")

  # And the pod's checkpoint exports to a single device for sampling.
  run = run_lib.load(pod)
  videos = run_lib.generate(
    run, [sampling.Request("a red square", 2, 16, 16, seed=0)], steps=2, progress=False
  )
  assert run.step == 16 and videos[0].shape == (2, 16, 16, 3)


def test_sigterm_saves_at_a_step_boundary_and_exits_zero(tmp_path, tiny_data_dir):
  workdir = str(tmp_path / "preempted")
  proc = subprocess.Popen(
    _train(workdir, tiny_data_dir, "--config.train.num_steps=100000"),
    cwd=REPO,
    env=_env(2),
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )
  metrics = os.path.join(workdir, "tensorboard", "metrics.jsonl")
  deadline = time.time() + 600
  while proc.poll() is None and time.time() < deadline:  # Until a step is logged.
    if os.path.exists(metrics) and os.path.getsize(metrics) > 0:
      break
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 0, err[-3000:]
  steps = _steps(workdir)
  assert steps and steps[-1] < 100000
  assert f"preempted: saved step {steps[-1]}" in out
  # The saved step is the last one trained: its loss was logged.
  assert max(_losses(workdir)) == steps[-1]
