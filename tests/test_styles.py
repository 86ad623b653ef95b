"""Styles of the synthetic dataset (--style): drawing, captions, and reading them back from pixels."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from data_pipelines import media, readback, render, shards, synthetic, tokenizer, vocab

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STYLES = ("outlined", "striped")
COMBOS = synthetic.split_combos(synthetic.parse_heldout(synthetic.DEFAULT_HELDOUT))
# Frames of 24 to 64 pixels, like the demo's: objects of 5 to 26 pixels.
SMALL = render.SceneConfig(min_side=24, max_side=64)
NUM = 40  # Examples per style.


def _example(style: str, i: int, config: render.SceneConfig = SMALL, **kw):
  split = "eval" if i % 5 == 4 else "train"
  config = dataclasses.replace(config, style=style)
  return synthetic.make_example(0, split, i, config, COMBOS[split], 8.0, **kw)


def _noisy(frames: np.ndarray, seed: int, sigma: float = 8.0) -> np.ndarray:
  noise = np.random.default_rng(seed).normal(0.0, sigma, frames.shape)
  return np.clip(np.rint(frames + noise), 0, 255).astype(np.uint8)


# Digest of the first 12 examples of each split (seed 7, paraphrases on): pixels,
# captions, attributes, fps and id, computed before styles existed.
DEFAULT_DIGEST = "b7e8cf2416bf4f0cafe7d8e2c9488dcf92cf2ab1a942bc81f87a423a0846ed5d"


def test_default_data_is_unchanged():
  config = render.SceneConfig()
  assert config.style == "" and synthetic.Options(output_dir="x").style == ""
  h = hashlib.sha256()
  for split in ("train", "eval"):
    for i in range(12):
      e = synthetic.make_example(7, split, i, config, COMBOS[split], 8.0, paraphrases=True)
      h.update(np.ascontiguousarray(media.decode(e)).tobytes())
      h.update(json.dumps([e.captions, e.attributes, e.fps, e.source_id], sort_keys=True).encode())
      assert "style" not in e.attributes
      assert all(vocab.caption_style(c) is None for c in e.captions)
      assert readback.parse_caption(e.captions[0])["style"] is None
  assert h.hexdigest() == DEFAULT_DIGEST


@pytest.mark.parametrize("style", STYLES)
def test_a_styled_example_is_the_plain_one_restyled(style):
  phrase = render.STYLES[style]
  for i in range(10):
    plain, styled = _example("", i, paraphrases=True), _example(style, i, paraphrases=True)
    assert styled.captions == tuple(f"{c} {phrase}" for c in plain.captions)
    assert all(vocab.caption_style(c) == style for c in styled.captions)
    extra = {"outlined": "outline_width", "striped": "stripe_band"}[style]
    assert set(styled.attributes) == set(plain.attributes) | {"style", extra}
    assert styled.attributes["style"] == style
    assert {k: styled.attributes[k] for k in plain.attributes} == plain.attributes
    a, b = media.decode(plain), media.decode(styled)
    bg = np.asarray(vocab.BACKGROUND_RGB[plain.attributes["background"]])
    fg = np.asarray(vocab.COLOR_RGB[plain.attributes["color"]])
    if style == "outlined":  # Only the object changes: its inside becomes background.
      outside = (a == bg).all(-1)
      assert (b[outside] == a[outside]).all() and (b != a).any()
    else:  # The object is untouched; some background rows take the second shade.
      inside = (a == fg).all(-1)
      assert np.abs(b[inside].astype(int) - fg).max() <= 1  # Rounding where coverage is ~1.
      tint = (b == render.STRIPE_RGB[plain.attributes["background"]]).all(-1)
      assert 0.25 < tint.mean() < 0.6, tint.mean()


def test_outline_and_stripe_sizes():
  # 16% of the side, at least 2 px, at most half the inradius (a triangle's is 0.309 of its side).
  assert render.outline_width("circle", 50.0) == render.outline_width("square", 50.0) == 8.0
  assert render.outline_width("square", 10.0) == 2.0 and render.outline_width("circle", 6.0) == 1.5
  assert render.outline_width("triangle", 50.0) == pytest.approx(50 / (1 + 5**0.5) / 2)
  assert render.stripe_band(16, 16) == 4 and render.stripe_band(72, 128) == 9


@pytest.fixture(scope="module")
def readings():
  """read_attributes of NUM examples per style (and none), clean and with noise sigma 8."""
  out = {}
  for style in ("", *STYLES):
    for i in range(NUM):
      e = _example(style, i)
      frames = media.decode(e)
      out[style, i] = (e, readback.read_attributes(frames), readback.read_style(_noisy(frames, i)))
  return out


@pytest.mark.parametrize("style", STYLES)
def test_read_style_both_ways_clean_and_noisy(readings, style):
  acc = {}
  for noisy in (False, True):
    for shown in ("", *STYLES):
      got = [readings[shown, i][2 if noisy else 1][style] for i in range(NUM)]
      acc[noisy, shown] = float(np.mean([g == (shown == style) for g in got]))
  assert min(acc.values()) >= 0.95, acc


@pytest.mark.parametrize("style", STYLES)
def test_readback_of_attributes_on_styled_clips(readings, style):
  hits = {"color": [], "background": [], "shape": [], "motion": []}
  for i in range(NUM):
    e, got, _ = readings[style, i]
    a = e.attributes
    hits["color"].append(got["color"] == a["color"])
    hits["background"].append(got["background"] == a["background"])
    if min(e.height, e.width) >= 32:
      hits["shape"].append(got["shape"] == a["shape"])
    if e.num_frames > 1:
      hits["motion"].append(got["motion"] == a["motion"])
  assert all(len(v) >= 10 for v in hits.values()), {k: len(v) for k, v in hits.items()}
  acc = {k: float(np.mean(v)) for k, v in hits.items()}
  assert min(acc.values()) >= 0.95, acc


@pytest.mark.parametrize("background", vocab.BACKGROUNDS)
def test_stripes_read_at_16_pixels_with_noise(background):
  scene = render.Scene(
    color="white",
    shape="square",
    motion="moving right",
    background=background,
    height=16,
    width=16,
    num_frames=8,
    size=5.0,
    start=(4.0, 8.0),
    velocity=(1.0, 0.0),
  )
  for style in ("", "striped"):
    frames = _noisy(render.draw(dataclasses.replace(scene, style=style)), 0)
    got = readback.read_attributes(frames)
    assert got["striped"] == (style == "striped"), got["stripe_contrast"]
    assert got["background"] == background and got["color"] == "white"
    assert got["motion"] == "moving right"


def test_score_reads_the_caption_style():
  scene = render.Scene(
    color="magenta",
    shape="triangle",
    motion="moving up",
    background="gray",
    height=40,
    width=64,
    num_frames=12,
    size=16.0,
    start=(30.0, 28.0),
    velocity=(0.0, -1.0),
  )
  for style in STYLES:
    styled = dataclasses.replace(scene, style=style)
    frames = render.draw(styled)
    assert styled.caption == f"{scene.caption} {render.STYLES[style]}"
    result = readback.score(frames, styled.caption)
    assert result == dict.fromkeys(
      ("color", "shape", "background", "motion", "style", "all"), True
    ), result
    other = dataclasses.replace(scene, style=next(s for s in STYLES if s != style))
    assert readback.score(frames, other.caption)["style"] is False
    assert "style" not in readback.score(frames, scene.caption)
    assert readback.read_style(frames) == {
      **readback.read_style(frames),
      "outlined": style == "outlined",
      "striped": style == "striped",
    }


def test_caption_helpers():
  assert vocab.with_style("a red circle on a black background", "") == (
    "a red circle on a black background"
  )
  for style, phrase in vocab.STYLES.items():
    text = vocab.caption("red", "circle", "moving left", "black", style)
    assert text == f"a red circle moving left on a black background {phrase}"
    assert vocab.caption_style(text) == style == readback.caption_style(text)
    assert vocab.parse_caption(text)["style"] == style
    assert vocab.parse_caption(text)["motion"] == "moving left"
  with pytest.raises(ValueError, match="unknown style 'wavy'"):
    vocab.with_style("a red circle on a black background", "wavy")
  with pytest.raises(ValueError):
    vocab.parse_caption("a red circle on a black background wavy")


def test_styled_captions_fit_the_base_tokenizer(tmp_path):
  """A tokenizer trained on the default data has no <unk> in styled captions, which stay short."""
  synthetic.generate(
    synthetic.Options(output_dir=str(tmp_path), num_examples=300, num_eval=0, num_workers=1),
    show_progress=False,
  )
  tok = tokenizer.Tokenizer(tokenizer.train(str(tmp_path), vocab_size=128))
  longest = vocab.caption("magenta", "triangle", "standing still", "black")
  for style in STYLES:
    ids = tok.ids(vocab.with_style(longest, style), 1 << 10)
    assert tokenizer.UNK_ID not in ids
    assert len(ids) <= 14, len(ids)  # With eos; the demo's max_text_len is 16.


def test_generate_with_style_records_it(tmp_path):
  opts = synthetic.Options(
    output_dir=str(tmp_path), num_examples=10, num_eval=4, num_workers=1, style="outlined"
  )
  manifest = synthetic.generate(opts, show_progress=False)
  assert manifest["generator"]["style"] == "outlined"
  assert manifest["vocabulary"]["styles"] == vocab.STYLES
  for split in ("train", "eval"):
    examples = [e for p in shards.split_files(str(tmp_path), split) for e in shards.read_shard(p)]
    assert len(examples) == {"train": 10, "eval": 4}[split]
    for e in examples:
      assert e.attributes["style"] == "outlined"
      assert e.captions[0].endswith(" hollow")
  with pytest.raises(ValueError, match="--style='wavy'"):
    synthetic.validate(dataclasses.replace(opts, style="wavy"))


def test_bad_style_flag_is_one_line(tmp_path):
  cmd = [
    sys.executable,
    "-m",
    "data_pipelines.synthetic",
    f"--output_dir={tmp_path}",
    "--style=wavy",
  ]
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60)
  lines = [line for line in proc.stderr.splitlines() if line.strip()]
  assert proc.returncode != 0
  assert len(lines) == 1, proc.stderr
  assert lines[0] == "error: --style='wavy'; allowed: outlined, striped or '' (none)"
  assert not os.path.exists(tmp_path / "manifest.json")


def test_a_style_fraction_styles_that_share_of_examples_and_leaves_the_rest_plain():
  styled = [_example("striped", i, style_fraction=0.5) for i in range(NUM)]
  full = [_example("striped", i) for i in range(NUM)]
  plain = [_example("", i) for i in range(NUM)]
  n = 0
  for s, f, p in zip(styled, full, plain, strict=True):
    assert s in (f, p)  # Each example is the styled or the plain one, nothing in between.
    n += s == f
  assert 0.3 * NUM <= n <= 0.7 * NUM, n
  with pytest.raises(ValueError, match="style_fraction"):
    synthetic.validate(synthetic.Options(output_dir="x", style="striped", style_fraction=0.0))
