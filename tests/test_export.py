"""Exports: the model directory, reading it back (sampling, fine-tuning on 8 devices), the
orbax parameter format, adapters (train, export, apply, stack, merge), streaming memory,
and one clear line for each bad input."""

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors import safe_open

from experiments import dit_tiny
from sora_jax import benchmark_export, train
from sora_jax.core import configs, safetensors_io, sharding
from sora_jax.model_io import adapters, common, model_dir
from sora_jax.models import dit, lora
from sora_jax.sampling import run as run_lib
from sora_jax.sampling import sampler
from sora_jax.training.trainer import Trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REQUESTS = [
  sampler.Request("a red square", 3, 16, 24, 0),
  sampler.Request("a blue square", 1, 16, 16, 1),
]


def _json(path):
  with open(path) as f:
    return json.load(f)


def _opts(**kw):
  return model_dir.ExportOptions(progress=False, **{"dtype": "float32", **kw})


def _cfg(data_dir, **train_kw):
  cfg = dit_tiny.get_config()
  cfg.data.data_dir = data_dir
  cfg.train.update({"num_steps": 4, "checkpoint_every": 2, **train_kw})
  return cfg


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_run):
  """The shared 4-step tiny run, and its float32 export in 100 KB shards."""
  root = tmp_path_factory.mktemp("export")
  workdir = tiny_run
  out = str(root / "model")
  summary = model_dir.export(workdir, None, out, _opts(max_shard_size="100KB"))
  return workdir, out, summary


@pytest.fixture(scope="module")
def adapter_run(exported, tiny_data_dir, tmp_path_factory):
  """An adapter (rank 4) trained for 4 steps on the export, and the adapter exported."""
  _, model, _ = exported
  root = tmp_path_factory.mktemp("adapter")
  cfg = _cfg(tiny_data_dir)
  cfg.init_from = model
  cfg.lora.update(rank=4, alpha=8.0)
  cfg.optim.update(lr=3e-2, warmup_steps=1)
  workdir = str(root / "run")
  train.train(cfg, workdir)
  out = str(root / "preset")
  model_dir.export(workdir, None, out, _opts())
  return workdir, out


def _velocity(run, params):
  rows = sampler.pack_requests(REQUESTS, run.geom, run.tokenizer, run.opts)

  @jax.jit
  def f(p, rows):
    net = run.model.merge(p)
    t = jnp.full(rows["segment_ids"].shape, 0.6, jnp.float32)
    keys = ("tokens", "coords", "segment_ids")
    return net(*(rows[k] for k in keys), t, rows["text_ids"], rows["text_segment_ids"])

  with jax.set_mesh(run.mesh), sharding.axis_rules(run.rules):
    return np.asarray(f(params, {k: rows[k] for k in sampler.ROW_KEYS}))


def test_float32_export_samples_bitwise_identically(exported, tmp_path):
  workdir, model, _ = exported
  a = run_lib.generate(run_lib.load(workdir), REQUESTS, progress=False)
  # The export alone, copied elsewhere, with the run gone: nothing reads the workdir.
  copy = str(tmp_path / "elsewhere")
  shutil.copytree(model, copy)
  os.rename(workdir, workdir + ".gone")
  try:
    b = run_lib.generate(run_lib.load(copy), REQUESTS, progress=False)
  finally:
    os.rename(workdir + ".gone", workdir)
  for x, y in zip(a, b, strict=True):
    np.testing.assert_array_equal(x, y)


def test_bfloat16_export_stays_within_tolerance_of_the_velocity(exported, tmp_path):
  workdir, _, summary = exported
  out = str(tmp_path / "bf16")
  s = model_dir.export(workdir, None, out, _opts(dtype="bfloat16"))
  assert s["fingerprint"] == summary["fingerprint"]  # The same weights, whatever the dtype.
  assert s["total_bytes"] * 2 == summary["total_bytes"]
  full, half = run_lib.load(workdir), run_lib.load(out)
  v32, v16 = _velocity(full, full.params), _velocity(half, half.params)
  rel = np.linalg.norm(v16 - v32) / np.linalg.norm(v32)
  assert rel < 2e-2, rel  # Stated in docs/export.md.


