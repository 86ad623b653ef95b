"""Recaptioning: the readback captioner states what a clip shows; the command protocol
survives captioners that crash, hang or print garbage; a run is parallel and resumable and
training can pick the descriptive captions."""

import dataclasses
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import ingest_footage  # noqa: E402

from data_pipelines import (
  describe,
  media,
  pipeline,
  recaption,
  render,
  schema,
  shards,
  sizing,
  synthetic,
  tokenizer,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _scene(**kw) -> render.Scene:
  base = dict(
    color="red",
    shape="square",
    motion="moving right",
    background="black",
    height=48,
    width=64,
    num_frames=16,
    size=14.0,
    start=(10.0, 10.0),  # top left
    velocity=(2.6, 0.0),  # to (49, 10): top right; 2.6 / 64 * 8 fps = 0.33 sides/s: quick
  )
  base.update(kw)
  return render.Scene(**base)


def test_readback_states_a_known_trajectory():
  scene = _scene()
  facts = describe.read_facts(render.draw(scene), fps=8.0)
  assert (facts.color, facts.shape, facts.background) == ("red", "square", "black")
  assert (facts.start, facts.end) == ("the top left corner", "the top right corner")
  assert (facts.motion, facts.speed, facts.turn_frame) == ("moving right", "quickly", None)
  assert facts.size == "medium-sized"  # 14 / 48 = 0.29 of the shorter side: 0.27 to 0.33
  text = describe.describe(facts, "synthetic/train/000001", fps=8.0)
  assert text == describe.describe(facts, "synthetic/train/000001", fps=8.0)  # seeded
  said = describe.parse_description(text)
  assert said == {
    "color": "red",
    "shape": "square",
    "background": "black",
    "motion": "moving right",
    "speed": "quickly",
    "start": "the top left corner",
    "end": "the top right corner",
  }, text
  # Slow, downward, from the centre to the bottom edge, on gray.
  slow = _scene(background="gray", start=(32.0, 22.0), velocity=(0.0, 0.8), motion="moving down")
  facts = describe.read_facts(render.draw(slow), fps=8.0)
  assert (facts.motion, facts.speed, facts.start, facts.end) == (
    "moving down",
    "slowly",
    "the centre",
    "the bottom edge",
  )
  # A turn at frame 8: right, then up; the sentence says when.
  turning = _scene(start=(10.0, 38.0), event=(8, "moving up", (0.0, -3.0)))
  facts = describe.read_facts(render.draw(turning), fps=8.0)
  assert (facts.motion, facts.turn_motion) == ("moving right", "moving up")
  assert abs(facts.turn_frame - 8) <= 1
  text = describe.describe(facts, "x", fps=8.0)
  assert "upward" in text and ("second" in text or "frame" in text), text
  # Standing still and an image.
  still = describe.read_facts(render.draw(_scene(velocity=(0.0, 0.0))), fps=8.0)
  assert still.motion == "standing still" and still.speed is None
  image = describe.read_facts(render.draw(_scene(num_frames=1, motion=None)), fps=0.0)
  assert image.kind == "image" and image.motion is None
  assert "second" not in describe.describe(image, "y")


def _examples(n: int) -> list[schema.Example]:
  colors = ("red", "green", "blue", "yellow")
  out = []
  for i in range(n):
    scene = _scene(color=colors[i % len(colors)], num_frames=4, height=16, width=16, size=6.0)
    data, fmt = media.encode_raw(render.draw(scene))
    out.append(
      schema.Example(data, fmt, 8.0, 4, 16, 16, (scene.caption,), f"clip/{i}", attributes={})
    )
  return out


CAPTIONER = r"""
import json, os, sys, time
for line in sys.stdin:
    r = json.loads(line)
    assert os.path.exists(r["path"]) and r["kind"] == "video"
    color = r["captions"][0].split()[1]
    if color == "red":      # crashes on this clip
        sys.exit(3)
    if color == "green":    # hangs on this clip
        time.sleep(60)
    if color == "blue":     # garbage, then an error
        print("loading weights... done", flush=True)
        print(json.dumps({"id": r["id"], "error": "cannot see blue"}), flush=True)
        continue
    print(json.dumps({"id": r["id"], "caption": "described: " + r["captions"][0]}), flush=True)
"""


def test_command_protocol_survives_crash_hang_and_garbage(tmp_path):
  script = tmp_path / "captioner.py"
  script.write_text(CAPTIONER)
  examples = _examples(8)  # red, green, blue, yellow, twice
  captioner = recaption.Command(f"{sys.executable} {script}", timeout=2.0, retries=1, batch_size=4)
  start = time.monotonic()
  try:
    out = captioner(examples)
  finally:
    captioner.close()
  for ex, got in zip(examples, out, strict=True):
    color = ex.captions[0].split()[1]
    if color == "yellow":
      assert got == "described: " + ex.captions[0]
    else:
      assert isinstance(got, recaption.CaptionError), (color, got)
  reasons = [str(g) for g in out[:3]]
  assert "no answer" in reasons[0] and "no answer" in reasons[1] and "cannot see blue" in reasons[2]
  assert captioner.num_garbage >= 2 and "loading weights" in captioner.garbage[0]
  assert captioner.restarts >= 4  # restarted after each crash and hang
  # Each hang costs its timeout, twice (the batch, then the clip alone), not the whole run.
  assert time.monotonic() - start < 40
  assert not os.path.exists(captioner.tmp)  # temporary media removed


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  data = str(tmp_path_factory.mktemp("short"))
  opts = synthetic.Options(
    output_dir=data,
    num_examples=24,
    num_eval=8,
    max_side=32,
    min_frames=8,
    max_frames=10,
    num_workers=1,
    examples_per_shard=8,
  )
  synthetic.generate(opts, show_progress=False)
  tokenizer.train(data, vocab_size=64)
  return data


def test_recaption_runs_in_parallel_resumes_and_feeds_training(dataset, tmp_path):
  out = str(tmp_path / "long")
  cmd = [
    sys.executable,
    "-m",
    "data_pipelines.recaption",
    f"--data_dir={dataset}",
    f"--output_dir={out}",
    "--num_workers=2",
  ]
  r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "captioned 32 of 32 clips" in r.stdout, r.stdout
  with open(os.path.join(out, recaption.REPORT)) as f:
    report = json.load(f)
  assert report["captioned"] == 32 and report["failed"] == 0 and report["words"]["mean"] > 15
  # Every record keeps its short captions and gains a descriptive one that agrees with them.
  n = 0
  for path in shards.split_files(out, "train") + shards.split_files(out, "eval"):
    for ex in shards.read_shard(path):
      (long,) = ex.descriptive_captions
      a, said = ex.attributes, describe.parse_description(long)
      assert ex.captions[0].startswith("a ") and said["color"] == a["color"], long
      n += 1
  assert n == 32
  tok = tokenizer.load(out)
  assert tokenizer.UNK_ID not in tok.ids(long, 1000)  # the tokenizer knows the new words
  # Resume: a lost shard is redone alone; the finished ones are not touched.
  names = sorted(p for p in os.listdir(out) if p.endswith(".array_record"))
  kept = os.path.join(out, names[1])
  mtime = os.path.getmtime(kept)
  os.remove(os.path.join(out, names[0]))
  r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert r.returncode == 0 and "captioned 32 of 32" in r.stdout, r.stderr[-2000:]
  assert os.path.exists(os.path.join(out, names[0])) and os.path.getmtime(kept) == mtime
  # Training picks descriptive captions by the configured mix.
  geom = sizing.Geometry()
  opts = pipeline.Options(
    seq_len=256, max_tokens_per_example=64, max_text_len=96, caption_dropout=0.0
  )
  (ex,) = [e for _, e in zip(range(1), shards.read_shard(shards.split_files(out, "train")[0]))]
  for mix, want in ((0.0, ex.captions[0]), (1.0, ex.descriptive_captions[0])):
    tx = pipeline.Tokenize(dataclasses.replace(opts, descriptive_captions=mix), geom, tok)
    assert tx.caption(ex, np.random.default_rng(0)) == want
  # Bad input: one line.
  bad = subprocess.run(
    cmd[:3] + [f"--data_dir={dataset}", f"--output_dir={dataset}"],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert bad.returncode != 0 and bad.stderr.strip().splitlines()[-1].startswith(
    "error: --output_dir"
  )


@pytest.fixture(scope="module")
def recaptioned(dataset, tmp_path_factory):
  out = str(tmp_path_factory.mktemp("long"))
  recaption.run(recaption.Config(data_dir=dataset, output_dir=out, num_workers=0))
  return out


def test_the_expander_trains_lowers_its_loss_and_expands_prompts(recaptioned, tmp_path):
  from experiments import expander as expander_config
  from sora_jax.sampling import expand, sampler
  from sora_jax.training import expander as expander_training

  cfg = expander_config.get_config()
  cfg.data.update(data_dir=recaptioned, max_len=80)
  cfg.model.update(width=64, depth=2, heads=2)
  cfg.train.update(num_steps=120, batch_size=16, log_every=40, eval_every=120)
  cfg.optim.update(warmup_steps=10)
  workdir = str(tmp_path / "expander")
  result = expander_training.train(cfg, workdir)
  # Held-out pairs: far below the start (about log(vocab) per token).
  assert result["eval_loss"] < 0.6 * result["eval_loss_at_start"], result
  learned = expand.load(workdir)
  prompts = [
    "a green square moving left on a gray background",
    "a red circle on a black background",
  ]
  once, again = learned(prompts, seed=3), learned(prompts[:1], seed=3)
  assert once[0] == again[0]  # Prompt i draws from seed + i, whatever the batch.
  assert all(len(e.split()) > len(p.split()) for p, e in zip(prompts, once, strict=True)), once
  greedy = expand.Learned(workdir, temperature=0.0)
  assert greedy(prompts[:1]) == greedy(prompts[:1])
  # Requests keep their sizes and seeds; storyboard windows are expanded too.
  reqs = [
    sampler.Request(prompts[0], 8, 16, 16, seed=5, prompts=((prompts[0], 0, 4), (prompts[1], 4, 8)))
  ]
  (req,), (said,) = expand.expand_requests(learned, reqs, seed=3)
  assert (req.num_frames, req.seed) == (8, 5) and req.prompt == said["expanded"] == once[0]
  assert req.prompts[1][0] == said["windows"][1]["expanded"] != prompts[1]
  # A team's own expander over the command protocol; a broken one fails with one line.
  script = tmp_path / "mine.py"
  script.write_text(
    "import json, sys\n"
    "print('warming up')\n"
    "for line in sys.stdin:\n"
    "    r = json.loads(line)\n"
    "    print(json.dumps({'expanded': r['prompt'] + ' in detail, seed ' + str(r['seed'])}))\n"
  )
  mine = expand.load(f"command:{sys.executable} {script}")
  assert mine(prompts, seed=7) == [
    prompts[0] + " in detail, seed 7",
    prompts[1] + " in detail, seed 8",
  ]
  with pytest.raises(expand.ExpandError, match="exited with status"):
    expand.load(f"command:{sys.executable} -c 'import sys; sys.exit(4)'")(prompts)
  with pytest.raises(expand.ExpandError, match="not a trained expander"):
    expand.load(str(tmp_path))


def test_ingested_real_footage_is_recaptioned_by_a_command_captioner(tmp_path):
  data = ingest_footage(tmp_path, "a man on a car phone")
  script = tmp_path / "vlm.py"  # Stands in for a vision-language model: reads the clip.
  script.write_text(
    "import json, sys\n"
    "from data_pipelines import media\n"
    "for line in sys.stdin:\n"
    "    r = json.loads(line)\n"
    "    n = len(media.decode_video(r['path']))\n"
    "    print(json.dumps({'id': r['id'], 'caption': f\"{r['captions'][0]}, {n} frames\"}))\n"
  )
  out = str(tmp_path / "long")
  report = recaption.run(
    recaption.Config(
      data_dir=data,
      output_dir=out,
      captioner="command",
      command=f"{sys.executable} {script}",
      num_workers=0,
      timeout=60,
    )
  )
  assert report["captioned"] == report["num_records"] >= 1, report
  ex = next(shards.read_shard(shards.split_files(out, "train")[0]))
  assert ex.descriptive_captions == (f"a man on a car phone, {ex.num_frames} frames",)
