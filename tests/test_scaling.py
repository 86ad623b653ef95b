"""Scaling-law sweeps: the budget solver, the held-out loss, muP, the fits, and a tiny real
sweep through `sora_jax.sweep` and `sora_jax.scaling` (rerun, failure and retry included)."""

import itertools
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import yaml

from data_pipelines import tokenizer as tokenizer_lib
from experiments import dit_tiny
from sora_jax.analysis import scaling
from sora_jax.core import sharding
from sora_jax.core.configs import ConfigError
from sora_jax.diffusion import latent
from sora_jax.models import dit, mup
from sora_jax.training import coord_check, heldout, input_pipeline, sweep_jobs, sweeps, validation
from sora_jax.training.trainer import Trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(data_dir):
  cfg = dit_tiny.get_config()
  cfg.data.data_dir = data_dir
  cfg.heldout.update(rows=2, split="train", timesteps=4)
  return cfg


def mesh_of(n):
  return sharding.make_mesh({"fsdp": n}, jax.devices()[:n])


def test_budget_solver_spends_the_budget_as_the_trainer_counts_it(tiny_data_dir, tmp_path):
  cfg = tiny_config(tiny_data_dir)
  cfg.train.global_batch_size = 2
  tok = tokenizer_lib.load(tiny_data_dir)
  facts = sweeps.model_facts(cfg, tok.vocab_size)
  stats = sweeps.StreamStats(cfg, str(tmp_path), progress=False)
  per_step = float(np.mean(stats.first(8) @ np.asarray(facts["flops_per_stat"])))
  budget = 150.3 * per_step  # The tiny data's steps vary: ~100 of them hit 1%.
  steps, spent = sweeps.solve_steps(facts["flops_per_stat"], stats, budget, 0.01)
  assert abs(spent / budget - 1) <= 0.01
  # The same batches, counted by the trainer itself.
  cfg.mesh.update(fsdp=1)
  trainer = Trainer(cfg, mesh_of(1), tok.vocab_size)
  it = iter(input_pipeline.make_dataset(cfg, tok, latent.stage_for(cfg)))
  counted = sum(trainer.step_flops(next(it)) for _ in range(steps))
  assert counted == pytest.approx(spent, rel=1e-9)
  # The cache serves a new reader, which reads on from the stream state saved beside it.
  cached = sweeps.StreamStats(cfg, str(tmp_path), progress=False)
  assert len(cached.stats) == len(stats.stats)
  more = len(stats.stats) + 5
  fresh = sweeps.StreamStats(cfg, str(tmp_path / "fresh"), progress=False)
  np.testing.assert_array_equal(cached.first(more), fresh.first(more))
  with pytest.raises(sweeps.SweepError, match="tolerance"):
    sweeps.solve_steps(facts["flops_per_stat"], stats, 1.3 * per_step, 0.01)


def test_heldout_loss_is_the_same_on_1_and_8_devices(tiny_data_dir):
  cfg = tiny_config(tiny_data_dir)
  tok = tokenizer_lib.load(tiny_data_dir)
  stage = latent.stage_for(cfg)
  values = []
  for n in (1, 8):
    trainer = Trainer(cfg, mesh_of(n), tok.vocab_size)
    params = trainer.model.init(0)
    # Random readout weights, so the loss depends on every layer (the init's are zero).
    host = jax.device_get(params)
    noise = np.random.default_rng(0)
    host = jax.tree.map(
      lambda x, r=noise: x + 0.05 * r.standard_normal(x.shape).astype(x.dtype), host
    )
    params = jax.device_put(host, trainer.model.param_shardings)
    values.append(heldout.HeldOutLoss(cfg, trainer, tok, stage)(params))
  assert set(values[0]) == {"heldout_loss"} | {
    f"heldout_loss_t{t:.3f}" for t in (0.125, 0.375, 0.625, 0.875)
  }
  for k in values[0]:
    assert values[1][k] == pytest.approx(values[0][k], rel=1e-5), k


