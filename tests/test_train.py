"""The training loop: it learns, it resumes exactly after a kill, it stops on non-finite values,
and bad configs fail with one clear line before anything compiles."""

import os
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from data_pipelines import tokenizer
from experiments import dit_tiny
from sora_jax.core import metrics, sharding
from sora_jax.diffusion import latent
from sora_jax.training import input_pipeline
from sora_jax.training.trainer import Trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _train_cmd(workdir, data_dir, *overrides):
  return [
    sys.executable,
    "-m",
    "sora_jax.train",
    "--config=experiments/dit_tiny.py",
    f"--workdir={workdir}",
    f"--config.data.data_dir={data_dir}",
    *overrides,
  ]


def _run(cmd, **kw):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
  return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, **kw)


def _losses(workdir):
  """step -> loss, the last logged value of each step."""
  return {d["step"]: d["loss"] for d in metrics.read_jsonl(os.path.join(workdir, "tensorboard"))}


def test_training_overfits_a_tiny_batch(tiny_data_dir):
  cfg = dit_tiny.get_config()
  cfg.data.data_dir = tiny_data_dir
  cfg.data.caption_dropout = 0.0
  cfg.optim.lr = 3e-3
  cfg.train.num_steps = 100  # The learning-rate schedule spans the test.
  tok = tokenizer.load(tiny_data_dir)
  mesh = sharding.make_mesh({"fsdp": -1})
  trainer = Trainer(cfg, mesh, tok.vocab_size)
  batch = next(iter(input_pipeline.make_dataset(cfg, tok, latent.stage_for(cfg), 0, 1)))
  gb = sharding.global_batch(batch, mesh, trainer.rules)
  state, ema = trainer.init(0)
  losses = []
  for _ in range(100):
    state, ema, m = trainer.step(state, ema, gb)
    losses.append(m["loss"])
  losses = np.asarray(jax.device_get(losses))
  assert np.all(np.isfinite(losses))
  assert losses[-10:].mean() < 0.6 * losses[:5].mean(), losses


# tests/test_pod.py checks the same in a stronger form under `make test` (two
# processes killed with SIGKILL, resumed on one, losses equal to an uninterrupted
# run); this single-process variant runs with `pytest -m slow` (~2.3 min).
@pytest.mark.slow
def test_kill_and_resume_reproduces_the_uninterrupted_losses(tmp_path, tiny_data_dir):
  args = ["--config.train.num_steps=24", "--config.train.checkpoint_every=4"]
  full = str(tmp_path / "full")
  r = _run(_train_cmd(full, tiny_data_dir, *args), timeout=600)
  assert r.returncode == 0, r.stderr[-2000:]

  killed = str(tmp_path / "killed")
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
  proc = subprocess.Popen(
    _train_cmd(killed, tiny_data_dir, *args),
    cwd=REPO,
    env=env,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
  )
  first = os.path.join(killed, "checkpoints", "4")
  deadline = time.time() + 300
  while not os.path.isdir(first) and proc.poll() is None and time.time() < deadline:
    time.sleep(0.01)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  steps = sorted(int(s) for s in os.listdir(os.path.join(killed, "checkpoints")) if s.isdigit())
  assert steps and steps[-1] < 24, f"the run was not killed mid-way: {steps}"

  r = _run(_train_cmd(killed, tiny_data_dir, *args), timeout=600)
  assert r.returncode == 0, r.stderr[-2000:]
  want, got = _losses(full), _losses(killed)
  assert set(got) == set(want) == set(range(1, 25))
  for step in range(steps[-1] + 1, 25):
    np.testing.assert_allclose(got[step], want[step], rtol=1e-6, err_msg=f"step {step}")


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, tiny_data_dir):
  workdir = str(tmp_path / "nan")
  r = _run(
    _train_cmd(
      workdir,
      tiny_data_dir,
      "--config.train.num_steps=6",
      "--config.train.checkpoint_every=1",
      "--config.optim.warmup_steps=0",
      "--config.optim.lr=1e36",
    ),
    timeout=600,
  )
  assert r.returncode != 0
  last = r.stderr.strip().splitlines()[-1]
  assert last.startswith("error: non-finite loss or gradient at step"), r.stderr[-2000:]
  assert "Traceback" not in r.stderr
  steps = sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit())
  assert steps and steps[-1] < 6
  assert f"checkpoint (step {steps[-1]}) is intact" in last


