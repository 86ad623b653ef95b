"""The PCA latent stage: the fit is exact where it should be, and a run on it trains,
samples and exports with the copy beside it (sora_jax.diffusion.latent.PCAStage)."""

import os
import shutil

import numpy as np
import pytest

from experiments import dit_tiny
from sora_jax import fit_pca, train
from sora_jax.core.configs import ConfigError
from sora_jax.diffusion import latent
from sora_jax.model_io import model_dir
from sora_jax.sampling import run as run_lib
from sora_jax.sampling import sampler
from sora_jax.training import validation


def _low_rank_clips(rank: int, block: int, n: int = 40, seed: int = 0, shape=None):
  """Clips whose block x block x 3 blocks lie in a `rank`-dimensional affine subspace."""
  rng = np.random.default_rng(seed)
  d = block * block * 3
  basis = np.linalg.qr(rng.standard_normal((d, rank)))[0]
  mean = rng.uniform(-0.3, 0.3, d)
  for _ in range(n):
    t, nh, nw = shape or (rng.integers(1, 4), rng.integers(1, 4), rng.integers(1, 4))
    coef = rng.standard_normal((t, nh, nw, rank)) * np.linspace(0.3, 0.05, rank)
    x = (coef @ basis.T + mean).reshape(t, nh, nw, block, block, 3)
    yield x.transpose(0, 1, 3, 2, 4, 5).reshape(t, nh * block, nw * block, 3)


def test_fit_recovers_a_low_rank_subspace_exactly_and_whitens(tmp_path):
  clips = list(_low_rank_clips(rank=5, block=4))
  arrays, report = latent.fit_pca(clips, block=4, channels=5, whiten=True)
  assert report["variance_kept"] > 1 - 1e-9 and report["psnr_db"] > 100
  assert report["channel_std"] == sorted(report["channel_std"], reverse=True)
  latent.write_pca(str(tmp_path / "pca"), 4, arrays, report)
  stage = latent.PCAStage(str(tmp_path / "pca"))
  assert stage.compression == (1, 4, 4) and stage.channels == 5
  z = np.concatenate([stage.encode(c).reshape(-1, 5) for c in clips])
  np.testing.assert_allclose(z.mean(0), 0, atol=1e-4)
  np.testing.assert_allclose(z.std(0), 1, rtol=1e-3)
  for c in clips[:5]:
    np.testing.assert_allclose(stage.decode(stage.encode(c)), np.clip(c, -1, 1), atol=1e-5)
  # Unwhitened, the latent is in pixel units: an orthonormal projection keeps distances.
  arrays, _ = latent.fit_pca(clips, block=4, channels=5)
  latent.write_pca(str(tmp_path / "plain"), 4, arrays, {"whiten": False})
  plain = latent.PCAStage(str(tmp_path / "plain"), block=4, channels=5, whiten=False)
  a, b = _low_rank_clips(rank=5, block=4, n=2, seed=0, shape=(2, 3, 2))
  np.testing.assert_allclose(
    np.linalg.norm(plain.encode(a) - plain.encode(b)), np.linalg.norm(a - b), rtol=1e-4
  )
  with pytest.raises(ValueError, match="config.latent.pca_whiten=True"):
    latent.PCAStage(str(tmp_path / "plain"), whiten=True)
  # Fewer channels than the rank loses exactly the discarded variance.
  _, short = latent.fit_pca(clips, block=4, channels=3)
  assert 0.5 < short["variance_kept"] < 1 - 1e-3 and short["psnr_db"] < report["psnr_db"]
  with pytest.raises(ValueError, match="channels=49"):
    latent.fit_pca(clips, block=4, channels=49)


def _pca_config(data_dir, pca_dir):
  cfg = dit_tiny.get_config()
  cfg.data.data_dir = data_dir
  cfg.latent.update(kind="pca", pca=pca_dir, pca_block=4, pca_channels=6)
  cfg.model.patch = (1, 1, 1)
  cfg.train.update(num_steps=2, log_every=1, checkpoint_every=2, async_checkpointing=False)
  return cfg


def test_a_pca_run_trains_samples_and_exports_with_its_copy(tiny_data_dir, tmp_path):
  pca_dir = str(tmp_path / "pca")
  cfg = _pca_config(tiny_data_dir, pca_dir)
  # The fit reads clips as the config's pipeline cuts them for this stage.
  clips = list(fit_pca.clips(cfg, block=4, channels=6, count=24, seed=0))
  assert clips and all(c.shape[1] % 4 == 0 and c.shape[2] % 4 == 0 for c in clips)
  assert all(c.min() >= -1 and c.max() <= 1 for c in clips)
  latent.write_pca(pca_dir, 4, *latent.fit_pca(clips, block=4, channels=6))
  validation.validate(cfg)
  workdir = str(tmp_path / "run")
  train.train(cfg, workdir)
  assert sorted(os.listdir(os.path.join(workdir, latent.PCA_COPY))) == ["config.json", "pca.npz"]
  shutil.rmtree(pca_dir)  # Sampling and export use the copy beside the run.
  requests = [
    sampler.Request("a red square", num_frames=3, height=16, width=24, seed=0),
    sampler.Request("a blue square", num_frames=1, height=24, width=16, seed=1),
  ]
  videos = run_lib.generate(run_lib.load(workdir), requests, steps=2, progress=False)
  assert [v.shape for v in videos] == [(3, 16, 24, 3), (1, 24, 16, 3)]
  export = str(tmp_path / "model")
  model_dir.export(workdir, None, export, model_dir.ExportOptions(dtype="float32", progress=False))
  assert sorted(os.listdir(os.path.join(export, latent.PCA_COPY))) == ["config.json", "pca.npz"]
  exported = run_lib.generate(run_lib.load(export), requests, steps=2, progress=False)
  for a, b in zip(videos, exported, strict=True):
    np.testing.assert_array_equal(a, b)
  with pytest.raises(ConfigError, match="config.latent.pca="):
    validation.validate(_pca_config(tiny_data_dir, pca_dir))