def test_mup_multipliers_follow_fan_in():
  text = dit.TextConfig(vocab_size=40, width=32, depth=1, heads=1)
  small = dit.DiTConfig(patch_dim=48, depth=2, width=64, heads=2, text=text)
  wide = mup.base_config(small, 256)
  assert wide.heads == 8
  mults = mup.lr_multipliers(mup.kernel_fans(dit.DiT, wide), mup.kernel_fans(dit.DiT, small))
  assert mults["blocks"]["mlp"]["up"]["kernel"] == 0.25  # hidden: fan-in grew 4x
  assert mults["blocks"]["attn"]["out"]["kernel"] == 0.25
  assert mults["final"]["kernel"] == 0.25  # output
  assert mults["patch_embed"]["kernel"] == 1.0  # input: fan-in fixed
  assert mults["text_encoder"]["blocks"]["mlp"]["up"]["kernel"] == 1.0
  assert mults["blocks"]["modulation"] == 1.0  # a table, not a matrix
  same = mup.lr_multipliers(mup.kernel_fans(dit.DiT, small), mup.kernel_fans(dit.DiT, small))
  assert set(jax.tree.leaves(same)) == {1.0}


def test_mup_coordinate_check_is_flat_where_standard_drifts(tiny_data_dir):
  cfg = tiny_config(tiny_data_dir)
  cfg.model.update(width=32, heads=2, mup_base_width=32)
  cfg.optim.lr = 1e-2
  cfg.mesh.update(fsdp=1)
  cfg.train.global_batch_size = 2
  records = coord_check.run(cfg, [32, 128], 2, mesh_of(1))
  std, mu = records["standard"]["slopes"], records["mup"]["slopes"]
  # Standard: the output grows about linearly with width after an update (Adam steps of
  # size lr on width-many inputs) and Xavier inputs shrink with it; muP: flat within noise.
  assert std["output"][-1] > 0.8, std
  assert abs(mu["output"][-1]) < 0.35, mu
  assert abs(mu["embedded"][0]) < 0.1 and std["embedded"][0] < -0.15, (mu, std)
  assert records["mup"]["drift"]["output"] < 0.35 < 0.8 < records["standard"]["drift"]["output"]


def _known_points(seed, noise):
  true = {"E": 0.3, "A": 30.0, "B": 80.0, "alpha": 0.4, "beta": 0.35}
  rng = np.random.default_rng(seed)
  n = np.repeat(np.geomspace(1e4, 1e7, 6), 6)
  d = np.tile(np.geomspace(1e6, 1e9, 6), 6)
  loss = scaling.predict(true, n, d) * np.exp(rng.normal(0.0, noise, n.shape))
  return true, n, d, loss


def test_parametric_fit_recovers_a_known_law_inside_its_intervals():
  true, n, d, loss = _known_points(seed=1, noise=0.005)
  grid = np.array(
    list(
      itertools.product(
        (0.0, 5.0, 10.0), (0.0, 5.0, 10.0), (-2.0, -1.0, 0.0), (0.25, 0.75), (0.25, 0.75)
      )
    )
  )
  fit = scaling.fit_parametric(n, d, loss, bootstrap=24, grid=grid, seed=1)
  c, iv = fit["constants"], fit["interval_95"]
  # Tolerances: 0.5% noise on 36 points.
  assert c["E"] == pytest.approx(true["E"], rel=0.03)
  assert c["alpha"] == pytest.approx(true["alpha"], abs=0.02)
  assert c["beta"] == pytest.approx(true["beta"], abs=0.02)
  assert c["A"] == pytest.approx(true["A"], rel=0.15)
  assert c["B"] == pytest.approx(true["B"], rel=0.15)
  for k, v in true.items():
    assert iv[k][0] <= v <= iv[k][1], (k, v, iv[k])


