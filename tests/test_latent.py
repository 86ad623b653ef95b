"""The latent path: the autoencoder's training binary, clip batches, latent caching, the
autoencoder latent stage in diffusion training (cached or on the fly) and sampling."""

import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import write_tiny_dataset

from data_pipelines import clips, media, pipeline, schema, shards, tokenizer
from experiments import autoencoder_tiny, dit_tiny
from sora_jax import cache_latents, train, train_autoencoder
from sora_jax.core import checkpointing, configs, image_metrics, metrics
from sora_jax.diffusion import latent
from sora_jax.evaluators import reconstruction
from sora_jax.model_io import model_dir
from sora_jax.models import autoencoder as ae
from sora_jax.sampling import plans
from sora_jax.sampling import run as run_lib
from sora_jax.sampling import sampler as sampling
from sora_jax.training import input_pipeline, validation

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Clips no longer than the diffusion window (9 frames): cached and on-the-fly batches agree.
SIZES = ((1, 24, 40), (5, 17, 31), (9, 32, 32), (1, 16, 16), (9, 20, 36))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return write_tiny_dataset(str(tmp_path_factory.mktemp("latent_data")), sizes=SIZES)


@pytest.fixture(scope="module")
def ae_workdir(tmp_path_factory, data_dir):
  """A tiny autoencoder trained 12 steps, adversarial from step 7."""
  cfg = autoencoder_tiny.get_config()
  cfg.data.data_dir = data_dir
  cfg.loss.update(adv=0.1, adv_start=7)
  cfg.train.update(num_steps=12, log_every=4, eval_every=8, checkpoint_every=8)
  workdir = str(tmp_path_factory.mktemp("ae"))
  train_autoencoder.train(cfg, workdir)
  return workdir


def dit_config(data_dir, ae_workdir, **data):
  cfg = dit_tiny.get_config()
  cfg.data.update(
    {
      "data_dir": data_dir,
      "max_frames": 9,
      "frame_stride": 1,
      "max_tokens_per_example": 48,
      "min_frame_tokens": 4,
      "seq_len": 128,
      "caption_dropout": 0.3,
      **data,
    }
  )
  cfg.latent.update(kind="autoencoder", autoencoder=ae_workdir)
  cfg.model.patch = (1, 1, 1)
  cfg.train.update(num_steps=2, global_batch_size=8, log_every=1, checkpoint_every=2)
  cfg.train.async_checkpointing = False
  return cfg


# ------------------------------------------------------------------------------
# The autoencoder's training binary.
# ------------------------------------------------------------------------------


def test_autoencoder_training_lowers_the_loss_and_writes_what_researchers_read(ae_workdir):
  logged = metrics.read_jsonl(os.path.join(ae_workdir, "tensorboard"))
  by_step = {r["step"]: r for r in logged}
  assert by_step[12]["l1"] < 0.6 * by_step[4]["l1"]
  assert by_step[12]["psnr"] > by_step[4]["psnr"] + 3.0
  for step in (8, 12):
    assert 0.0 < by_step[step]["eval_ssim"] <= 1.0 and by_step[step]["eval_psnr"] > 5.0
  # The discriminator trains from adv_start on, and not before.
  assert by_step[4]["disc_loss"] == 0.0 and by_step[12]["disc_loss"] > 0.0
  assert by_step[12]["gen_loss"] != 0.0
  assert os.path.exists(os.path.join(ae_workdir, "reconstructions", "step_0000012.png"))
  stats = latent.read_stats(os.path.join(ae_workdir, latent.STATS_FILE))
  assert len(stats["shift"]) == len(stats["scale"]) == 4
  assert all(s > 0 for s in stats["scale"])


def test_autoencoder_training_resumes_from_its_checkpoint(ae_workdir, data_dir, tmp_path):
  workdir = str(tmp_path / "ae")
  shutil.copytree(ae_workdir, workdir)
  cfg = autoencoder_tiny.get_config()
  cfg.data.data_dir = data_dir
  cfg.loss.update(adv=0.1, adv_start=7)
  cfg.train.update(num_steps=16, log_every=4, eval_every=8, checkpoint_every=8)
  train_autoencoder.train(cfg, workdir)
  steps = [r["step"] for r in metrics.read_jsonl(os.path.join(workdir, "tensorboard"))]
  assert steps == [4, 8, 12, 16]


