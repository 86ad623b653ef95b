"""Tests of real media ingest: good files in, bad files reported, resumable, clipped."""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import zlib

import av
import numpy as np
import pytest
from PIL import Image

from data_pipelines import captions, ingest, media, probe, shards

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------------------------
# Media made in the test.
# ------------------------------------------------------------------------------


def frames_of(n: int, h: int = 24, w: int = 32) -> np.ndarray:
  """[n, h, w, 3] frames whose red level and bar width encode the frame index."""
  video = np.zeros((n, h, w, 3), np.uint8)
  for i in range(n):
    video[i, ..., 0] = 20 * i
    video[i, :, : (2 * i) % w, 1] = 255
  return video


def encode_video(fmt: str, codec: str, frames: np.ndarray, fps: int) -> bytes:
  buf = io.BytesIO()
  with av.open(buf, "w", format=fmt) as container:
    stream = container.add_stream(codec, rate=fps)
    stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
    for f in frames:
      container.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
    container.mux(stream.encode())
  return buf.getvalue()


def encode_image(fmt: str, h: int = 20, w: int = 28) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(frames_of(3, h, w)[2]).save(buf, format=fmt)
  return buf.getvalue()


def animated_webp() -> bytes:
  buf = io.BytesIO()
  images = [Image.fromarray(f) for f in frames_of(2, 20, 28)]
  images[0].save(buf, format="WEBP", save_all=True, append_images=images[1:], duration=100)
  return buf.getvalue()


def png_claiming(width: int, height: int) -> bytes:
  """A tiny PNG whose header claims a huge size: a decompression bomb's header."""
  data = bytearray(encode_image("PNG", 2, 2))
  ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
  data[16:29] = ihdr
  data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
  return bytes(data)


def write(path, data: bytes) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "wb") as f:
    f.write(data)


def write_csv(path, rows: list[tuple[str, str]]) -> None:
  lines = [b"path,caption"] + [f"{p},{c}".encode() for p, c in rows]
  write(path, b"\n".join(lines) + b"\n")


def run(tmp_path, **kwargs) -> dict:
  config = ingest.Config(
    input=str(kwargs.pop("input", tmp_path / "in")),
    captions=str(kwargs.pop("captions", tmp_path / "captions.csv")),
    output_dir=str(kwargs.pop("output_dir", tmp_path / "out")),
    files_per_shard=kwargs.pop("files_per_shard", 64),
    num_workers=0,
    max_error_fraction=kwargs.pop("max_error_fraction", None),
    options=probe.Options(**kwargs),
  )
  return ingest.run(config)


def read_all(out_dir) -> dict[str, list]:
  """source path -> examples, over the shards the manifest lists."""
  by_source = {}
  for path in shards.split_files(str(out_dir), "train"):
    for e in shards.read_shard(path):
      by_source.setdefault(e.attributes["source_path"], []).append(e)
  return by_source