def test_frontier_and_power_laws_recover_known_exponents():
  rng = np.random.default_rng(0)
  c = np.geomspace(1e12, 1e16, 12)
  loss = (0.2 + 500.0 * c**-0.25) * np.exp(rng.normal(0, 0.003, c.shape))
  fit = scaling.fit_frontier(c, loss, bootstrap=20)
  assert fit["constants"]["alpha"] == pytest.approx(0.25, abs=0.03)
  assert fit["constants"]["E"] == pytest.approx(0.2, rel=0.1)
  law = scaling.power_law(c, 3.0 * c**0.5)
  assert law["exponent"] == pytest.approx(0.5) and law["k"] == pytest.approx(3.0)
  env = scaling.envelope([[(1, 3.0), (2, 2.0), (4, 1.5)], [(2, 2.5), (3, 1.8), (5, 1.6)]])
  assert env.tolist() == [[1, 3.0], [2, 2.0], [3, 1.8], [4, 1.5]]


SWEEP_FILE = """
import os
from experiments import dit_tiny
from sora_jax.training import sweeps


def get_config(arg=None):
  c = dit_tiny.get_config()
  c.data.data_dir = {data_dir!r}
  c.heldout.update(rows=2, split="train", timesteps=2)
  c.train.update(global_batch_size=2, log_every=5, checkpoint_every=1000)
  return c


def get_sweep():
  points = sweeps.isoflop_grid({budgets}, (32, 64), shape=lambda w: sweeps.shape_for_width(w, head_dim=16))
  points.append(sweeps.Point("holdout", {{"model.width": 48, "model.heads": 3}}, {holdout}, "holdout"))
  if os.path.exists({broken!r}):  # A point whose training fails (no such split to evaluate).
    points[-1] = sweeps.Point(
      "holdout", {{"model.width": 48, "model.heads": 3, "heldout.split": "nope"}}, {holdout}, "holdout"
    )
  return sweeps.Sweep(base=get_config(), points=points, tolerance=0.1)
"""


def _run(*args):
  env = dict(os.environ, XLA_FLAGS="")  # One CPU device per point, as a user's machine has.
  return subprocess.run(
    [sys.executable, *args],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=900,
    check=False,
  )