def test_autoencoder_resuming_under_another_model_names_what_changed(
  ae_workdir, data_dir, tmp_path
):
  workdir = str(tmp_path / "ae")
  shutil.copytree(ae_workdir, workdir)
  before = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
  cfg = autoencoder_tiny.get_config()
  cfg.data.data_dir = data_dir
  cfg.loss.update(adv=0.1, adv_start=7)
  cfg.model.latent_channels = 8
  cfg.train.update(num_steps=16, log_every=4, eval_every=8, checkpoint_every=8)
  with pytest.raises(checkpointing.CheckpointError, match="does not fit this config") as e:
    train_autoencoder.train(cfg, workdir)
  assert "config.model.latent_channels: 4 -> 8" in str(e.value)
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == before


def test_bad_autoencoder_configs_fail_with_one_line(data_dir, tmp_path):
  cmd = [
    sys.executable,
    "-m",
    "sora_jax.train_autoencoder",
    "--config=experiments/autoencoder_tiny.py",
    f"--workdir={tmp_path}",
    f"--config.data.data_dir={data_dir}",
  ]
  for override, want in [
    ("--config.data.buckets=((4, 16, 16),)", "1 + a multiple of 4"),
    ("--config.model.latent_channels=0", "latent_channels"),
    ("--config.train.global_batch_size=3", "global_batch_size"),
  ]:
    r = subprocess.run(cmd + [override], cwd=REPO, capture_output=True, text=True)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr, r.stderr[-2000:]
    assert want in r.stderr.strip().splitlines()[-1], r.stderr[-500:]


# ------------------------------------------------------------------------------
# Clip batches and image metrics.
# ------------------------------------------------------------------------------


def test_clip_batches_are_the_same_for_any_process_count_and_resume(data_dir):
  source, _ = pipeline.open_source("array_record", data_dir, "train")
  opts = clips.ClipOptions(buckets=((1, 16, 16), (5, 16, 24), (9, 24, 16)))
  one = clips.ClipBatches(source, opts, global_batch_size=4, seed=3)
  halves = [
    clips.ClipBatches(source, opts, global_batch_size=4, seed=3, process_index=p, process_count=2)
    for p in range(2)
  ]
  shapes = set()
  for i in range(12):
    whole = one[i]["video"]
    shapes.add(whole.shape)
    np.testing.assert_array_equal(whole, np.concatenate([h[i]["video"] for h in halves]))
    assert whole.min() >= -1.0 and whole.max() <= 1.0
  assert shapes == {(4, 1, 16, 16, 3), (4, 5, 16, 24, 3), (4, 9, 24, 16, 3)}

  stream = clips.Stream(clips.make_dataset(source, opts, global_batch_size=4, seed=3))
  for _ in range(3):
    next(stream)
  state = stream.get_state()
  fresh = clips.Stream(clips.make_dataset(source, opts, global_batch_size=4, seed=3))
  fresh.set_state(state)
  np.testing.assert_array_equal(next(fresh)["video"], one[3]["video"])


def test_psnr_and_ssim_match_scikit_image():
  skm = pytest.importorskip("skimage.metrics")
  rng = np.random.default_rng(0)
  x = rng.uniform(-1, 1, (1, 2, 24, 40, 3)).astype(np.float32)
  y = np.clip(x + rng.normal(0, 0.1, x.shape), -1, 1).astype(np.float32)
  xs, ys = (x[0] + 1) / 2, (y[0] + 1) / 2
  want_ssim = np.mean(
    [
      skm.structural_similarity(
        xs[t],
        ys[t],
        channel_axis=-1,
        data_range=1.0,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
      )
      for t in range(2)
    ]
  )
  np.testing.assert_allclose(image_metrics.ssim(x, y)[0], want_ssim, atol=1e-4)
  np.testing.assert_allclose(
    image_metrics.psnr(x, y)[0], skm.peak_signal_noise_ratio(xs, ys, data_range=1.0), atol=1e-3
  )


