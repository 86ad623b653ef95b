"""Sampling from a trained checkpoint: shapes, packing independence, outputs, and bad input."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from data_pipelines import media
from sora_jax.sampling import run as run_lib
from sora_jax.sampling import sampler as sampling

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def workdir(tiny_run):
  return tiny_run


def test_sampler_returns_requested_shapes(workdir):
  requests = [
    sampling.Request("a red square", 3, 16, 28, seed=0),  # ~16:9
    sampling.Request("a blue square", 3, 28, 16, seed=1),  # ~9:16
    sampling.Request("a green square", 2, 24, 24, seed=2),  # 1:1
    sampling.Request("a red square", 1, 16, 48, seed=3),  # an image
  ]
  run = run_lib.load(workdir)
  videos = run_lib.generate(run, requests, steps=2, progress=False)
  assert run.step == 4
  for req, video in zip(requests, videos, strict=True):
    assert video.shape == (req.num_frames, req.height, req.width, 3)
    assert video.dtype == np.uint8


def test_a_request_does_not_depend_on_what_shares_its_row(workdir):
  run = run_lib.load(workdir)
  alone = run_lib.generate(
    run, [sampling.Request("a red square", 2, 16, 16, seed=7)], steps=2, progress=False
  )
  packed = run_lib.generate(
    run,
    # 72 + 32 tokens: both requests share one 128-token row.
    [
      sampling.Request("a blue square", 3, 16, 24, seed=1),
      sampling.Request("a red square", 2, 16, 16, seed=7),
    ],
    steps=2,
    progress=False,
  )
  np.testing.assert_allclose(alone[0].astype(int), packed[1].astype(int), atol=1)


def test_stochastic_solver(workdir):
  """eta = 0 is Euler; with fresh noise a request still depends only on its own seed."""
  run = run_lib.load(workdir)
  red = sampling.Request("a red square", 2, 16, 16, seed=7)
  blue = sampling.Request("a blue square", 3, 16, 24, seed=1)
  gen = lambda reqs, **kw: run_lib.generate(run, reqs, steps=3, progress=False, **kw)
  euler = gen([red], method="euler")[0].astype(int)
  np.testing.assert_allclose(gen([red], method="stochastic", eta=0.0)[0], euler, atol=1)
  alone = gen([red], method="stochastic", eta=0.6)[0].astype(int)
  packed = gen([blue, red], method="stochastic", eta=0.6)[1].astype(int)
  np.testing.assert_allclose(alone, packed, atol=1)
  assert np.abs(alone - euler).max() > 8  # The fresh noise changes the result.


def test_several_requests_share_rows():
  from data_pipelines import sizing
  from data_pipelines.pipeline import Options

  class Tok:
    def ids(self, caption, max_len):
      return [5, 3]

  geom = sizing.Geometry(patch=(1, 8, 8))
  opts = Options(seq_len=64, max_examples_per_row=4, max_text_len=4, max_tokens_per_example=64)
  reqs = [sampling.Request("x", 2, 16, 16, seed=i) for i in range(6)]  # 8 tokens each
  rows = sampling.pack_requests(reqs, geom, Tok(), opts)
  assert rows["tokens"].shape[0] == 2  # 4 per row (the cap), then 2.
  assert set(np.unique(rows["request"])) == set(range(7))


def _sample_cmd(workdir, out, *args):
  return [sys.executable, "-m", "sora_jax.sample", f"--workdir={workdir}", f"--output={out}", *args]


def _run(cmd):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
  return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_sample_binary_writes_videos_images_and_a_contact_sheet(workdir, tmp_path):
  prompts = tmp_path / "prompts.txt"
  prompts.write_text(
    'a green square\n{"prompt": "a blue square", "width": 16, "height": 32, "num_frames": 1}\n'
  )
  out = tmp_path / "out"
  r = _run(
    _sample_cmd(
      workdir,
      out,
      "--prompt=a red square",
      f"--prompts_file={prompts}",
      "--width=24",
      "--height=16",
      "--num_frames=3",
      "--steps=2",
      "--num_variants=2",
      "--sampler=euler",
    )
  )
  assert r.returncode == 0, r.stderr[-3000:]
  files = sorted(os.listdir(out))
  assert files == [
    "000_a_red_square_v0.mp4",
    "000_a_red_square_v1.mp4",
    "001_a_green_square_v0.mp4",
    "001_a_green_square_v1.mp4",
    "002_a_blue_square_v0.png",
    "002_a_blue_square_v1.png",
    "contact_sheet.png",
    "logs",  # sample.log: the library logs, off the terminal.
  ]
  assert "6 sample(s) from step" in r.stdout, r.stdout
  video = media.decode_video(str(out / "000_a_red_square_v0.mp4"))
  assert video.shape == (3, 16, 24, 3)
  assert Image.open(out / "002_a_blue_square_v0.png").size == (16, 32)
  assert Image.open(out / "contact_sheet.png").size[0] > 100
  assert str(out) in r.stdout


def test_sample_expands_prompts_prints_and_saves_them(workdir, tmp_path):
  script = tmp_path / "expander.py"  # A team's own expander, over the command protocol.
  script.write_text(
    "import json, sys\n"
    "for line in sys.stdin:\n"
    "    print(json.dumps({'expanded': json.loads(line)['prompt'] + ' moving slowly'}))\n"
  )
  out = tmp_path / "out"
  args = ["--prompt=a red square", "--width=16", "--height=16", "--num_frames=3", "--steps=1"]
  r = _run(
    _sample_cmd(
      workdir, out, *args, "--expand_prompt", f"--expander=command:{sys.executable} {script}"
    )
  )
  assert r.returncode == 0, r.stderr[-3000:]
  assert "expanded: 'a red square moving slowly'" in r.stdout, r.stdout
  with open(out / "prompts.json") as f:
    (entry,) = json.load(f)
  assert entry == {
    "file": "000_a_red_square.mp4",  # named by what was asked
    "prompt": "a red square",
    "expanded": "a red square moving slowly",
  }
  r = _run(_sample_cmd(workdir, tmp_path / "o2", *args, "--expand_prompt"))
  assert (
    r.returncode != 0 and "--expand_prompt needs --expander" in r.stderr.strip().splitlines()[-1]
  )


@pytest.mark.parametrize(
  "args, message",
  [
    (["--width=18", "--height=16"], "must be multiples of 4"),
    (["--width=0"], "must be positive"),
    (["--num_frames=-2"], "must be positive"),
    (["--width=512", "--height=512", "--num_frames=8"], "config.data.seq_len"),
    (["--step=999"], "--step=999: not found"),
    (
      ["--sampler=stochastic", "--eta=1.5", "--num_frames=2", "--width=16", "--height=16"],
      "0 <= eta <= 1",
    ),
  ],
)
def test_sample_binary_rejects_bad_input_with_one_line(workdir, tmp_path, args, message):
  r = _run(_sample_cmd(workdir, tmp_path / "o", "--prompt=a red square", *args))
  assert r.returncode != 0
  assert "Traceback" not in r.stderr, r.stderr[-3000:]
  last = r.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and message in last, last


def test_sample_binary_without_checkpoint_or_prompts(tmp_path, workdir):
  empty = tmp_path / "empty"
  empty.mkdir()
  r = _run(_sample_cmd(str(empty), tmp_path / "o", "--prompt=x"))
  assert r.returncode != 0 and "no checkpoints found" in r.stderr.strip().splitlines()[-1]
  blank = tmp_path / "blank.txt"
  blank.write_text("\n\n")
  r = _run(_sample_cmd(workdir, tmp_path / "o", f"--prompts_file={blank}"))
  assert r.returncode != 0 and "holds no prompts" in r.stderr.strip().splitlines()[-1]
  assert "Traceback" not in r.stderr
