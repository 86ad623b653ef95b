"""Tests of the TFDS builder: same records, same order, no TensorFlow."""

from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys

import grain.python as grain
import numpy as np
import pytest
from PIL import Image

from data_pipelines import media, schema, shards, tfds_builder

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _png(frame: np.ndarray) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(frame).save(buf, format="png")
  return buf.getvalue()


def _examples(rng: np.random.Generator, split: str) -> list[list[schema.Example]]:
  """Examples of a split, one list per shard: png and raw images, raw and mp4 videos."""

  def frames(t, h, w):
    return rng.integers(0, 256, (t, h, w, 3), dtype=np.uint8)

  def video(i, t, h, w, fps, compress=True, **kw):
    data, fmt = media.encode_raw(frames(t, h, w), compress=compress)
    return schema.Example(data, fmt, fps, t, h, w, source_id=f"{split}/{i}", **kw)

  png = schema.Example(
    _png(frames(1, 12, 20)[0]), "png", 0.0, 1, 12, 20, ("a png image",), f"{split}/png"
  )
  mp4 = schema.Example(
    media.encode_mp4(frames(5, 16, 16), 8), "mp4", 8.0, 5, 16, 16, ("mp4",), f"{split}/mp4"
  )
  return [
    [
      png,
      video(1, 4, 16, 24, 29.97, captions=("a clip", "the same clip"), clip_start=1.25),
      mp4,
    ],
    [
      video(3, 1, 10, 10, 0.0, compress=False, captions=("",), attributes={"shape": "disc"}),
      video(4, 3, 8, 14, 24.0, captions=("ünïcode ✓ caption",), attributes={"a": "1", "b": ""}),
    ],
  ]


def write_dataset(data_dir: str) -> dict[str, list[schema.Example]]:
  """Writes a tiny dataset (train: 2 shards, validation: 1); returns the examples per split."""
  rng = np.random.default_rng(0)
  os.makedirs(data_dir, exist_ok=True)
  splits, out = {}, {}
  for split in ("train", "validation"):
    per_shard = _examples(rng, split)
    if split == "validation":
      per_shard = per_shard[1:]
    paths = []
    for i, examples in enumerate(per_shard):
      paths.append(os.path.join(data_dir, shards.shard_name(split, i, len(per_shard))))
      with shards.shard_writer(paths[-1]) as w:
        for e in examples:
          w.add(e)
    out[split] = [e for s in per_shard for e in s]
    splits[split] = shards.split_entry(paths, shards.SizeStats.of(out[split]))
  shards.write_manifest(data_dir, {"splits": splits})
  return out


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  root = tmp_path_factory.mktemp("tfds")
  source = str(root / "source")
  examples = write_dataset(source)
  builder = tfds_builder.build(source, str(root / "tfds"), name="tiny_sora", num_shards=2)
  return source, str(root / "tfds"), builder, examples


def test_records_equal_arrayrecord_in_order(built):
  source, tfds_dir, builder, _ = built
  assert builder.info.splits["train"].num_shards == 2  # Order must hold across TFDS shards.
  for split in ("train", "validation"):
    want = [e for f in shards.split_files(source, split) for e in shards.read_shard(f)]
    ds = tfds_builder.data_source(tfds_dir, split, name="tiny_sora")
    assert len(ds) == len(want)
    got = [tfds_builder.example_from_tfds(ds[i]) for i in range(len(ds))]
    assert got == want
    for g in got:
      g.validate()


def test_written_examples_roundtrip_exactly(built):
  _, tfds_dir, _, examples = built
  got = list(tfds_builder.ExampleSource(tfds_dir, "train", name="tiny_sora"))
  assert got == examples["train"]
  assert got[1].fps == 29.97 and got[1].clip_start == 1.25  # float64, not float32.
  assert got[3].captions == ("",) and got[3].attributes == {"shape": "disc"}
  assert got[4].captions == ("ünïcode ✓ caption",)
  np.testing.assert_array_equal(media.decode(got[0]), media.decode(examples["train"][0]))


def test_tfds_data_source_directly_and_pickled(built):
  import tensorflow_datasets as tfds

  _, tfds_dir, _, examples = built
  ds = tfds.data_source("tiny_sora", data_dir=tfds_dir, split="validation")
  assert [tfds_builder.example_from_tfds(r) for r in ds] == examples["validation"]
  source = pickle.loads(
    pickle.dumps(tfds_builder.ExampleSource(tfds_dir, "validation", "tiny_sora"))
  )
  assert source[1] == examples["validation"][1]
  assert grain.MapDataset.source(source)[0] == examples["validation"][0]


def test_manifest_is_stored_as_metadata(built):
  source, _, builder, _ = built
  assert builder.info.metadata[tfds_builder.METADATA_KEY] == shards.read_manifest(source)
  assert str(builder.version) == tfds_builder.TFDS_VERSION