# ------------------------------------------------------------------------------
# Latent caching and the diffusion pipeline.
# ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory, data_dir, ae_workdir):
  out = str(tmp_path_factory.mktemp("cache"))
  cfg = dit_config(data_dir, ae_workdir)
  cache_latents.run(ae_workdir, data_dir, out, cfg, progress=False)
  return out


def test_cache_writes_latent_records_statistics_and_resumes(cache_dir, data_dir, ae_workdir):
  manifest = shards.read_manifest(cache_dir)
  assert manifest["latent"]["channels"] == 4
  assert manifest["splits"]["train"]["num_examples"] == 24
  ex = next(shards.read_shard(os.path.join(cache_dir, manifest["splits"]["train"]["shards"][0])))
  assert ex.media_format == schema.LATENT_FORMAT and ex.captions
  mean, logvar = media.decode_latent(ex)
  assert mean.shape == logvar.shape == (*ex.latent_shape[:3], 4)
  stats = latent.read_stats(os.path.join(cache_dir, "latent_stats.json"))
  assert len(stats["scale"]) == 4 and stats["count"] > 0
  # A rerun finds every shard done and encodes nothing; a lost shard is redone.
  shard0 = os.path.join(cache_dir, manifest["splits"]["train"]["shards"][0])
  before = pathlib.Path(shard0).read_bytes()
  os.remove(os.path.join(cache_dir, manifest["splits"]["train"]["shards"][1]))
  cfg = dit_config(data_dir, ae_workdir)
  again = cache_latents.run(ae_workdir, data_dir, cache_dir, cfg, progress=False)
  assert again["splits"] == manifest["splits"]
  assert pathlib.Path(shard0).read_bytes() == before
  assert latent.read_stats(os.path.join(cache_dir, "latent_stats.json")) == stats


def test_cached_latents_and_on_the_fly_encoding_give_the_same_batches(
  cache_dir, data_dir, ae_workdir
):
  stats_file = os.path.join(cache_dir, "latent_stats.json")
  batches = []
  for d in (data_dir, cache_dir):
    cfg = dit_config(d, ae_workdir)
    cfg.latent.stats_file = stats_file
    tok = tokenizer.load(d)
    stage = latent.stage_for(cfg)
    it = iter(input_pipeline.make_dataset(cfg, tok, stage, 0, 1))
    batches.append([next(it) for _ in range(2)])
  for a, b in zip(*batches, strict=True):
    assert a.keys() == b.keys()
    for k in a:
      np.testing.assert_allclose(a[k], b[k], atol=1e-5, err_msg=k)
  assert (batches[0][0]["segment_ids"] > 0).mean() > 0.5


def _assert_same_pixels(a: np.ndarray, b: np.ndarray) -> None:
  """Equal frames, each value within one uint8 level and almost all exactly."""
  assert a.shape == b.shape, (a.shape, b.shape)
  diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
  assert diff.max() <= 1, diff.max()
  assert np.mean(diff > 0) < 0.01, np.mean(diff > 0)


