"""Editing: keep values in training and sampling (one mechanism), plans for each mode, the
pixel<->latent frame map, bad requests, and a tiny model that learns to use given frames."""

import dataclasses
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from data_pipelines import media, readback, schema, shards, sizing, synthetic, tokenizer
from experiments import dit_tiny
from sora_jax import train
from sora_jax.diffusion import conditioning as cond
from sora_jax.diffusion import flow, latent
from sora_jax.sampling import plans
from sora_jax.sampling import run as run_lib
from sora_jax.sampling import sampler as sampling
from sora_jax.training import heldout, input_pipeline

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _packed(examples, length=16):
  """One row of segments given as (token frames, tokens per frame), time coordinates set."""
  coords, seg = [], []
  for s, (frames, per_frame) in enumerate(examples, 1):
    for f in range(frames):
      for k in range(per_frame):
        coords.append((f, 0, k))
        seg.append(s)
  pad = length - len(seg)
  return jnp.asarray([coords + [(0, 0, 0)] * pad]), jnp.asarray([seg + [0] * pad])


def _only(task):
  w = [0.0] * len(cond.TASKS)
  w[cond.TASKS.index(task)] = 1.0
  return cond.ConditioningConfig(tuple(w))


def test_training_tasks_give_the_frames_they_name():
  # A 4-frame clip (2 tokens per frame), an image (3 tokens), a 2-frame clip (1 token each).
  coords, seg = _packed([(4, 2), (1, 3), (2, 1)])
  k = 4
  np.testing.assert_array_equal(cond.frames_per_segment(coords, seg, k)[0], [1, 4, 1, 2])
  expect = {
    "text": [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    "first": [1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0],
    "last": [0, 0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 1],
    # Both frames of the 2-frame clip would be given: it falls back to text.
    "ends": [1, 1, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0],
  }
  for task, want in expect.items():
    keep, tasks = cond.sample_keep(jax.random.key(0), coords, seg, k, _only(task))
    np.testing.assert_array_equal(np.asarray(keep[0, :13]), want, err_msg=task)
    assert not np.asarray(keep[0, 13:]).any()  # padding
    assert int(tasks[0, 2]) == 0  # the image is never given: plain text
  for seed in range(5):  # prefix/suffix: 1..n-1 whole frames from the start / end.
    for task in ("prefix", "suffix"):
      keep, _ = cond.sample_keep(jax.random.key(seed), coords, seg, k, _only(task))
      frames = np.asarray(keep[0, 0:8:2])
      assert np.array_equal(frames, np.asarray(keep[0, 1:8:2]))  # constant within a frame
      m = int(frames.sum())
      assert 1 <= m <= 3
      want = np.arange(4) < m if task == "prefix" else np.arange(4) >= 4 - m
      np.testing.assert_array_equal(frames, want)
  keep, _ = cond.sample_keep(jax.random.key(3), coords, seg, k, _only("forcing"))
  frames = np.asarray(keep[0, 0:8:2])
  assert np.all((frames > 0) & (frames < 1)) and len(set(frames.tolist())) == 4


def test_token_times_are_one_rule_for_training_and_sampling():
  t = jnp.asarray([[0.9, 0.9, 0.9, 0.2]])
  keep = jnp.asarray([[0.0, 1.0, 0.3, 0.3]])
  np.testing.assert_allclose(cond.token_times(t, keep), [[0.9, 0.0, 0.7, 0.2]])
  np.testing.assert_allclose(cond.token_times(t, keep, 0.04), [[0.9, 0.04, 0.7, 0.2]])
  # The loss covers what is not given.
  seg = jnp.asarray([[1, 1, 1, 0]])
  np.testing.assert_array_equal(cond.loss_weights(keep, seg), [[1, 0, 1, 0]])


def test_a_loss_restricted_to_free_tokens_averages_only_them():
  values = jnp.asarray([[1.0, 5.0, 3.0, 7.0]])
  seg = jnp.asarray([[1, 1, 2, 2]])
  weights = jnp.asarray([[1.0, 0.0, 1.0, 1.0]])
  mean, n = flow.segment_mean(values, seg, 3, weights)
  assert float(mean) == pytest.approx((1.0 + 5.0) / 2) and int(n) == 2


def test_pixel_and_latent_frame_maps():
  causal = sizing.Geometry(patch=(1, 4, 4), compression=(4, 8, 8), channels=4)
  assert [causal.latent_frame(f) for f in range(10)] == [0, 1, 1, 1, 1, 2, 2, 2, 2, 3]
  assert [causal.token_frame(f) for f in range(10)] == [0, 1, 1, 1, 1, 2, 2, 2, 2, 3]
  pairs = sizing.Geometry(patch=(2, 4, 4), compression=(4, 8, 8), channels=4)
  assert [pairs.token_frame(f) for f in range(10)] == [0, 0, 0, 0, 0, 1, 1, 1, 1, 1]
  assert plans.token_frame_span(pairs, 1, 13) == range(5, 13)
  pixels = sizing.Geometry(patch=(4, 8, 8))
  assert [pixels.token_frame(f) for f in range(9)] == [0, 0, 0, 0, 1, 1, 1, 1, 2]
  assert plans.token_frame_span(pixels, 1, 8) == range(4, 8)
  # Extension keeps whole token frames of the clip: 7 frames -> the last 4 at pt = 4.
  clip = np.zeros((7, 8, 8, 3), np.uint8)
  ctx, total, note = plans.extend(clip, "forward", 4, pixels)
  assert len(ctx[0].frames) == 4 and total == 8 and "3 frame" in note
  ctx, total, note = plans.extend(clip, "backward", 2, pixels)
  assert ctx[0].start == 4 and total == 11 and "2 more" in note
  ctx, total, _ = plans.extend(np.zeros((5, 8, 8, 3), np.uint8), "forward", 4, causal)
  assert total == 9 and len(ctx[0].frames) == 5  # 1 + 4: whole latent frames already.
  # Latent space also needs 1 + 4k output frames: forward generates more, backward starts
  # the clip on a latent frame (frame 5: 4 new + 1) and ends it on one (4 of its 5 frames).
  ctx, total, note = plans.extend(np.zeros((5, 8, 8, 3), np.uint8), "forward", 3, causal)
  assert total == 9 and "1 more frame(s) generated" in note
  ctx, total, note = plans.extend(np.zeros((5, 8, 8, 3), np.uint8), "backward", 4, causal)
  assert (ctx[0].start, len(ctx[0].frames), total) == (5, 4, 9)
  assert "1 more frame(s) generated" in note and "last 1 frame(s) were dropped" in note


def test_plans_place_given_frames_as_token_keep_values(tmp_path):
  geom = sizing.Geometry(patch=(1, 4, 4))
  stage = latent.PixelStage()
  clip = np.random.default_rng(0).integers(0, 255, (3, 8, 8, 3), np.uint8)
  ctx, total, _ = plans.extend(clip, "forward", 2, geom, loop=True)
  req = sampling.Request("x", total, 8, 8, context=ctx)
  keep, given = plans.token_context(req, geom, stage)
  assert keep.shape == (5 * 4,) and given.shape == (20, 48)
  np.testing.assert_array_equal(keep.reshape(5, 4)[:, 0], [1, 1, 1, 0, 1])  # loop: last = first
  back = given.reshape(5, 2, 2, 4, 4, 3).transpose(0, 1, 3, 2, 4, 5).reshape(5, 8, 8, 3)
  np.testing.assert_array_equal(latent.to_uint8(back[:3]), clip)
  np.testing.assert_array_equal(latent.to_uint8(back[4]), clip[0])
  # A keep curve over output time, as the smallest value within each token frame.
  curve = plans.parse_curve("0:1,0.5:0.5,1:0")
  keep, _ = plans.token_context(
    sampling.Request("x", 3, 8, 8, context=plans.remix(clip, 3, 0.5, curve)), geom, stage
  )
  np.testing.assert_allclose(keep.reshape(3, 4)[:, 0], [1.0, 0.5, 0.0])
  # Re-cut: the clip retimed to a new length, as a starting point.
  (g,) = plans.recut(clip, 5, 0.4, None)
  assert len(g.frames) == 5 and g.keep == 0.4
  np.testing.assert_array_equal(g.frames[[0, 2, 4]], clip)
  # Each bad request is one line naming its field.
  bad = [
    (lambda: plans.parse_curve("0:1,x"), "--keep_curve"),
    (lambda: plans.parse_curve("0:1,0:0"), "times must increase"),
    (lambda: plans.check_keep(1.5, "--keep"), "--keep=1.5"),
    (lambda: plans.read_image(str(tmp_path / "none.png")), "no such file"),
    (lambda: plans.split_frame("a.png@x", "--image"), "frame number"),
    (lambda: plans.remix(clip, 5, 0.5, None), "--num_frames=5"),
    (lambda: plans.extend(clip, "sideways", 2, geom), "--extend='sideways'"),
    (
      lambda: plans.token_context(
        sampling.Request("x", 3, 8, 8, context=plans.animate(clip[:1], 3, False, 3)), geom, stage
      ),
      "frame 3 is outside",
    ),
  ]
  (tmp_path / "broken.png").write_bytes(b"not a png")
  bad.append((lambda: plans.read_image(str(tmp_path / "broken.png")), "cannot decode"))
  for fn, match in bad:
    with pytest.raises(plans.RequestError, match=match):
      fn()


def test_kept_frames_come_back_exactly_and_keep_zero_is_text_to_video(tiny_run):
  run = run_lib.load(tiny_run)
  clip = np.random.default_rng(1).integers(0, 255, (2, 8, 12, 3), np.uint8)
  ctx, total, _ = plans.extend(clip, "forward", 2, run.geom)
  requests = [
    sampling.Request("a red square", total, 8, 12, seed=3, context=ctx),
    sampling.Request("a blue square", 3, 8, 8, seed=5),
    # Given frames at keep 0 are ignored: the same as the plain request above.
    sampling.Request("a blue square", 3, 8, 8, seed=5, context=plans.remix(clip, 2, 0.0, None)),
  ]
  extended, plain, ignored = run_lib.generate(run, requests, steps=3, progress=False)
  np.testing.assert_array_equal(extended[:2], clip)
  assert extended.shape == (4, 8, 12, 3)
  np.testing.assert_array_equal(plain, ignored)
  # The sampler's noise levels are conditioning.token_times of the shifted schedule.
  rows = sampling.pack_requests(requests, run.geom, run.tokenizer, run.opts, run.stage)
  s = sampling.Sampler(run.model, None, run.flow_cfg, run.opts.num_segments)
  rows_j = {k: jnp.asarray(rows[k]) for k in ("segment_ids", "keep")}
  seg = rows_j["segment_ids"]
  shift = flow.per_token(
    flow.shift_for(flow.segment_counts(seg, run.opts.num_segments), run.flow_cfg), seg
  )
  want = cond.token_times(flow.shifted(jnp.full(seg.shape, 0.7), shift), rows_j["keep"])
  np.testing.assert_array_equal(s._times(rows_j, 0.7), want)
  # An x0-predicting network (the demo's) stays finite with kept tokens at t = 0: a NaN
  # there would spread through attention to every token of the row.
  data_cfg = dataclasses.replace(run.flow_cfg, prediction="data")
  s = sampling.Sampler(run.model, run.params, data_cfg, run.opts.num_segments)
  with jax.set_mesh(run.mesh):
    out = s(rows, steps=2, cfg_scale=2.0, method="heun", progress=False)
  assert np.isfinite(out).all()
  kept = rows["keep"] >= 1
  np.testing.assert_array_equal(out[kept], rows["given"][kept])


def test_sample_animates_an_image_and_refuses_a_bad_one_in_one_line(tiny_run, tmp_path):
  image = str(tmp_path / "still.png")
  Image.fromarray(np.full((8, 8, 3), (250, 10, 10), np.uint8)).save(image)
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
  base = [sys.executable, "-m", "sora_jax.sample", f"--workdir={tiny_run}", "--prompt=a red"]
  base += ["--width=8", "--height=8", "--num_frames=3", "--steps=2"]
  out = str(tmp_path / "out")
  ok = subprocess.run(
    [*base, f"--image={image}", f"--output={out}"],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert ok.returncode == 0, ok.stderr[-2000:]
  video = media.decode_video(os.path.join(out, "000_a_red.mp4"))
  assert video.shape == (3, 8, 8, 3)
  assert np.abs(video[0].astype(int) - [250, 10, 10]).mean() < 12  # mp4 (yuv420) round trip
  bad = subprocess.run(
    [*base, f"--image={image}@7", f"--output={out}"],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert bad.returncode != 0
  lines = [ln for ln in bad.stderr.strip().splitlines() if ln.strip()]
  assert lines == ["error: --image: frame 7 is outside the output's frames 0..2"], bad.stderr


# ------------------------------------------------------------------------------
# A tiny model trained with conditioning uses the frames it is given.
# ------------------------------------------------------------------------------


def _solid_clips(data_dir, num=64, seed=0):
  """4-frame clips of one random colour each, all captioned alike: only given frames tell
  the colour."""
  rng = np.random.default_rng(seed)
  examples = []
  for i in range(num):
    frames = np.broadcast_to(rng.integers(0, 256, 3).astype(np.uint8), (4, 16, 16, 3)).copy()
    data, fmt = media.encode_raw(frames)
    examples.append(
      schema.Example(
        media=data,
        media_format=fmt,
        fps=8.0,
        num_frames=4,
        height=16,
        width=16,
        captions=("a clip",),
        source_id=f"solid/{i:04d}",
        attributes={},
      )
    )
  os.makedirs(data_dir, exist_ok=True)
  path = os.path.join(data_dir, shards.shard_name("train", 0, 1))
  with shards.shard_writer(path) as w:
    for e in examples:
      w.add(e)
  entry = shards.split_entry([path], shards.SizeStats.of(examples))
  shards.write_manifest(data_dir, {"name": "solid", "tokenizer": None, "splits": {"train": entry}})
  tokenizer.train(data_dir, vocab_size=40)
  return data_dir


def test_a_model_trained_with_conditioning_uses_given_frames(tmp_path):
  cfg = dit_tiny.get_config()
  cfg.data.data_dir = _solid_clips(str(tmp_path / "data"))
  # Half the examples conditioned (the shipped MIXTURE conditions a quarter): 100 steps
  # see enough given-frame tasks to learn them.
  cfg.flow.conditioning.update(
    text=0.5, first=0.15, last=0.05, ends=0.05, prefix=0.1, suffix=0.05, random=0.05, forcing=0.05
  )
  cfg.train.update(num_steps=100, log_every=50, checkpoint_every=100)
  workdir = str(tmp_path / "run")
  last = train.train(cfg, workdir)
  assert 0 < last["conditioned_examples"] < last["examples"]

  run = run_lib.load(workdir)
  cfg = run.cfg
  cfg.heldout.update(rows=8, split="train")
  rows = heldout.heldout_rows(cfg, run.tokenizer, run.stage)
  batch = {k: jnp.asarray(v) for k, v in rows.items()}
  seg, k = batch["segment_ids"], run.opts.num_segments
  keep, _ = cond.sample_keep(jax.random.key(1), batch["coords"], seg, k, _only("prefix"))
  free = cond.loss_weights(keep, seg)
  net = run.model.merge(run.params)
  t = jnp.full(seg.shape, 0.9)
  noise = jax.random.normal(jax.random.key(2), batch["tokens"].shape)
  with_frames = flow.context_loss(net, batch, keep, t, noise, run.flow_cfg, k)
  without = flow.context_loss(net, batch, jnp.zeros_like(keep), t, noise, run.flow_cfg, k, free)
  # The same free tokens at the same noise: the given first frames make them predictable.
  assert float(with_frames) < 0.85 * float(without), (with_frames, without)


def test_guidance_over_given_frames_batched_equals_one_pass_at_a_time(tiny_run):
  run = run_lib.load(tiny_run)
  clip = np.random.default_rng(2).integers(0, 255, (2, 8, 8, 3), np.uint8)
  ctx, total, _ = plans.extend(clip, "forward", 2, run.geom)
  requests = [
    sampling.Request("a red square", total, 8, 8, seed=1, context=ctx),
    sampling.Request("a blue square", 2, 8, 8, seed=2),
  ]
  rows = sampling.pack_requests(requests, run.geom, run.tokenizer, run.opts, run.stage)
  out = {}
  for batched in (True, False):
    s = sampling.Sampler(
      run.model, run.params, run.flow_cfg, run.opts.num_segments, batch_guidance=batched
    )
    for g in (1.0, 3.0):
      with jax.set_mesh(run.mesh):
        out[batched, g] = s(
          rows, steps=2, cfg_scale=2.0, method="euler", frames_scale=g, progress=False
        )
  np.testing.assert_allclose(out[True, 3.0], out[False, 3.0], atol=1e-4)
  free = rows["keep"] < 1
  assert np.abs(out[True, 3.0] - out[True, 1.0])[free].max() > 1e-3  # It changes the result.
  np.testing.assert_array_equal(out[True, 3.0][~free], rows["given"][~free])


def test_a_blend_gives_a_then_b_and_frees_the_crossing():
  geom = sizing.Geometry(patch=(1, 4, 4))
  a = np.full((6, 8, 8, 3), 200, np.uint8)
  b = np.full((6, 8, 8, 3), 20, np.uint8)
  curve = plans.parse_curve("0:0,0.4:0,0.6:1,1:1")
  req = sampling.Request("x", 6, 8, 8, context=plans.blend(a, b, 6, curve, strength=0.8))
  canvas, _, _, _ = plans.given_frames(req, geom)
  keep = plans.frame_keep(req, geom)
  # Output times 0, .2, .4, .6, .8, 1 -> w = 0, 0, 0, 1, 1, 1.
  np.testing.assert_allclose(keep, [0.8, 0.8, 0.8, 0.8, 0.8, 0.8])
  np.testing.assert_array_equal(canvas[:3], a[:3])
  np.testing.assert_array_equal(canvas[3:], b[3:])
  smooth = plans.parse_curve("0:0,1:1")  # w = 0, .2, .4, .6, .8, 1: free in the middle.
  req = sampling.Request("x", 6, 8, 8, context=plans.blend(a, b, 6, smooth))
  np.testing.assert_allclose(plans.frame_keep(req, geom), [1, 0.6, 0.2, 0.2, 0.6, 1], atol=1e-6)
  with pytest.raises(plans.RequestError, match="--blend B: the clip has 5 frames"):
    plans.blend(a, b[:5], 6, smooth)


def test_caption_windows_map_to_token_frames_and_uncovered_frames_see_the_first():
  pixels = sizing.Geometry(patch=(4, 8, 8))  # token frames of 4 frames
  req = sampling.Request("a", 16, 8, 8, prompts=(("a", 4, 8), ("b", 8, 12)))
  assert plans.caption_windows(req, pixels) == [("a", 0, 2), ("b", 2, 3), ("a", 3, 4)]
  # A window that does not start a token frame covers the token frames starting inside it.
  req = sampling.Request("a", 16, 8, 8, prompts=(("a", 0, 6), ("b", 6, 16)))
  assert plans.caption_windows(req, pixels) == [("a", 0, 2), ("b", 2, 4)]
  one = sampling.Request("a", 16, 8, 8, prompts=(("a", 4, 8),))
  assert plans.caption_windows(one, pixels) is None  # One prompt sees every frame.


def test_storyboards_pack_windows_and_one_window_equals_the_plain_prompt(tiny_run, tmp_path):
  run = run_lib.load(tiny_run)
  plain = sampling.Request("a red square", 4, 8, 8, seed=4)
  one = dataclasses.replace(plain, prompts=(("a red square", 0, 2),))
  two = dataclasses.replace(plain, prompts=(("a red square", 0, 2), ("a blue square", 2, 4)))
  rows = sampling.pack_requests([two, plain], run.geom, run.tokenizer, run.opts, run.stage)
  tf, tseg = rows["text_frames"], rows["text_segment_ids"]
  seg_two = rows["segment_ids"][rows["request"] == 1][0]
  windows = {tuple(w) for w in tf[tseg == seg_two]}
  assert windows == {(0, 2), (2, 4)}
  assert {tuple(w) for w in tf[(tseg > 0) & (tseg != seg_two)]} == {(0, sampling.ALL_FRAMES)}
  a, b, c = run_lib.generate(run, [plain, one, two], steps=2, progress=False)
  np.testing.assert_array_equal(a, b)
  assert c.shape == a.shape
  # Bad storyboards: one line naming the field.
  image = tmp_path / "still.png"
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
  good = {"width": 8, "height": 8, "num_frames": 4, "prompts": [{"text": "a", "start": 0}]}
  cases = [
    ({**good, "prompts": []}, "'prompts' must be a non-empty list"),
    ({**good, "prompts": [{"text": "a", "start": 2, "end": 9}]}, r"prompts\[0\]: window \[2, 9\)"),
    ({**good, "prompts": [{"start": 0}]}, r"prompts\[0\]: missing 'text'"),
    ({**good, "media": [{"path": "none.png"}]}, r"media\[0\].path=.*no such file"),
    ({**good, "media": [{"path": "still.png", "keep": 2}]}, r"media\[0\].keep=2.0"),
    ({**good, "media": [{"path": "still.png", "start": 4}]}, r"media\[0\].start=4"),
    ({**good, "width": 9}, "multiples of"),
    ({**good, "colour": 1}, "unknown field 'colour'"),
    ({**good, "loop": True, "media": [{"path": "still.png", "start": 1}]}, "needs one at frame 0"),
  ]
  for i, (board, match) in enumerate(cases):
    path = tmp_path / f"board{i}.json"
    path.write_text(json.dumps(board))
    with pytest.raises(plans.RequestError, match=match):
      plans.read_storyboard(str(path), run.geom)
  (tmp_path / "broken.json").write_text("{")
  with pytest.raises(plans.RequestError, match="not JSON"):
    plans.read_storyboard(str(tmp_path / "broken.json"), run.geom)


def test_event_clips_carry_time_stamped_captions_that_training_windows(tmp_path):
  data = str(tmp_path / "events")
  opts = synthetic.Options(
    output_dir=data,
    num_examples=24,
    num_eval=0,
    min_frames=8,
    max_frames=12,
    max_side=32,
    image_fraction=0.0,
    event_fraction=1.0,
    num_workers=1,
    examples_per_shard=24,
  )
  synthetic.generate(opts, show_progress=False)
  tokenizer.train(data, vocab_size=64)
  examples = [e for p in shards.split_files(data, "train") for e in shards.read_shard(p)]
  events = [e for e in examples if e.caption_windows]
  assert len(events) >= 12  # every moving clip (still ones cannot change direction)
  hits = []
  for e in events:  # Each window's caption is what its frames show (read back).
    (first, _, k), (second, k2, end) = e.caption_windows[0]
    assert k == k2 == int(e.attributes["event_frame"]) and end == e.num_frames
    video = media.decode(e)
    hits.append(readback.score(video[:k], first)["motion"])
    hits.append(readback.score(video[k:], second)["motion"])
  assert np.mean(hits) >= 0.8, np.mean(hits)  # A few short, slow parts read as still.

  cfg = dit_tiny.get_config()
  cfg.data.update(
    data_dir=data, caption_windows=True, max_frames=8, max_text_len=16, caption_dropout=0.0
  )
  cfg.flow.conditioning.update(cond.MIXTURE)
  cfg.train.update(num_steps=2, checkpoint_every=2)
  tok = input_pipeline.load_tokenizer(cfg)
  batch = next(iter(input_pipeline.make_dataset(cfg, tok, latent.PixelStage())))
  tf, tseg = batch["text_frames"], batch["text_segment_ids"]
  windowed = tf[(tseg > 0) & (tf[..., 1] < sizing.ALL_FRAMES)]
  assert len(windowed) and (windowed[:, 0] < windowed[:, 1]).all()
  last = train.train(cfg, str(tmp_path / "run"))
  assert np.isfinite(last["loss"])