def test_rebuild_reuses_overwrites_and_detects_stale_source(built, tmp_path):
  source, tfds_dir, _, examples = built
  again = tfds_builder.build(source, tfds_dir, name="tiny_sora")  # Reused, not regenerated.
  assert again.info.splits["train"].num_examples == 5
  # The source changes (one example fewer, manifest updated): reuse refuses, overwrite works.
  other, out = str(tmp_path / "other"), str(tmp_path / "tfds")
  write_dataset(other)
  tfds_builder.build(other, out)
  files = shards.split_files(other, "train")
  with shards.shard_writer(files[1]) as w:
    w.add(examples["train"][3])
  manifest = shards.read_manifest(other)
  manifest["splits"]["train"] = shards.split_entry(
    files, shards.SizeStats.of(examples["train"][:4])
  )
  shards.write_manifest(other, manifest)
  with pytest.raises(shards.DatasetError, match="says 4 examples .* has 5.*--overwrite"):
    tfds_builder.build(other, out)
  tfds_builder.build(other, out, overwrite=True)
  want = [e for f in files for e in shards.read_shard(f)]  # mp4 bytes vary between encodes.
  assert len(want) == 4 and list(tfds_builder.ExampleSource(out, "train")) == want
  # A shard rewritten without updating the manifest: the manifest is stale.
  with shards.shard_writer(files[1]) as w:
    w.add(examples["train"][3])
    w.add(examples["train"][4])
  with pytest.raises(shards.DatasetError, match="says 4 examples .* has 5"):
    tfds_builder.build(other, str(tmp_path / "tfds2"))


def test_corrupt_source_shard_raises_dataset_error(tmp_path):
  source = str(tmp_path / "source")
  write_dataset(source)
  with open(shards.split_files(source, "validation")[0], "wb") as f:
    f.write(b"not an array record")
  with pytest.raises(shards.DatasetError, match="not a readable ArrayRecord shard"):
    tfds_builder.build(source, str(tmp_path / "tfds"))


def test_missing_dataset_and_split_raise_dataset_error(built, tmp_path):
  _, tfds_dir, _, _ = built
  with pytest.raises(shards.DatasetError, match="no TFDS dataset"):
    tfds_builder.data_source(str(tmp_path), "train", name="tiny_sora")
  with pytest.raises(shards.DatasetError, match="bogus"):
    tfds_builder.data_source(tfds_dir, "bogus", name="tiny_sora")
  with pytest.raises(ValueError, match="--name"):
    tfds_builder.builder_class("Bad-Name")


def test_no_tensorflow_imported(built):
  del built  # Imported the module, built and read a dataset in this process.
  assert "tensorflow" not in sys.modules


def _cli(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run(
    [sys.executable, "-m", "data_pipelines.tfds_builder", *args],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=120,
  )


def test_cli_builds_without_tensorflow(tmp_path):
  source = str(tmp_path / "source")
  write_dataset(source)
  out = str(tmp_path / "tfds")
  r = _cli(f"--source_dir={source}", f"--tfds_data_dir={out}")
  assert r.returncode == 0, r.stderr
  assert "train: 5 examples" in r.stdout and "validation: 2 examples" in r.stdout
  check = (
    "import sys; from data_pipelines import tfds_builder as t; "
    f"assert len(t.ExampleSource({out!r}, 'train')) == 5; "
    "assert 'tensorflow' not in sys.modules"
  )
  r = subprocess.run([sys.executable, "-c", check], cwd=REPO, capture_output=True, text=True)
  assert r.returncode == 0, r.stderr


def test_cli_bad_source_is_one_error_line(tmp_path):
  r = _cli(f"--source_dir={tmp_path}", f"--tfds_data_dir={tmp_path / 'out'}")
  assert r.returncode != 0
  lines = r.stderr.strip().splitlines()
  assert (
    len(lines) == 1
    and lines[0].startswith("error:")
    and "--source_dir=" in lines[0]
    and "manifest.json" in lines[0]
  )
  assert "Traceback" not in r.stderr
  shards.write_manifest(str(tmp_path), {"splits": {}})
  r = _cli(f"--source_dir={tmp_path}", f"--tfds_data_dir={tmp_path}/o", "--name=Bad")
  assert r.returncode != 0 and r.stderr.strip().splitlines() == [
    "error: --name='Bad'; a TFDS name is lower-case letters, digits and _"
  ]
  r = _cli(f"--source_dir={tmp_path}", f"--tfds_data_dir={tmp_path}/o")
  assert r.returncode != 0 and r.stderr.strip().splitlines() == [
    f"error: {tmp_path} has no non-empty split"
  ]
