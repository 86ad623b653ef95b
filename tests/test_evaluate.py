"""Prompt-following evaluation and the caption-word probe, on a briefly trained tiny model."""

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import ingest_footage  # noqa: E402

from data_pipelines import media, render, shards, synthetic, tokenizer, vocab
from experiments import dit_tiny
from sora_jax import train
from sora_jax.evaluators import editing, prompt_following, word_probe
from sora_jax.sampling import run as run_lib
from sora_jax.sampling import sampler

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  data = str(tmp_path_factory.mktemp("syn"))
  opts = synthetic.Options(
    output_dir=data,
    num_examples=48,
    num_eval=24,
    max_side=48,
    max_frames=12,
    num_workers=1,
    examples_per_shard=24,
  )
  synthetic.generate(opts, show_progress=False)
  tokenizer.train(data, vocab_size=64)
  cfg = dit_tiny.get_config()
  cfg.data.update(data_dir=data, max_text_len=24)
  cfg.train.update(num_steps=4, checkpoint_every=4)
  cfg.train.async_checkpointing = False
  workdir = str(tmp_path_factory.mktemp("run"))
  train.train(cfg, workdir)
  return workdir, data


def test_evaluate_reads_attributes_back_and_writes_results(run, tmp_path):
  workdir, data = run
  out = str(tmp_path / "eval")
  expander = tmp_path / "expander.py"  # A team's own expander, over the command protocol.
  expander.write_text(
    "import json, sys\n"
    "for line in sys.stdin:\n"
    "    p = json.loads(line)['prompt']\n"
    "    print(json.dumps({'expanded': p + '. It moves quickly, starting near the centre.'}))\n"
  )
  r = subprocess.run(
    [
      sys.executable,
      "-m",
      "sora_jax.evaluate",
      f"--workdir={workdir}",
      f"--data_dir={data}",
      f"--output={out}",
      "--num_prompts=6",
      "--steps=2",
      "--aims=color:0.95,one_object:0.0",
      "--evals=prompt_following,editing,families",
      "--num_clips=2",
      f"--expander=command:{sys.executable} {expander}",
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert r.returncode == 0, r.stderr[-3000:]
  with open(os.path.join(out, "eval_results.json")) as f:
    results = json.load(f)
  acc = results["accuracy"]
  assert results["split"] == "eval" and acc["n_color"] == 6
  assert all(0.0 <= acc[k] <= 1.0 for k in ("color", "shape", "background", "one_object"))
  assert sum(b["n"] for b in acc["by_background"].values()) == 6
  assert any(f"  on {bg}" in r.stdout for bg in acc["by_background"]), r.stdout
  # Clean-sample measures stand beside the same measures on real clips of the split.
  assert results["real"]["one_object"] == 1.0 and 0.8 < results["real"]["grid_ratio"] < 1.25
  assert acc["grid_ratio"] > 0
  assert results["aims"]["one_object"] == {"aim": 0.0, "met": True}
  assert results["aims"]["color"]["met"] == (acc["color"] >= 0.95)
  assert "  color " in r.stdout and "aim 95%" in r.stdout and "patch grid" in r.stdout, r.stdout
  assert os.path.exists(os.path.join(out, "eval_contact_sheet.png"))
  assert os.path.exists(os.path.join(out, "logs", "evaluate.log"))
  # Expanded prompts generate; the short prompt scores; what only the expansion states too.
  assert results["samples"][0]["expanded"].endswith("starting near the centre.")
  assert acc["n_start"] == 6 and 0.0 <= acc["start"] <= 1.0 and "stated by the expanded" in r.stdout
  # The four families, beside real clips of the split and real footage.
  fam = results["families"]
  assert set(fam) == {"generated", "real", "footage", "footage_files"}
  assert fam["real"]["alignment"]["readback_color"] == 1.0
  assert fam["real"]["frechet"] < fam["generated"]["frechet"]  # 4 steps of training
  assert fam["generated"]["motion"]["n_speed"] > 0  # the expansion asked for a speed
  assert fam["footage"]["consistency"]["warping_error"] is not None
  assert os.path.exists(os.path.join(out, "families.png")) and "Fréchet distance" in r.stdout
  # Editing: every mode on 2 clips; pixel space keeps the given frames exactly.
  with open(os.path.join(out, "editing_results.json")) as f:
    edits = json.load(f)
  assert set(edits["modes"]) == set(editing.MODES)
  for mode, m in edits["modes"].items():
    assert m["n"] == 2, (mode, m)
    if mode == "blend":
      assert 0.0 <= m["first_is_a"] <= 1.0 and 0.0 <= m["last_is_b"] <= 1.0
      continue
    if mode == "storyboard":  # Two windows asking for two directions, no media.
      assert 0.0 <= m["first_window"] <= 1.0 and 0.0 <= m["switch_found"] <= 1.0
      continue
    if mode == "recut":  # The clip as a starting point: nothing kept exactly.
      assert "fidelity" not in m and 0.0 <= m["color"] <= 1.0 and m["path_error"] >= 0.0
      continue
    assert m["fidelity"] == editing.PSNR_EXACT, (mode, m)
    assert m["seam"] > 0 and m["seam_baseline"] > 0 and 0.0 <= m["color"] <= 1.0
  assert edits["aims"]["animate.seam"]["met"] == (edits["modes"]["animate"]["seam"] <= 1.5)
  assert "editing at step 4 on 2 clips" in r.stdout and "extend_backward" in r.stdout
  assert "second window motion" in r.stdout and "first third reads as A" in r.stdout
  assert set(edits["remix"]) == {"0", "0.25", "0.5", "0.75", "1"}
  assert edits["remix"]["1"]["path_error"] == 0.0  # keep 1 returns the source clip
  assert os.path.exists(os.path.join(out, "editing_remix.png"))
  assert os.path.exists(os.path.join(out, "editing_contact_sheet.png"))
  # One example of every mode as mp4 beside what it was given, which comes back in it.
  with open(os.path.join(out, "editing_prompts.json")) as f:
    assert set(json.load(f)) == set(editing.MODES) | {f"remix@{k:g}" for k in editing.REMIX_KEEPS}
  animated = media.decode_video(os.path.join(out, "animate.mp4"))
  given = media.decode_video(os.path.join(out, "animate.given-0.mp4"))
  assert len(animated) == edits["size"][0] and len(given) == 1
  assert np.abs(animated[0].astype(int) - given[0].astype(int)).mean() < 12  # mp4, not exact
  assert os.path.exists(os.path.join(out, "blend.given-1.mp4"))
  assert "recut" in r.stdout and "one example of every mode" in r.stdout
  assert "text-to-video at the same frames" in r.stdout


def test_scores_are_also_split_by_the_background_asked(run):
  _, data = run
  examples = [e for p in shards.split_files(data, "train") for e in shards.read_shard(p)]
  clips = {}
  for e in examples:
    background = vocab.parse_caption(e.captions[0])["background"]
    if e.num_frames > 1:
      clips.setdefault(background, (e.captions[0], media.decode(e)))
  assert set(clips) == {"black", "gray"}
  requests = [sampler.Request(c, len(v), *v.shape[1:3]) for c, v in clips.values()]
  right, _ = prompt_following.score_all(requests, [v for _, v in clips.values()])
  for bg in ("black", "gray"):
    assert right["by_background"][bg]["background"] == 1.0
    assert right["by_background"][bg]["n"] == 1
  # The black clip answering both prompts: only the grey prompt's figures fall.
  black = clips["black"][1]
  wrong, _ = prompt_following.score_all(requests, [black, black])
  assert wrong["by_background"]["black"]["background"] == 1.0
  assert wrong["by_background"]["gray"]["background"] == 0.0
  assert wrong["background"] == 0.5


def test_seam_ratio_is_one_on_real_motion_and_large_at_a_cut():
  cfg = render.SceneConfig(min_side=48, max_side=48, min_frames=8, max_frames=8, image_fraction=0)
  scene = render.sample_scene(np.random.default_rng(3), cfg, [("red", "circle")])
  scene = dataclasses.replace(scene, motion="moving right", velocity=(2.0, 0.0))
  clip = render.draw(scene)
  kept = np.arange(8) < 4
  smooth = editing.seam_ratio(clip, kept, loop=False)
  assert 0.7 < smooth < 1.3, smooth
  cut = clip.copy()
  cut[4:] = np.roll(clip[4:], 12, axis=2)  # The object jumps at the seam.
  assert editing.seam_ratio(cut, kept, loop=False) > 2 * smooth


def test_word_probe_compares_true_and_swapped_words(run):
  workdir, data = run
  result = word_probe.evaluate(run_lib.load(workdir), data, "background", [0.5, 1.0], batches=1)
  assert set(result) == {0.5, 1.0}
  for r in result.values():
    assert r["pairs"] > 0 and 0.0 <= r["win_rate"] <= 1.0


def test_denoising_probe_reports_estimate_and_input_per_t(run):
  workdir, data = run
  result = word_probe.denoising(run_lib.load(workdir), data, [0.05, 0.5], batches=1)
  assert set(result) == {0.05, 0.5}
  for r in result.values():
    assert np.isfinite(r["estimate_db"]) and np.isfinite(r["input_db"])
  # The input's error is t (noise - x0): ten times the t, 20 dB less.
  assert abs(result[0.05]["input_db"] - result[0.5]["input_db"] - 20.0) < 1.0, result


def test_evaluate_on_ingested_real_footage_measures_what_free_text_allows(run, tmp_path):
  """Captions outside the built-in vocabulary: nothing to read back, the rest is measured."""
  workdir, _ = run
  data = ingest_footage(tmp_path)
  out = str(tmp_path / "eval")
  r = subprocess.run(
    [
      sys.executable,
      "-m",
      "sora_jax.evaluate",
      f"--workdir={workdir}",
      f"--data_dir={data}",
      "--split=train",
      f"--output={out}",
      "--steps=2",
      "--evals=prompt_following,families",
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert r.returncode == 0, r.stderr[-3000:]
  with open(os.path.join(out, "eval_results.json")) as f:
    fam = json.load(f)["families"]
  assert fam["generated"]["alignment"]["n"] == 0  # free text: no attribute to read back
  assert fam["generated"]["visual"]["sharpness"] > 0 and fam["real"]["motion"]["n"] >= 1
  assert os.path.exists(os.path.join(out, "families.png"))