@pytest.mark.parametrize(
  "override, message",
  [
    ("--config.model.width=65", "config.model.width=65: must be divisible by"),
    ("--config.model.patch=(1,8)", "config.model.patch"),
    ("--config.model.remat=sometimes", "config.model.remat='sometimes'"),
    ("--config.data.caption_dropout=1.5", "caption_dropout"),
    ("--config.train.global_batch_size=3", "config.train.global_batch_size=3"),
    ("--config.mesh.data=3", "mesh"),
    ("--config.data.split=nope", "config.data.split='nope'"),
    ("--config.data.data_dir=/nonexistent", "config.data.data_dir=/nonexistent"),
    # Flag-level mistakes fail while flags are parsed (sora_jax.core.cli), also one line.
    ("--config=experiments/no_such_config.py", "--config=experiments/no_such_config.py: no such"),
    ("--config.train.nosuch=3", "--config.train.nosuch=3: the config has no field 'nosuch'"),
    ("--config.trainn.num_steps=3", "no field 'trainn' (did you mean 'train'?)"),
    ("--config.train.num_steps=abc", "--config.train.num_steps=abc"),
    ("--config.latent.kind=pca", "config.latent.pca=''"),
  ],
)
def test_bad_configs_fail_with_one_clear_line(tmp_path, tiny_data_dir, override, message):
  r = _run(_train_cmd(str(tmp_path / "w"), tiny_data_dir, override), timeout=300)
  assert r.returncode != 0
  lines = r.stderr.strip().splitlines()
  assert "Traceback" not in r.stderr, r.stderr[-2000:]
  assert lines[-1].startswith("error: ") and message in lines[-1], lines[-1]
  assert not os.path.exists(tmp_path / "w" / "checkpoints")


def test_resuming_under_a_changed_model_fails_with_one_line_and_keeps_the_checkpoint(
  tmp_path, tiny_data_dir
):
  workdir = str(tmp_path / "w")
  r = _run(_train_cmd(workdir, tiny_data_dir, "--config.train.num_steps=2"), timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  # What a person sees: a few lines and the bar; library logs went to the log file.
  assert not re.search(r"^[IW]\d{4} ", r.stderr, re.M), r.stderr[-2000:]
  assert "model: " in r.stdout and "checkpoint: step 2" in r.stdout, r.stdout
  with open(os.path.join(workdir, "logs", "train.log")) as f:
    assert "CheckpointManager" in f.read()
  ckpt = os.path.join(workdir, "checkpoints")
  before = sorted(os.listdir(ckpt))
  r = _run(
    _train_cmd(workdir, tiny_data_dir, "--config.train.num_steps=4", "--config.model.width=32"),
    timeout=300,
  )
  assert r.returncode != 0
  assert "Traceback" not in r.stderr, r.stderr[-2000:]
  last = r.stderr.strip().splitlines()[-1]
  assert last.startswith(f"error: --workdir={workdir}: its checkpoint (step 2) does not fit"), last
  assert "config.model.width: 64 -> 32" in last, last
  assert "config.train.num_steps: 2 -> 4" in last, last
  assert sorted(os.listdir(ckpt)) == before


def test_time_limit_saves_and_stops_at_a_log_step(tmp_path, tiny_data_dir):
  workdir = str(tmp_path / "w")
  r = _run(
    _train_cmd(
      workdir,
      tiny_data_dir,
      "--config.train.num_steps=50",
      "--config.train.log_every=2",
      "--config.train.time_limit_minutes=1e-6",
    ),
    timeout=300,
  )
  assert r.returncode == 0, r.stderr[-2000:]
  assert "time_limit_minutes=1e-06 reached at step 2 of 50" in r.stdout, r.stdout
  steps = [s for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit()]
  assert steps == ["2"], steps
  last = metrics.read_jsonl(os.path.join(workdir, "tensorboard"))[-1]
  assert last["step"] == 2 and last["time_limit_step"] == 2.0 and np.isfinite(last["loss"])