def cli(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run(
    [sys.executable, "-m", "data_pipelines.ingest", *args],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=120,
  )


# ------------------------------------------------------------------------------
# A folder of good and bad inputs.
# ------------------------------------------------------------------------------

GOOD = {  # name -> (media_format, frames, height, width)
  "v/a.mp4": ("mp4", 12, 24, 32),
  "v/b.webm": ("webm", 12, 24, 32),
  "v/c.mkv": ("mkv", 12, 24, 32),
  "v/d.mov": ("mov", 12, 24, 32),
  "i/e.png": ("png", 1, 20, 28),
  "i/f.jpg": ("jpeg", 1, 20, 28),
  "i/g.webp": ("webp", 1, 20, 28),
}
BAD = {  # name -> reason
  "bad/corrupt.mp4": "corrupt",
  "bad/cut.mp4": "corrupt",
  "bad/cut.webm": "corrupt",
  "bad/cut.jpg": "corrupt",
  "bad/empty.png": "zero-byte",
  "bad/link.mp4": "unreadable",
  "bad/folder.png": "unreadable",
  "bad/text.png": "wrong-type",
  "bad/image.mp4": "wrong-type",
  "bad/notes.txt": "unsupported-extension",
  "bad/anim.gif": "unsupported-extension",
  "bad/anim.webp": "unsupported-content",
  "bad/tiny.png": "too-small",
  "bad/wide.png": "too-large",
  "bad/bomb.png": "too-large",
  "bad/nocap.png": "missing-caption",
  "bad/dup.png": "duplicate-caption",
  "bad/blank.png": "empty-caption",
  "bad/latin1.png": "bad-caption-encoding",
  "ghost.mp4": "caption-without-file",
}


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
  """(input dir, caption file, {name: file bytes}) of GOOD and BAD inputs."""
  base = tmp_path_factory.mktemp("mixed")
  src = base / "in"
  video = frames_of(12)
  files = {
    "v/a.mp4": encode_video("mp4", "libx264", video, 12),
    "v/b.webm": encode_video("webm", "libvpx-vp9", video, 12),
    "v/c.mkv": encode_video("matroska", "libx264", video, 12),
    "v/d.mov": encode_video("mov", "mpeg4", video, 12),
    "i/e.png": encode_image("PNG"),
    "i/f.jpg": encode_image("JPEG"),
    "i/g.webp": encode_image("WEBP"),
  }
  for name, data in files.items():
    write(src / name, data)
  mp4, webm, jpg = files["v/a.mp4"], files["v/b.webm"], files["i/f.jpg"]
  bad = {
    "bad/corrupt.mp4": mp4[:32] + os.urandom(2000),
    "bad/cut.mp4": mp4[: len(mp4) // 2],
    "bad/cut.webm": webm[: int(len(webm) * 0.85)],
    "bad/cut.jpg": jpg[: len(jpg) // 2],
    "bad/empty.png": b"",
    "bad/text.png": b"this is not an image\n" * 5,
    "bad/image.mp4": files["i/e.png"],
    "bad/notes.txt": b"notes",
    "bad/anim.gif": b"GIF89a" + bytes(20),
    "bad/anim.webp": animated_webp(),
    "bad/tiny.png": encode_image("PNG", 8, 8),
    "bad/wide.png": encode_image("PNG", 20, 5000),
    "bad/bomb.png": png_claiming(60000, 60000),
  }
  for name in ("nocap", "dup", "blank", "latin1"):
    bad[f"bad/{name}.png"] = encode_image("PNG")
  for name, data in bad.items():
    write(src / name, data)
  os.symlink(src / "nowhere.mp4", src / "bad/link.mp4")
  os.makedirs(src / "bad/folder.png")
  rows = [
    (n, f"caption of {n}") for n in [*GOOD, *BAD] if n not in ("bad/nocap.png", "bad/latin1.png")
  ]
  rows = [(n, "") if n == "bad/blank.png" else (n, c) for n, c in rows]
  rows.append(("bad/dup.png", "again"))
  write_csv(base / "captions.csv", rows)
  with open(base / "captions.csv", "ab") as f:
    f.write(b"bad/latin1.png,caf\xe9 au lait\n")  # Latin-1, not UTF-8.
  return src, base / "captions.csv", {**files, **bad}


def test_mixed_folder_yields_exactly_the_good_records(mixed, tmp_path):
  src, caps, files = mixed
  report = run(tmp_path, input=src, captions=caps)
  got = read_all(tmp_path / "out")
  assert sorted(got) == sorted(GOOD)
  for name, (fmt, t, h, w) in GOOD.items():
    (e,) = got[name]
    assert (e.media_format, e.num_frames, e.height, e.width) == (fmt, t, h, w), name
    assert e.captions == (f"caption of {name}",)
    assert e.media == files[name]  # Stored whole: the original bytes.
    assert e.fps == (12.0 if t > 1 else 0.0)
    frames = media.decode(e)
    assert frames.shape == (t, h, w, 3)
  np.testing.assert_allclose(media.decode(got["i/e.png"][0])[0], frames_of(3, 20, 28)[2])

  assert report["num_records"] == len(GOOD)
  assert report["num_inputs"] == len(GOOD) + len(BAD)
  assert report["num_skipped"] == len(BAD)
  by_path = {s["path"]: s for s in report["skipped"]}
  assert {p: s["reason"] for p, s in by_path.items()} == BAD
  assert "lines" in by_path["bad/dup.png"]["detail"]
  assert "truncated" in by_path["bad/cut.webm"]["detail"]
  assert sum(report["skipped_by_reason"].values()) == len(BAD)
  on_disk = json.loads((tmp_path / "out" / ingest.REPORT).read_text())
  assert on_disk["skipped"] == report["skipped"]
  assert report["summary"].startswith(
    f"ingest: {len(BAD) + len(GOOD)} files -> 7 records in 1 shards"
  )

  manifest = shards.read_manifest(str(tmp_path / "out"))
  assert manifest["name"] == "ingest" and manifest["tokenizer"] is None
  assert manifest["splits"]["train"]["num_examples"] == 7
  assert manifest["splits"]["train"]["num_images"] == 3
  assert manifest["ingest"]["input"] == str(src)


def test_glob_input_and_store_raw(mixed, tmp_path):
  src, caps, files = mixed
  report = run(tmp_path, input=f"{src}/*/a.mp4", captions=caps, store="raw")
  (e,) = read_all(tmp_path / "out")["v/a.mp4"]  # Relative to the glob's fixed directory.
  assert e.media_format == "raw+zlib"
  np.testing.assert_array_equal(media.decode(e), media.decode_video(files["v/a.mp4"]))
  # Rows naming files that exist but were not matched are not errors; a ghost is.
  assert [(s["path"], s["reason"]) for s in report["skipped"]] == [
    ("ghost.mp4", "caption-without-file")
  ]


# ------------------------------------------------------------------------------
# Clips and frame rates.
# ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ten_frames(tmp_path_factory):
  """A 10-frame, 10 fps mp4 with its caption file."""
  base = tmp_path_factory.mktemp("clips")
  write(base / "in" / "v.mp4", encode_video("mp4", "libx264", frames_of(10), 10))
  write_csv(base / "captions.csv", [("v.mp4", "ten frames")])
  return base


@pytest.mark.parametrize(
  "options, lengths, starts",
  [
    (dict(max_clip_frames=4, split_clips=True), [4, 4, 2], [0.0, 0.4, 0.8]),
    (dict(max_clip_frames=4, split_clips=True, min_clip_frames=3), [4, 4], [0.0, 0.4]),
    (dict(max_clip_frames=4), [4], [0.0]),
    (dict(fps=5), [5], [0.0]),
    (dict(fps=5, max_clip_frames=2, split_clips=True), [2, 2, 1], [0.0, 0.4, 0.8]),
    (dict(fps=20, clip_format="raw"), [20], [0.0]),
  ],
)
def test_clips_and_fps(ten_frames, tmp_path, options, lengths, starts):
  run(tmp_path, input=ten_frames / "in", captions=ten_frames / "captions.csv", **options)
  clips = read_all(tmp_path / "out")["v.mp4"]
  assert [c.num_frames for c in clips] == lengths
  assert [c.clip_start for c in clips] == pytest.approx(starts)
  fps = options.get("fps", 10)
  source = media.decode_video(str(ten_frames / "in" / "v.mp4"))
  for i, c in enumerate(clips):
    assert c.fps == fps and c.captions == ("ten frames",)
    assert c.source_id == f"v.mp4#clip={i}"
    frames = media.decode(c)
    assert frames.shape == (lengths[i], 24, 32, 3)
    if c.media_format == "raw+zlib":  # Lossless: exactly the nearest source frames.
      picks = [round((c.clip_start + k / fps) * 10 - 1e-9) for k in range(c.num_frames)]
      np.testing.assert_array_equal(frames, source[np.minimum(picks, 9)])
    else:
      assert c.media_format == "mp4"
      first = round(c.clip_start * 10)
      assert abs(frames[0, 0, 0, 0].astype(int) - source[first, 0, 0, 0]) < 8


@pytest.mark.parametrize(
  "options, reason",
  [
    (dict(max_frames=9), "too-many-frames"),
    (dict(min_clip_frames=11), "too-short"),
    (dict(min_side=25), "too-small"),
    (dict(max_pixels=32 * 24 - 1), "too-large"),
  ],
)
def test_video_limits(ten_frames, options, reason):
  with pytest.raises(probe.Skip) as e:
    probe.examples_from_file(
      str(ten_frames / "in" / "v.mp4"), "v", ("c",), probe.Options(**options)
    )
  assert e.value.reason == reason


def test_video_that_fits_one_clip_keeps_its_bytes(ten_frames, tmp_path):
  run(tmp_path, input=ten_frames / "in", captions=ten_frames / "captions.csv", max_clip_frames=10)
  (e,) = read_all(tmp_path / "out")["v.mp4"]
  assert e.media_format == "mp4" and e.num_frames == 10
  assert e.media == (ten_frames / "in" / "v.mp4").read_bytes()


# ------------------------------------------------------------------------------
# Resuming.
# ------------------------------------------------------------------------------


def test_rerun_redoes_only_the_missing_shard(tmp_path):
  names = [f"img{i}.png" for i in range(6)]
  for n in names:
    write(tmp_path / "in" / n, encode_image("PNG"))
  write_csv(tmp_path / "captions.csv", [(n, f"image {n}") for n in names])
  first = run(tmp_path, files_per_shard=2)
  assert first["num_shards"] == 3 and first["shards_reused"] == 0
  out = tmp_path / "out"
  paths = [out / shards.shard_name("train", i, 3) for i in range(3)]
  parts = [out / ingest.PARTS / (p.name + ".json") for p in paths]
  mtimes = {p: p.stat().st_mtime_ns for p in paths + parts}
  os.remove(paths[1])

  second = run(tmp_path, files_per_shard=2)
  assert second["shards_reused"] == 2 and second["num_records"] == 6
  for p in (paths[0], paths[2], parts[0], parts[2]):
    assert p.stat().st_mtime_ns == mtimes[p], p
  assert paths[1].exists() and parts[1].stat().st_mtime_ns != mtimes[parts[1]]
  assert sorted(read_all(out)) == names

  write(tmp_path / "in" / "img9.png", encode_image("PNG"))  # Now the inputs differ.
  with pytest.raises(ingest.IngestError, match="different inputs"):
    run(tmp_path, files_per_shard=2)
  os.remove(tmp_path / "in" / "img9.png")
  with pytest.raises(ingest.IngestError, match="other flags"):
    run(tmp_path, files_per_shard=3)


# ------------------------------------------------------------------------------
# Caption files.
# ------------------------------------------------------------------------------


def test_caption_formats(tmp_path):
  root = str(tmp_path)
  write(
    tmp_path / "c.csv",
    b'path,caption,caption2,caption3\n"a.mp4","one, with comma",two,\n'
    b"b.mp4,x,y,z,extra\n,no path,,\n"
    + f"{tmp_path}/c.png,abs,,\n".encode()
    + b"huge.mp4,"
    + b"x" * 200_000
    + b"\nd.mp4,after the huge row\n",
  )
  table = captions.load(str(tmp_path / "c.csv"), root)
  assert table.lookup(str(tmp_path / "a.mp4")) == (("one, with comma", "two"), None)
  assert table.lookup(str(tmp_path / "b.mp4"))[1].reason == captions.BAD_ROW
  assert table.lookup(str(tmp_path / "c.png"))[0] == ("abs",)
  assert [r.line for r in table.orphan_rows] == [4, 6]  # No path; a field over csv's limit.
  assert table.lookup(str(tmp_path / "d.mp4"))[0] == ("after the huge row",)

  write(
    tmp_path / "c.jsonl",
    b'{"path": "a.mp4", "caption": "one", "captions": ["two"]}\n\n'
    b'{"path": "b.mp4", "captions": ["\xff"]}\nnot json\n{"path": "./a.mp4", "caption": "x"}\n',
  )
  table = captions.load(str(tmp_path / "c.jsonl"), root)
  assert table.lookup(str(tmp_path / "b.mp4"))[1].reason == captions.BAD_ENCODING
  dup = table.lookup(str(tmp_path / "a.mp4"))[1]
  assert dup.reason == captions.DUPLICATE and "lines 1, 5" in dup.detail
  assert [(r.line, r.problem.reason) for r in table.orphan_rows] == [(4, captions.BAD_ROW)]


# ------------------------------------------------------------------------------
# The command line.
# ------------------------------------------------------------------------------


def test_cli_parallel_run_and_max_error_fraction(mixed, tmp_path):
  src, caps, _ = mixed
  out = tmp_path / "out"
  args = [f"--input={src}", f"--captions={caps}", f"--output_dir={out}", "--num_workers=2"]
  ok = cli(*args, "--files_per_shard=8")
  assert ok.returncode == 0, ok.stderr
  assert ok.stdout.strip().startswith(f"ingest: {len(GOOD) + len(BAD)} files -> 7 records in ")
  assert f"report: {out}/ingest_report.json" in ok.stdout
  assert sorted(read_all(out)) == sorted(GOOD)

  failed = cli(*args, "--files_per_shard=8", "--max_error_fraction=0.5")
  assert failed.returncode != 0
  assert "Traceback" not in failed.stderr
  last = failed.stderr.strip().splitlines()[-1]
  assert last.startswith(f"error: {len(BAD)} of {len(GOOD) + len(BAD)} inputs skipped")
  assert "--max_error_fraction=0.5" in last
  assert json.loads((out / ingest.REPORT).read_text())["num_skipped"] == len(BAD)


def test_worker_crash_skips_only_that_file(tmp_path):
  names = [f"img{i}.png" for i in range(4)]
  for n in names:
    write(tmp_path / "in" / n, encode_image("PNG"))
  write_csv(tmp_path / "captions.csv", [(n, n) for n in names])
  result = subprocess.run(
    [sys.executable, "-m", "data_pipelines.ingest", f"--input={tmp_path / 'in'}"]
    + [f"--captions={tmp_path / 'captions.csv'}", f"--output_dir={tmp_path / 'out'}"]
    + ["--num_workers=2", "--files_per_shard=2"],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=120,
    env={**os.environ, ingest._CRASH_ENV: "img2.png"},
  )
  assert result.returncode == 0, result.stderr
  assert "1 skipped (worker-crash: 1)" in result.stdout
  assert sorted(read_all(tmp_path / "out")) == ["img0.png", "img1.png", "img3.png"]


@pytest.mark.parametrize(
  "args, message",
  [
    (["--captions=c.csv", "--output_dir=o"], "error: --input is required"),
    (["--input={d}/*.mkv", "--captions={d}/c.csv", "--output_dir={d}/o"], "no files matched"),
    (["--input={d}", "--captions={d}/missing.csv", "--output_dir={d}/o"], "cannot read"),
    (["--input={d}", "--captions={d}/c.txt", "--output_dir={d}/o"], "unknown caption format"),
    (["--input={d}", "--captions={d}/c.csv", "--output_dir={d}/o", "--fps=-1"], "--fps=-1.0"),
  ],
)
def test_cli_errors_are_one_line(tmp_path, args, message):
  write(tmp_path / "a.png", encode_image("PNG"))
  write_csv(tmp_path / "c.csv", [("a.png", "a")])
  write(tmp_path / "c.txt", b"a.png a\n")
  result = cli(*[a.format(d=tmp_path) for a in args])
  assert result.returncode != 0
  assert "Traceback" not in result.stderr
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines


def test_time_stamped_captions_follow_clips_and_frame_rates(ten_frames, tmp_path):
  captions_file = tmp_path / "windows.jsonl"
  row = {
    "path": "v.mp4",
    "caption": "ten frames",
    "windows": [
      {"text": "first part", "start": 0, "end": 6},
      {"text": "second", "start": 6, "end": 10},
    ],
  }
  captions_file.write_text(json.dumps(row) + "\n")
  run(tmp_path, input=ten_frames / "in", captions=captions_file)  # Stored whole.
  (whole,) = read_all(tmp_path / "out")["v.mp4"]
  assert whole.caption_windows == ((("first part", 0, 6), ("second", 6, 10)),)
  # Cut into 4-frame clips at 5 fps (clips start at 0, 0.8 s): windows in each clip's frames.
  out = tmp_path / "cut"
  run(
    tmp_path,
    input=ten_frames / "in",
    captions=captions_file,
    output_dir=out,
    fps=5,
    max_clip_frames=4,
    split_clips=True,
    min_clip_frames=1,
  )
  clips = read_all(out)["v.mp4"]
  assert [c.num_frames for c in clips] == [4, 1]
  # Frames at 0, .2, .4, .6 s: the first window ends at 0.6 s.
  assert clips[0].caption_windows == ((("first part", 0, 3), ("second", 3, 4)),)
  assert clips[1].caption_windows == ((("second", 0, 1),),)
  # Bad windows are the row's problem: the file is skipped with the reason.
  bad = tmp_path / "bad.jsonl"
  bad.write_text(json.dumps({**row, "windows": [{"text": "x", "start": 3, "end": 2}]}) + "\n")
  report = run(tmp_path, input=ten_frames / "in", captions=bad, output_dir=tmp_path / "bad")
  assert report["skipped"][0]["reason"] == captions.BAD_ROW