def test_shards_and_index_follow_the_convention_and_open_with_safetensors_alone(exported):
  workdir, model, summary = exported
  files = sorted(f for f in os.listdir(model) if f.endswith(".safetensors"))
  n = len(files)
  assert n > 1 and files == [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
  with open(os.path.join(model, "model.safetensors.index.json")) as f:
    index = json.load(f)
  assert set(index["weight_map"].values()) == set(files)
  total, names = 0, set()
  for file in files:
    assert os.path.getsize(os.path.join(model, file)) < 100_000 + 50_000
    with safe_open(os.path.join(model, file), "numpy") as f:
      for k in f.keys():  # noqa: SIM118 (safe_open is not a dict)
        assert index["weight_map"][k] == file
        total += f.get_tensor(k).nbytes
        names.add(k)
  assert total == index["metadata"]["total_size"] == summary["total_bytes"]
  # Per-layer names, exactly the parameter names of the same model with unscanned layers.
  unscanned = dataclasses.replace(run_lib.load(workdir).dit_cfg, scan_layers=False)
  assert names == set(safetensors_io.flatten(common.abstract_params(dit.DiT, unscanned)))
  assert "blocks.1.attn.q.kernel" in names and "text_encoder.blocks.0.mlp.up.kernel" in names
  cfg = _json(os.path.join(model, "config.json"))
  assert cfg["provenance"]["step"] == 4 and cfg["weights"]["num_params"] == summary["num_params"]
  assert cfg["train_config"]["model"]["depth"] == 2
  assert os.path.exists(os.path.join(model, "tokenizer.model"))
  with open(os.path.join(model, "README.md")) as f:
    card = f.read()
  assert summary["fingerprint"] in card and "sora_jax.sample --model" in card


def test_unstacked_names_round_trip():
  scanned = {"blocks.attn.q.kernel": 0, "blocks.mlp.up.bias": 0, "final.kernel": 0}
  unscanned = {
    **{f"blocks.{i}.attn.q.kernel": 0 for i in range(3)},
    **{f"blocks.{i}.mlp.up.bias": 0 for i in range(3)},
    "final.kernel": 0,
  }
  pos = safetensors_io.layer_positions(scanned, unscanned)
  assert pos == {"blocks.attn.q.kernel": 1, "blocks.mlp.up.bias": 1}
  stack = np.arange(3 * 4).reshape(3, 4)
  parts = list(safetensors_io.unstacked("blocks.attn.q.kernel", stack, 1))
  assert [n for n, _ in parts] == [f"blocks.{i}.attn.q.kernel" for i in range(3)]
  assert all(
    safetensors_io.stacked_name(n, 1) == ("blocks.attn.q.kernel", i)
    for i, (n, _) in enumerate(parts)
  )
  np.testing.assert_array_equal(np.stack([a for _, a in parts]), stack)


def test_orbax_parameter_export_restores_identically(exported, tmp_path):
  workdir, _, summary = exported
  out = str(tmp_path / "orbax")
  model_dir.export(workdir, None, out, _opts(format="orbax"))
  assert os.path.isdir(os.path.join(out, "params")) and not any(
    f.endswith(".safetensors") for f in os.listdir(out)
  )
  a = run_lib.generate(run_lib.load(workdir), REQUESTS[:1], progress=False)
  b = run_lib.generate(run_lib.load(out), REQUESTS[:1], progress=False)
  np.testing.assert_array_equal(a[0], b[0])


def test_fine_tuning_from_an_export_restores_onto_eight_devices(exported, tiny_data_dir, tmp_path):
  _, model, summary = exported
  assert jax.device_count() == 8
  cfg = _cfg(tiny_data_dir, num_steps=2)
  cfg.init_from = model
  # Updates of ~1e-9 sit far below bfloat16 resolution, so the run's weights must carry the
  # export's fingerprint (names, shapes and leading values rounded to bfloat16).
  cfg.optim.update(lr=1e-9)
  wd = str(tmp_path / "ft")
  train.train(cfg, wd)
  run = run_lib.load(wd)
  params = run.params
  assert common.fingerprint(params, common.layer_positions(run.dit_cfg)) == summary["fingerprint"]
  # Restored as training does, onto the training mesh (fsdp over all 8 devices).
  vocab = run.tokenizer.vocab_size
  t = Trainer(configs.from_json(run.config_json), sharding.make_mesh(run.cfg.mesh), vocab)
  base = model_dir.ModelDir(model).restore_params(t.model.abstract_params, t.dit_cfg)
  w = base["blocks"]["mlp"]["up"]["kernel"]
  assert len(w.sharding.device_set) == 8 and not w.sharding.is_fully_replicated


def test_an_adapter_trains_alone_and_applies_stacks_and_merges(exported, adapter_run, tmp_path):
  workdir, model, summary = exported
  lora_run, preset = adapter_run
  cfg = _json(os.path.join(preset, adapters.CONFIG_FILE))
  assert cfg["base_fingerprint"] == summary["fingerprint"] and cfg["rank"] == 4
  with safe_open(os.path.join(preset, "adapter.safetensors"), "numpy") as f:
    names = list(f.keys())
  assert names and all(".lora.lora_" in n for n in names) and "blocks.0.attn.q.lora.lora_a" in names
  # Only the adapter trained: the adapter run's base weights are the export's.
  run = run_lib.load(lora_run)
  base, factors = lora.split(run.params)
  assert common.fingerprint(base, common.layer_positions(run.dit_cfg)) == summary["fingerprint"]
  assert max(float(jnp.abs(b).max()) for b in jax.tree.leaves(factors)) > 0
  # The adapter run, the export with the preset, and the workdir with the preset agree.
  v_run = _velocity(run, run.params)
  with_preset = run_lib.load(model, presets=[(preset, 1.0)])
  v_preset = _velocity(with_preset, with_preset.params)
  np.testing.assert_allclose(v_preset, v_run, rtol=1e-4, atol=1e-4)
  plain = run_lib.load(model)
  v_plain = _velocity(plain, plain.params)
  assert np.abs(v_preset - v_plain).max() > 1e-4
  zero = run_lib.load(model, presets=[(preset, 0.0)])
  np.testing.assert_array_equal(_velocity(zero, zero.params), v_plain)
  # Stacking two halves is the whole; merging into an export equals applying.
  halves = run_lib.load(model, presets=[(preset, 0.5), (preset, 0.5)])
  np.testing.assert_allclose(_velocity(halves, halves.params), v_preset, rtol=1e-4, atol=1e-4)
  merged_dir = str(tmp_path / "merged")
  m = model_dir.export(workdir, None, merged_dir, _opts(merge_lora=[(preset, 1.0)]))
  assert m["fingerprint"] != summary["fingerprint"]
  merged = run_lib.load(merged_dir)
  np.testing.assert_allclose(_velocity(merged, merged.params), v_preset, rtol=1e-4, atol=1e-4)
  # An adapter for another base model is refused, on load and on merge, in one line.
  with pytest.raises(adapters.ExportError, match="trained on base model"):
    run_lib.load(merged_dir, presets=[(preset, 1.0)])
  other = _other_base(preset, tmp_path)
  with pytest.raises(adapters.ExportError, match="trained on base model"):
    model_dir.export(workdir, None, str(tmp_path / "m3"), _opts(merge_lora=[(other, 1.0)]))
  assert not os.path.exists(tmp_path / "m3")


def _other_base(preset, tmp_path):
  """A copy of the adapter that claims another base model."""
  other = str(tmp_path / "other")
  shutil.copytree(preset, other)
  path = os.path.join(other, adapters.CONFIG_FILE)
  with open(path) as f:
    c = json.load(f)
  c["base_fingerprint"] = "0123456789abcdef"
  with open(path, "w") as f:
    json.dump(c, f)
  return other


def test_streaming_export_stays_under_its_memory_limit(tmp_path, tiny_data_dir):
  """A 290 MB checkpoint exported with 16 MB groups and shards grows memory by < half of it."""
  cfg = dit_tiny.get_config()
  cfg.model.update(width=768, depth=8, heads=6, scan_layers=False)
  tok = os.path.join(tiny_data_dir, "tokenizer.model")
  r = benchmark_export.measure(cfg, tok, str(tmp_path / "b"), "bfloat16", "16MB", "16MB")
  assert r["checkpoint_bytes"] > 250e6 and r["largest_tensor_bytes"] < 16e6
  assert r["growth_bytes"] < 0.5 * r["checkpoint_bytes"], r
  assert r["export_bytes"] == pytest.approx(r["checkpoint_bytes"] / 2, rel=0.01)


def _cmd(module, *args):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
  cmd = [sys.executable, "-m", module, *args]
  return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def _one_line(r, message):
  assert r.returncode != 0
  assert "Traceback" not in r.stderr, r.stderr[-3000:]
  assert not re.search(r"^[IW]\d{4} ", r.stderr, re.M), r.stderr[-3000:]  # Logs: in a file.
  last = r.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and message in last, last


def test_sample_command_runs_from_an_export_with_presets(exported, adapter_run, tmp_path):
  _, model, _ = exported
  _, preset = adapter_run
  out = tmp_path / "samples"
  r = _cmd(
    "sora_jax.sample",
    f"--model={model}",
    f"--preset={preset}:0.5",
    f"--preset={preset}:0.5",
    "--prompt=a red square",
    "--width=16",
    "--height=16",
    "--num_frames=1",
    "--steps=2",
    f"--output={out}",
  )
  assert r.returncode == 0, r.stderr[-3000:]
  assert sorted(os.listdir(out)) == ["000_a_red_square.png", "contact_sheet.png", "logs"]
  assert os.listdir(os.path.join(out, "logs")) == ["sample.log"]


def test_bad_inputs_give_one_line(exported, adapter_run, tmp_path):
  workdir, model, _ = exported
  _, preset = adapter_run
  _one_line(
    _cmd("sora_jax.export", f"--workdir={tmp_path}", f"--output={tmp_path}/o"),
    "no checkpoints found",
  )
  assert os.listdir(tmp_path / "logs") == ["export.log"]  # Beside the run's own logs.
  run = str(tmp_path / "run")  # A copy: the command's log goes in the run, which is shared.
  shutil.copytree(workdir, run)
  _one_line(_cmd("sora_jax.export", f"--workdir={run}", f"--output={model}"), "pass --overwrite")
  broken = str(tmp_path / "broken")
  shutil.copytree(model, broken)
  shard = os.path.join(broken, sorted(f for f in os.listdir(broken) if "-of-" in f)[1])
  with open(shard, "r+b") as f:
    f.truncate(os.path.getsize(shard) - 100)
  _one_line(_cmd("sora_jax.sample", f"--model={broken}", "--prompt=a red square"), "truncated")
  other = _other_base(preset, tmp_path)
  _one_line(
    _cmd("sora_jax.sample", f"--model={model}", f"--preset={other}", "--prompt=a red square"),
    "trained on base model 0123456789abcdef",
  )