def test_latent_training_and_sampling_decode_with_the_copy_beside_the_run(
  cache_dir, ae_workdir, tmp_path
):
  cfg = dit_config(cache_dir, ae_workdir)
  workdir = str(tmp_path / "run")
  train.train(cfg, workdir)
  assert os.path.isdir(os.path.join(workdir, latent.AUTOENCODER_COPY))
  # The original autoencoder may move on or vanish; sampling uses the copy.
  moved = ae_workdir + ".moved"
  os.rename(ae_workdir, moved)
  try:
    requests = [
      sampling.Request("a red square", num_frames=9, height=16, width=24, seed=0),
      sampling.Request("a blue square", num_frames=1, height=24, width=16, seed=1),
    ]
    videos = run_lib.generate(run_lib.load(workdir), requests, steps=2, progress=False)
    # An export carries the autoencoder (safetensors, config, statistics) in autoencoder/.
    export = str(tmp_path / "model")
    model_dir.export(
      workdir, None, export, model_dir.ExportOptions(dtype="float32", progress=False)
    )
    assert sorted(os.listdir(os.path.join(export, "autoencoder"))) == [
      "config.json",
      latent.STATS_FILE,
      "model.safetensors",
    ]
    exported = run_lib.generate(run_lib.load(export), requests, steps=2, progress=False)
  finally:
    os.rename(moved, ae_workdir)
  assert [v.shape for v in videos] == [(9, 16, 24, 3), (1, 24, 16, 3)]
  assert all(v.dtype == np.uint8 for v in videos)
  for a, b in zip(videos, exported, strict=True):
    np.testing.assert_array_equal(a, b)
  # Editing in latent space: a 5-frame clip (latent frames 0-1) extended by 4 frames, and an
  # image animated; the kept latents come back exactly, so the decoder (causal in time)
  # gives the clip's own reconstruction for its frames.
  run = run_lib.load(workdir, autoencoder=None)
  clip = videos[0][:5]
  ctx, total, _ = plans.extend(clip, "forward", 4, run.geom)
  edits = [
    sampling.Request("a red square", total, 16, 24, seed=2, context=ctx),
    sampling.Request(
      "a red square", 9, 16, 24, seed=3, context=plans.animate(clip[:1], 0, True, 9)
    ),
  ]
  extended, animated = run_lib.generate(run, edits, steps=2, progress=False)
  assert extended.shape == animated.shape == (9, 16, 24, 3)
  own = latent.to_uint8(run.stage.decode(run.stage.encode(pipeline.to_unit_range(clip))))
  # Equal up to rounding to uint8: the decoder runs on 9 latent frames here and on the
  # clip's own frames for `own`, and XLA may sum in another order for another shape (one
  # value in 5760 once came back 41 against 40 in a full `make test`).
  _assert_same_pixels(extended[:5], own)
  first = latent.to_uint8(run.stage.decode(run.stage.encode(pipeline.to_unit_range(clip[:1]))))
  _assert_same_pixels(animated[:1], first)
  # A frame count the 4x temporal compression cannot make is refused.
  with pytest.raises(sampling.RequestError, match="1 \\+ a multiple"):
    run_lib.generate(
      run_lib.load(workdir),
      [sampling.Request("x", num_frames=8, height=16, width=16)],
      steps=1,
      progress=False,
    )


def test_configs_that_do_not_match_the_cache_are_refused(cache_dir, ae_workdir):
  cfg = dit_config(cache_dir, ae_workdir)
  cfg.latent.kind = "pixel"
  with pytest.raises(configs.ConfigError, match="cached latents"):
    validation.validate(cfg)
  cfg = dit_config(cache_dir, ae_workdir, max_frames=5)
  with pytest.raises(configs.ConfigError, match="max_frames"):
    validation.validate(cfg)
  cfg = dit_config(cache_dir, "/nonexistent/ae")
  with pytest.raises(configs.ConfigError, match="no checkpoints"):
    validation.validate(cfg)


def test_cache_latents_bad_inputs_give_one_line(data_dir, tmp_path):
  base = [sys.executable, "-m", "sora_jax.cache_latents", f"--output_dir={tmp_path}/c"]
  for args, want in [
    ([f"--data_dir={data_dir}"], "--autoencoder_workdir is required"),
    ([f"--data_dir={data_dir}", f"--autoencoder_workdir={tmp_path}"], "no checkpoints"),
    ([f"--data_dir={tmp_path}/none", f"--autoencoder_workdir={tmp_path}"], "manifest"),
  ]:
    r = subprocess.run(base + args, cwd=REPO, capture_output=True, text=True)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr, r.stderr[-2000:]
    assert want in r.stderr.strip().splitlines()[-1], r.stderr[-500:]


def test_latent_records_round_trip_and_validate():
  mean = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
  data, shape = media.encode_latent(mean, -mean)
  ex = schema.Example(
    media=data,
    media_format=schema.LATENT_FORMAT,
    fps=2.0,
    num_frames=5,
    height=24,
    width=32,
    captions=("c",),
    source_id="s",
    latent_shape=shape,
  )
  back = schema.deserialize(schema.serialize(ex))
  m, lv = media.decode_latent(back)
  np.testing.assert_array_equal(m, mean)
  np.testing.assert_array_equal(lv, -mean)
  with pytest.raises(media.MediaError, match="no pixels"):
    media.decode(back)
  with pytest.raises(schema.SchemaError, match="latent_shape"):
    schema.Example(**{**ex.__dict__, "latent_shape": ()}).validate()


