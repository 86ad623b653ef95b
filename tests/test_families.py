"""The four families of video evaluation: each measure on real clips is near its ideal, and on
frozen, shuffled, blurred or blocky clips it moves the way it should."""

import numpy as np
import pytest

from data_pipelines import describe, render
from sora_jax.diffusion import latent
from sora_jax.evaluators import (
  alignment,
  families,
  frechet,
  motion_quality,
  temporal_consistency,
  visual_quality,
)


def _clip(**kw) -> np.ndarray:
  base = dict(
    color="yellow",
    shape="circle",
    motion="moving right",
    background="gray",
    height=32,
    width=40,
    num_frames=8,
    size=10.0,
    start=(8.0, 16.0),
    velocity=(3.0, 0.0),
  )
  base.update(kw)
  return render.draw(render.Scene(**base))


def test_motion_reads_moving_still_and_speed():
  moving = _clip()
  frozen = np.repeat(moving[:1], 8, axis=0)
  got = motion_quality.clip_motion(moving, fps=8.0)
  assert got["moves"] and not motion_quality.clip_motion(frozen, fps=8.0)["moves"]
  # 3 px per frame on a 32x40 frame at 8 fps: 0.67 sides per second, "quickly".
  assert got["speed"] == "quickly" and 0.5 < got["flow"] < 0.9
  slow = motion_quality.clip_motion(_clip(velocity=(0.6, 0.0)), fps=8.0)
  assert slow["speed"] == "slowly", slow
  summary = motion_quality.evaluate([moving, frozen], 8.0, asked_speeds=["quickly", None])
  assert summary["moving_fraction"] == 0.5 and summary["speed_accuracy"] == 1.0


def test_consistency_warping_error_and_flicker():
  clip = _clip()
  smooth = temporal_consistency.warping_error(clip)
  shuffled = temporal_consistency.warping_error(clip[[0, 5, 2, 7, 1, 6, 3, 4]])
  assert smooth < 0.02 and shuffled > 2 * smooth, (smooth, shuffled)
  still = _clip(velocity=(0.0, 0.0), motion="standing still")
  assert temporal_consistency.flicker(still) == 0.0
  rng = np.random.default_rng(0)
  noisy = np.clip(still + rng.normal(0, 12, still.shape), 0, 255).astype(np.uint8)
  assert temporal_consistency.flicker(noisy) > 0.02
  out = temporal_consistency.evaluate([clip, noisy], still=[False, True])
  assert out["n_still"] == 1 and out["flicker"] > 0.02


def test_visual_grid_sharpness_and_round_trip():
  from scipy import ndimage

  clip = _clip()
  blocky = np.repeat(np.repeat(clip[:, ::8, ::8], 8, axis=1), 8, axis=2)  # 8x8 mosaic
  real = visual_quality.evaluate([clip], period=8)
  assert 0.5 < real["grid_ratio"] < 1.6
  assert visual_quality.evaluate([blocky], period=8)["grid_ratio"] > 3 * real["grid_ratio"]
  blurred = ndimage.gaussian_filter(clip.astype(np.float32), (0, 1.5, 1.5, 0)).astype(np.uint8)
  assert visual_quality.sharpness(blurred) < 0.6 * visual_quality.sharpness(clip)
  # The identity stage gives back every clip exactly: the ideal round trip.
  assert visual_quality.round_trip_psnr(clip, latent.PixelStage()) == 100.0


def test_frechet_distance_is_zero_on_itself_and_grows_with_a_shift():
  rng = np.random.default_rng(0)
  a, b = rng.normal(size=(400, 6)), rng.normal(size=(400, 6))
  assert frechet.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
  same = frechet.frechet_distance(a, b)
  shifted = frechet.frechet_distance(a, b + 1.0)
  assert same < 0.3 and shifted == pytest.approx(6.0 + same, abs=0.5)
  with pytest.raises(ValueError, match="at least 2"):
    frechet.frechet_distance(a[:1], b)


def test_the_shipped_probe_reads_real_clips_and_sees_frozen_ones_stand_still():
  probe = alignment.Probe()
  assert probe.config["eval_accuracy"]["color"] > 0.95  # as trained (config.json)
  scenes = [
    dict(color="red", shape="square", background="black"),
    dict(color="green", shape="triangle", background="gray"),
    dict(color="white", shape="circle", background="black"),
  ]
  clips = [_clip(**s) for s in scenes]
  prompts = [
    f"a {s['color']} {s['shape']} moving right on a {s['background']} background" for s in scenes
  ]
  got = alignment.evaluate(clips, prompts, probe)
  assert (
    got["probe_color"] == 1.0 and got["probe_background"] == 1.0 and got["readback_color"] == 1.0
  )
  assert got["probe_motion"] >= 2 / 3
  frozen = [np.repeat(c[:1], 8, axis=0) for c in clips]
  assert alignment.evaluate(frozen, prompts, probe)["probe_motion"] < got["probe_motion"]
  assert probe.features(clips).shape == (3, probe.cfg.features)


def test_real_footage_is_found_and_cut_to_size():
  files = families.footage_files()
  assert len(files) == 4 and all(f.endswith(".mp4") for f in files)
  clips = families.footage_clips([(8, 32, 40), (8, 40, 32)], per_file=1)
  assert [c.shape for c in clips[:2]] == [(8, 32, 40, 3), (8, 40, 32, 3)]
  got = families.measure(clips, None, fps=12.0, period=8, probe=None)
  assert got["motion"]["moving_fraction"] > 0 and got["consistency"]["warping_error"] < 0.1
  assert "alignment" not in got  # footage has no captions


def test_speed_words_round_trip_through_descriptions():
  facts = describe.read_facts(_clip(), fps=8.0)
  text = describe.describe(facts, "seed", fps=8.0)
  assert families.asked_speeds([text, "a red circle"]) == [facts.speed, None]
