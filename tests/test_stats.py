"""Tests of the dataset statistics binary and of contact sheets."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image, ImageDraw

from data_pipelines import contact_sheet, media, schema, shards, stats

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (frames, height, width) of the train split; validation holds the first two.
_SIZES = [(1, 16, 16), (4, 9, 16), (4, 9, 16), (7, 24, 32), (1, 40, 30), (3, 16, 16)]


def write_dataset(data_dir: str) -> dict[str, list[schema.Example]]:
  """Noisy solid-colour clips: train has 2 shards of 3, validation 1 shard of 2."""
  rng = np.random.default_rng(0)
  os.makedirs(data_dir, exist_ok=True)
  out, entries = {}, {}
  for split, sizes in (("train", _SIZES), ("validation", _SIZES[:2])):
    examples = []
    for i, (t, h, w) in enumerate(sizes):
      frames = np.broadcast_to(rng.integers(0, 256, 3, dtype=np.uint8), (t, h, w, 3)).copy()
      frames[:, : h // 2] = rng.integers(0, 256, (t, h // 2, w, 3), dtype=np.uint8)
      data, fmt = media.encode_raw(frames)
      caption = f"clip {i} of {split} " + "with a long caption " * (i % 3)
      examples.append(schema.Example(data, fmt, 8.0 * (t > 1), t, h, w, (caption,), f"{split}/{i}"))
    per_shard = [examples[:3], examples[3:]] if split == "train" else [examples]
    paths = []
    for s, part in enumerate(per_shard):
      paths.append(os.path.join(data_dir, shards.shard_name(split, s, len(per_shard))))
      with shards.shard_writer(paths[-1]) as writer:
        for e in part:
          writer.add(e)
    entries[split] = shards.split_entry(paths, shards.SizeStats.of(examples))
    out[split] = examples
  shards.write_manifest(data_dir, {"splits": entries, "tokenizer": None})
  return out


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
  d = str(tmp_path_factory.mktemp("stats_data"))
  write_dataset(d)
  return d


def _png(path: str) -> np.ndarray:
  with Image.open(path) as im:
    assert im.format == "PNG"
    return np.asarray(im.convert("RGB"))


def _assert_not_blank(image: np.ndarray) -> None:
  assert image.std() > 10
  assert len(np.unique(image.reshape(-1, 3), axis=0)) > 20


def test_run_prints_counts_and_writes_pngs(data_dir, tmp_path, capsys):
  out = str(tmp_path / "out")
  assert stats.run(data_dir, out, num_examples=4, columns=2, cell=32) == {}
  text = capsys.readouterr().out
  assert "train: examples=6 images=2 videos=4 total_frames=20" in text
  assert "validation: examples=2 images=1 videos=1 total_frames=5" in text
  assert "aspect ratios: 16:9=2 (33.3%), 1:1=2 (33.3%), 3:4=1 (16.7%), 4:3=1 (16.7%)" in text
  assert "frames per example (all): min=1 median=3 mean=3.3 max=7" in text
  assert "frames per example (videos): min=3 median=4 mean=4.5 max=7" in text
  assert "resolutions: 4 distinct; most common 16x16=2, 16x9=2" in text
  for split in ("train", "validation"):
    hist = _png(os.path.join(out, f"{split}_histograms.png"))
    assert hist.shape[0] >= 600 and hist.shape[1] >= 900
    _assert_not_blank(hist)
    sheet = _png(os.path.join(out, f"{split}_contact_sheet.png"))
    n = 4 if split == "train" else 2
    lay = contact_sheet.layout(n, cell=32, columns=2)
    assert sheet.shape == (lay.height, lay.width, 3)
    _assert_not_blank(sheet)


def test_split_flag_selects_one_split(data_dir, tmp_path, capsys):
  stats.run(data_dir, str(tmp_path), splits=["validation"], num_examples=0)
  text = capsys.readouterr().out
  assert "validation: examples=2" in text and "train:" not in text
  assert sorted(os.listdir(tmp_path)) == ["validation_histograms.png"]
  with pytest.raises(shards.DatasetError, match="split='test'"):
    stats.run(data_dir, str(tmp_path), splits=["test"])


def test_scan_matches_manifest_and_catches_stale_one(data_dir, tmp_path, capsys):
  assert stats.run(data_dir, str(tmp_path / "a"), num_examples=0, scan=True) == {
    "train": [],
    "validation": [],
  }
  stale = str(tmp_path / "stale")
  write_dataset(stale)
  with open(os.path.join(stale, shards.MANIFEST)) as f:
    manifest = json.load(f)
  manifest["splits"]["train"]["num_images"] = 3
  manifest["splits"]["train"]["size_histogram"]["num_frames"]["7"] = 2
  del manifest["splits"]["validation"]["size_histogram"]  # Counted from the records.
  shards.write_manifest(stale, manifest)
  capsys.readouterr()
  bad = stats.run(stale, str(tmp_path / "b"), num_examples=0, scan=True)
  assert bad["train"] == [
    "num_images: manifest says 3, records have 2",
    "num_frames differs (manifest vs records) at 7: 2 vs 1",
  ]
  assert "validation" not in bad
  text = capsys.readouterr().out
  assert "MISMATCH num_images" in text and "train: examples=6 images=2 " in text
  assert "validation: examples=2 images=1 videos=1 total_frames=5" in text


def _cli(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run(
    [sys.executable, "-m", "data_pipelines.stats", *args],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=120,
  )


def test_cli(data_dir, tmp_path):
  out = str(tmp_path / "cli")
  r = _cli(f"--data_dir={data_dir}", f"--output_dir={out}", "--split=train", "--scan")
  assert r.returncode == 0, r.stderr
  assert re.search(r"^train: examples=6 images=2 videos=4 total_frames=20$", r.stdout, re.M)
  assert "MISMATCH" not in r.stdout
  assert sorted(os.listdir(out)) == ["train_contact_sheet.png", "train_histograms.png"]
  _assert_not_blank(_png(os.path.join(out, "train_contact_sheet.png")))


@pytest.mark.parametrize(
  "args, message",
  [
    (["--data_dir={tmp}/none"], "error: --data_dir={tmp}/none: no manifest.json found"),
    (["--data_dir={data}", "--split=nope"], "error: split='nope' not in {data}"),
    (["--data_dir={data}", "--num_examples=-1"], "error: --num_examples=-1; must be >= 0"),
  ],
)
def test_cli_bad_input_is_one_error_line(data_dir, tmp_path, args, message):
  fill = lambda s: s.format(tmp=tmp_path, data=data_dir)
  r = _cli(*[fill(a) for a in args], f"--output_dir={tmp_path / 'out'}")
  assert r.returncode != 0
  lines = r.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(fill(message)), r.stderr


# ------------------------------------------------------------------------------
# Contact sheets.
# ------------------------------------------------------------------------------


def _tile(sheet: np.ndarray, lay: contact_sheet.Layout, i: int) -> np.ndarray:
  """The frame box row of tile i (frames only, no text)."""
  top, left = lay.origin(i)
  return sheet[top : top + 128, left : left + lay.tile_w - 3 * lay.pad]


def _count(region: np.ndarray, color) -> int:
  return int((region == np.array(color, np.uint8)).all(-1).sum())


def test_contact_sheet_cells_hold_each_examples_pixels():
  colors = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [0, 255, 255]])
  video = np.broadcast_to(colors[:, None, None].astype(np.uint8), (5, 16, 32, 3))  # Per frame.
  noise = np.random.default_rng(0).integers(0, 256, (32, 16, 3), dtype=np.uint8)
  tall = np.full((1, 300, 100, 3), 77, np.uint8)  # Shrunk into the cell.
  items = [(video, "a video"), (noise, "an image " * 30), (tall, "")]
  sheet = contact_sheet.contact_sheet(items, cell=128, columns=2)
  lay = contact_sheet.layout(3, cell=128, columns=2)
  assert sheet.shape == (lay.height, lay.width, 3) and sheet.dtype == np.uint8
  assert (lay.columns, lay.rows) == (2, 2)

  # First, middle and last frames shown, enlarged 4x exactly; the others not.
  tile = _tile(sheet, lay, 0)
  for k, c in enumerate(colors):
    assert _count(tile, c) == (64 * 128 if k in (0, 2, 4) else 0)
  # The image keeps its aspect ratio (64 x 128) and every pixel, enlarged 4x.
  tile = _tile(sheet, lay, 1)
  want = noise.repeat(4, 0).repeat(4, 1)
  ys, xs = np.nonzero((tile == want[0, 0]).all(-1))
  assert any(np.array_equal(tile[y : y + 128, x : x + 64], want) for y, x in zip(ys, xs) if y == 0)
  # A large image is shrunk to fit: 128 x 43.
  assert _count(_tile(sheet, lay, 2), (77, 77, 77)) == 128 * 43
  # Text lies under the frames: the size line, then the (wrapped) caption.
  top, left = lay.origin(1)
  text = sheet[top + 128 : top + lay.tile_h - 2 * lay.pad, left : left + lay.tile_w - 3 * lay.pad]
  text = text.astype(int)
  bluish = text[..., 2] - text[..., 0] > 40  # Antialiased SIZE_COLOR.
  whitish = (text.min(-1) > 120) & (text.max(-1) - text.min(-1) < 10)  # TEXT_COLOR.
  assert bluish[: lay.line_h].sum() > 20 and not bluish[lay.line_h :].any()
  assert whitish[lay.line_h :].sum() > 100 and not whitish[: lay.line_h].any()
  # An empty cell of the last row stays background.
  top, left = lay.origin(3)
  assert (sheet[top : top + 128, left : left + 128] == contact_sheet.BACKGROUND).all()


def test_contact_sheet_options_and_errors():
  video = np.zeros((2, 8, 8, 3), np.uint8)
  sheet = contact_sheet.contact_sheet([(video, "x")] * 5, cell=16, columns=3, frames_per_item=1)
  lay = contact_sheet.layout(5, cell=16, columns=3, frames_per_item=1)
  assert sheet.shape == (lay.height, lay.width, 3) and (lay.columns, lay.rows) == (3, 2)
  with pytest.raises(ValueError, match="at least one item"):
    contact_sheet.contact_sheet([])
  with pytest.raises(ValueError, match="uint8 frames"):
    contact_sheet.contact_sheet([(video.astype(np.float32), "x")])
  with pytest.raises(ValueError, match="cell=4"):
    contact_sheet.contact_sheet([(video, "x")], cell=4)


def test_frame_indices_and_wrap():
  assert contact_sheet.frame_indices(1, 3) == [0]
  assert contact_sheet.frame_indices(2, 3) == [0, 1]
  assert contact_sheet.frame_indices(17, 3) == [0, 8, 16]
  assert contact_sheet.frame_indices(17, 1) == [0]
  assert stats.sample_indices(100, 3) == [0, 50, 99]
  assert stats.sample_indices(2, 24) == [0, 1]
  draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
  font = contact_sheet.ImageFont.load_default()
  lines = contact_sheet.wrap("word " * 40 + "x" * 80, 100, draw, font, max_lines=3)
  assert len(lines) == 3 and lines[-1].endswith("…")
  assert all(draw.textlength(s, font=font) <= 100 for s in lines)
  lines = contact_sheet.wrap("y" * 60, 100, draw, font, max_lines=10)
  assert "".join(lines) == "y" * 60 and len(lines) > 1


def test_histogram_figure_many_lengths_and_empty_split(tmp_path):
  s = shards.SizeStats()
  for t in range(1, 200, 3):
    s.add(16 + t % 7, 32 + t, t)
  for name, st in (("many", s.to_dict()), ("empty", shards.SizeStats().to_dict())):
    path = str(tmp_path / f"{name}.png")
    stats.histogram_figure(st, name).savefig(path)
    assert _png(path).shape[:2] == (900, 1300)
  assert stats.summary("empty", shards.SizeStats().to_dict()) == [
    "empty: examples=0 images=0 videos=0 total_frames=0"
  ]


def test_sheet_items_skip_undecodable_media(tmp_path):
  good = schema.Example(
    media.encode_raw(np.zeros((3, 4, 4, 3), np.uint8))[0], "raw+zlib", 8.0, 3, 4, 4, ("ok",), "a"
  )
  bad = schema.Example(b"not a png", "png", 0.0, 1, 4, 4, ("bad",), "b")
  path = str(tmp_path / shards.shard_name("train", 0, 1))
  with shards.shard_writer(path) as w:
    w.add(bad)
    w.add(good)
  items = stats.sheet_items([path], 24)
  assert len(items) == 1 and items[0][1] == "ok" and items[0][0].shape == (3, 4, 4, 3)