def test_latent_stats_merge_equals_one_pass():
  rng = np.random.default_rng(0)
  z = rng.normal(2.0, 3.0, (1000, 4))
  whole = latent.LatentStats(4)
  whole.add(z)
  parts = latent.LatentStats(4)
  for chunk in np.array_split(z, 7):
    p = latent.LatentStats(4)
    p.add(chunk)
    parts.merge(p.n, p.mean, p.m2)
  np.testing.assert_allclose(parts.to_json()["shift"], z.mean(0), rtol=1e-9)
  np.testing.assert_allclose(parts.to_json()["scale"], 1 / z.std(0), rtol=1e-9)


def test_autoencoder_benchmark_reports_quality_and_speed(ae_workdir, data_dir, tmp_path):
  out = str(tmp_path / "bench")
  stage = latent.AutoencoderStage(ae_workdir, stats_file=None)
  r = reconstruction.evaluate(
    stage, data_dir, split="train", num_clips=6, max_frames=5, photo_size=16, output=out
  )
  d = r["dataset"]
  assert d["psnr"]["n"] == 6 and d["image_psnr"]["n"] + d["video_psnr"]["n"] == 6
  assert 5.0 < d["psnr"]["mean"] < 100.0 and 0.0 < d["ssim"]["mean"] <= 1.0
  if "psnr" in r["photos"]:  # scikit-image installed (it is in the test extra).
    assert r["photos"]["clips"] == 12 and r["photos"]["psnr"]["n"] == 12
  s = r["speed"]
  assert s["clip"] == [5, 16, 16] and min(v for k, v in s.items() if k.endswith("_per_s")) > 0
  assert os.path.exists(os.path.join(out, "reconstructions.png"))
  assert os.path.exists(os.path.join(out, "autoencoder_benchmark.json"))


@pytest.mark.slow
def test_autoencoder_trains_on_two_processes_like_on_one(data_dir, tmp_path):
  """2 processes x 2 devices read their halves of the same global batches as 1 x 4."""

  def cmd(workdir):
    return [
      sys.executable,
      "-m",
      "sora_jax.train_autoencoder",
      "--config=experiments/autoencoder_tiny.py",
      f"--workdir={workdir}",
      f"--config.data.data_dir={data_dir}",
      "--config.train.num_steps=6",
      "--config.train.log_every=2",
      "--config.train.eval_every=6",
      "--config.train.checkpoint_every=6",
    ]

  one, pod = str(tmp_path / "one"), str(tmp_path / "pod")
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
  r = subprocess.run(cmd(one), cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  env = dict(os.environ, DEVICES_PER_PROCESS="2")
  r = subprocess.run(
    ["bash", "launch/local.sh", "2", *cmd(pod)],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
  a = metrics.read_jsonl(os.path.join(one, "tensorboard"))
  b = metrics.read_jsonl(os.path.join(pod, "tensorboard"))
  assert [x["step"] for x in a] == [x["step"] for x in b] == [2, 4, 6]
  for x, y in zip(a, b, strict=True):
    np.testing.assert_allclose(x["l1"], y["l1"], rtol=1e-4)
  np.testing.assert_allclose(a[-1]["eval_psnr"], b[-1]["eval_psnr"], rtol=1e-4)
  assert os.path.exists(os.path.join(pod, "latent_stats.json"))


def test_saved_configs_from_before_shortcuts_restore_networks_without_them():
  cfg = autoencoder_tiny.get_config()
  assert ae.AutoencoderConfig.from_config(cfg.model).shortcuts
  old = cfg.to_dict()
  del old["model"]["shortcuts"]  # What a config.json written before the field holds.
  assert not ae.AutoencoderConfig.from_config(configs.from_json(old).model).shortcuts