def test_tiny_sweep_runs_reruns_retries_and_fits(tiny_data_dir, tmp_path):
  tok = tokenizer_lib.load(tiny_data_dir)
  cfg = tiny_config(tiny_data_dir)
  cfg.model.update(width=32, heads=2)
  cfg.train.global_batch_size = 2
  per_step = float(
    np.mean(
      sweeps.StreamStats(cfg, str(tmp_path / "probe"), progress=False).first(8)
      @ np.asarray(sweeps.model_facts(cfg, tok.vocab_size)["flops_per_stat"])
    )
  )
  budgets = (round(20 * per_step, -5), round(40 * per_step, -5))
  broken = tmp_path / "BROKEN"
  broken.write_text("")
  sweep_file = tmp_path / "tiny_sweep.py"
  sweep_file.write_text(
    SWEEP_FILE.format(
      data_dir=tiny_data_dir, budgets=budgets, holdout=round(50 * per_step, -5), broken=str(broken)
    )
  )
  root = tmp_path / "root"
  sweep = ["-m", "sora_jax.sweep", f"--sweep={sweep_file}", f"--root={root}"]

  # The launcher never starts jax itself (its training children need the accelerators).
  probe = (
    "import atexit, runpy; from jax._src import xla_bridge as xb; "
    "atexit.register(lambda: print('jax started:', xb.backends_are_initialized())); "
    "runpy.run_module('sora_jax.sweep', run_name='__main__')"
  )
  dry = _run("-c", probe, *sweep[2:], "--dry_run")
  assert dry.returncode == 0, dry.stderr[-2000:]
  assert "5 points" in dry.stdout and "est.min" in dry.stdout
  assert "jax started: False" in dry.stdout, dry.stdout[-2000:]
  manifest = json.loads((root / "manifest.json").read_text())
  for e in manifest["points"]:
    assert abs(e["budget_error"]) <= 0.1
    assert e["overrides"]["train.num_steps"] == e["steps"] >= 4

  first = _run(*sweep)
  assert first.returncode != 0 and "1 point(s) failed" in first.stderr, first.stderr[-2000:]
  failure = json.loads((root / "holdout" / "failure.json").read_text())
  assert any("heldout.split" in line for line in failure["log_tail"]), failure
  done = {
    p: (root / p / "result.json").stat().st_mtime_ns
    for p in os.listdir(root)
    if (root / p / "result.json").exists()
  }
  assert len(done) == 4

  broken.unlink()  # Mended: the rerun retries the failed point only.
  second = _run(*sweep)
  assert second.returncode == 0, second.stderr[-2000:]
  assert "4 points done, 1 to run" in second.stdout
  for p, mtime in done.items():
    assert (root / p / "result.json").stat().st_mtime_ns == mtime
  result = json.loads((root / "holdout" / "result.json").read_text())
  assert not (root / "holdout" / "failure.json").exists()
  assert result["role"] == "holdout" and result["heldout_curve"][-1]["step"] == result["steps"]
  assert result["heldout_curve"][-1]["flops"] == pytest.approx(result["flops"], rel=1e-9)
  assert result["params"]["non_embedding"] < result["params"]["total"]
  assert result["wall_s"] > 0 and result["flops_6nd"] > 0

  out = tmp_path / "fit"
  fit_run = _run("-m", "sora_jax.scaling", f"--root={root}", f"--output={out}", "--bootstrap=10")
  assert fit_run.returncode == 0, fit_run.stderr[-2000:]
  fit = json.loads((out / "fit.json").read_text())
  assert fit["runs"] == {"fit": 4, "holdout": 1}
  assert [p["budget"] for p in fit["isoflop"]] == list(budgets)
  assert fit["holdout_check"][0]["actual"] == pytest.approx(result["heldout_loss"])
  for png in ("loss_vs_compute", "isoflop", "optimal_n_d", "predicted_vs_actual"):
    assert (out / f"{png}.png").stat().st_size > 5000, png

  # Pod launchers: every point is done, then one pending point gets a job file per launcher.
  (root / "holdout" / "result.json").unlink()
  manifest = json.loads((root / "manifest.json").read_text())
  sweep_jobs.write("slurm", manifest, str(sweep_file))
  slurm = (root / "launch" / "submit_slurm.sh").read_text()
  assert "--array=4 " in slurm and "--point=array" in slurm and "launch/slurm_gpu.sbatch" in slurm
  sweep_jobs.write("jobset", manifest, str(sweep_file))
  job = yaml.safe_load((root / "launch" / "jobset_4.yaml").read_text())
  container = job["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"][
    "containers"
  ][0]
  assert container["command"][-1] == "sora_jax.sweep" and "--point=4" in container["args"]
  sweep_jobs.write("tpu", manifest, str(sweep_file))
  tpu = (root / "launch" / "submit_tpu.sh").read_text()
  assert 'TPU_NAME="$TPU_PREFIX-4" launch/tpu_pod.sh sora_jax.sweep' in tpu

  bad = _run("-m", "sora_jax.sweep", f"--sweep={tmp_path}/missing.py", f"--root={root}")
  assert bad.returncode != 0 and bad.stderr.strip().splitlines()[-1].startswith("error: --sweep=")


@pytest.mark.parametrize(
  "field,value,message",
  [
    ("model.parametrization", "mu", "config.model.parametrization='mu'"),
    ("model.mup_base_width", 40, "config.model.mup_base_width=40"),
    ("heldout.split", "nope", "config.heldout.split='nope'"),
    ("heldout.timesteps", 0, "config.heldout.timesteps=0"),
  ],
)
def test_bad_sweep_fields_name_the_field(tiny_data_dir, field, value, message):
  cfg = sweeps.point_config(tiny_config(tiny_data_dir), {field: value})
  with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
    validation.validate(cfg)
