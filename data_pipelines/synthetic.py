r"""Writes the built-in synthetic captioned video dataset.

  python -m data_pipelines.synthetic --output_dir=DIR --num_examples=N --seed=S

Each example is one coloured shape on a plain background, moving left, right,
up or down in a straight line or standing still, captioned exactly

  a {color} {shape} {motion} on a {background} background    (videos)
  a {color} {shape} on a {background} background             (images, 1 frame)

at a random size and aspect ratio (1:1, 16:9, 9:16, 4:3, 3:4) and length.
--style=outlined|striped draws every example of both splits in a style the
default data never shows (the object as a ring, or a banded background) and
ends every caption in the style's phrase (vocab.STYLES), e.g.

  a red circle moving left on a black background hollow

Example i is then example i of the unstyled dataset, restyled.
Frames are stored losslessly ("raw+zlib") with the ground truth in the
example's attributes. The (color, shape) pairs of --heldout never appear in
the train split; the eval split holds only them, to measure compositional
generalization.

Example i of a split is a pure function of (seed, split, i), so the output does
not depend on --num_workers, and shards are written in parallel, atomically.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import multiprocessing
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from absl import app, flags
from tqdm import tqdm

from data_pipelines import media, render, schema, shards, vocab

SPLITS = ("train", "eval")  # Index in this tuple seeds the split's generator.
DEFAULT_HELDOUT = "red:triangle,blue:circle,yellow:square,cyan:triangle"


@dataclasses.dataclass(frozen=True)
class Options:
  """Every generator setting; the fields are the command's flags, recorded in the manifest."""

  output_dir: str
  num_examples: int = 10_000
  num_eval: int = -1  # -1: max(64, num_examples // 20).
  seed: int = 0
  heldout: str = DEFAULT_HELDOUT
  paraphrases: bool = False
  fps: float = 8.0
  min_side: int = 16
  max_side: int = 128
  min_frames: int = 8
  max_frames: int = 32
  image_fraction: float = 0.25
  aspect_ratios: str = ",".join(render.ASPECT_RATIOS)
  min_object: float = 0.2
  max_object: float = 0.4
  min_travel: float = 0.4
  max_travel: float = 0.9
  num_workers: int = 0  # 0: os.cpu_count().
  examples_per_shard: int = 500
  style: str = ""  # One of render.STYLES; "": none (the default data, unchanged).
  style_fraction: float = 1.0  # With a style: the fraction of examples drawn in it.
  # Videos whose object changes direction once, with a time-stamped caption (0: none).
  event_fraction: float = 0.0

  @property
  def eval_examples(self) -> int:
    return max(64, self.num_examples // 20) if self.num_eval < 0 else self.num_eval

  def scene_config(self) -> render.SceneConfig:
    return render.SceneConfig(
      min_side=self.min_side,
      max_side=self.max_side,
      min_frames=self.min_frames,
      max_frames=self.max_frames,
      image_fraction=self.image_fraction,
      aspect_ratios=tuple(r.strip() for r in self.aspect_ratios.split(",") if r.strip()),
      min_object=self.min_object,
      max_object=self.max_object,
      min_travel=self.min_travel,
      max_travel=self.max_travel,
      style=self.style,
    )


def parse_heldout(spec: str) -> list[tuple[str, str]]:
  """'red:triangle,blue:circle' -> [('red', 'triangle'), ('blue', 'circle')]."""
  pairs = []
  for item in (s.strip() for s in spec.split(",")):
    if not item:
      continue
    color, sep, shape = (v.strip() for v in item.partition(":"))
    if not sep:
      raise ValueError(f"--heldout={spec!r}: {item!r} is not color:shape, e.g. red:triangle")
    if color not in vocab.COLORS:
      raise ValueError(
        f"--heldout={spec!r}: unknown color {color!r}; allowed: {', '.join(vocab.COLORS)}"
      )
    if shape not in vocab.SHAPES:
      raise ValueError(
        f"--heldout={spec!r}: unknown shape {shape!r}; allowed: {', '.join(vocab.SHAPES)}"
      )
    if (color, shape) not in pairs:
      pairs.append((color, shape))
  return pairs


def split_combos(heldout: Sequence[tuple[str, str]]) -> dict[str, list[tuple[str, str]]]:
  """The (color, shape) pairs each split draws from: eval only the held-out ones."""
  every = [(c, s) for c in vocab.COLORS for s in vocab.SHAPES]
  train = [p for p in every if p not in heldout]
  return {"train": train, "eval": list(heldout) or every}


def validate(opts: Options) -> None:
  """Raises ValueError naming the flag, the value given and what is allowed."""
  if not opts.output_dir:
    raise ValueError("--output_dir is required")
  if opts.num_examples < 1:
    raise ValueError(f"--num_examples={opts.num_examples}; must be >= 1")
  if opts.num_eval < -1:
    raise ValueError(f"--num_eval={opts.num_eval}; must be >= 0 (or -1 for the default)")
  if opts.seed < 0:
    raise ValueError(f"--seed={opts.seed}; must be >= 0")
  if not opts.fps > 0:
    raise ValueError(f"--fps={opts.fps}; must be > 0")
  if opts.num_workers < 0:
    raise ValueError(f"--num_workers={opts.num_workers}; must be >= 0 (0: all cores)")
  if not 0.0 <= opts.event_fraction <= 1.0:
    raise ValueError(f"--event_fraction={opts.event_fraction}; must be in [0, 1]")
  if not 0.0 < opts.style_fraction <= 1.0:
    raise ValueError(f"--style_fraction={opts.style_fraction}; must be in (0, 1]")
  if opts.examples_per_shard < 1:
    raise ValueError(f"--examples_per_shard={opts.examples_per_shard}; must be >= 1")
  for ratio in opts.scene_config().aspect_ratios:
    if ratio.count(":") != 1:
      raise ValueError(f"--aspect_ratios={opts.aspect_ratios!r}; {ratio!r} is not width:height")
  opts.scene_config().validate()
  heldout = parse_heldout(opts.heldout)
  if not split_combos(heldout)["train"]:
    raise ValueError(f"--heldout={opts.heldout!r} holds out every (color, shape); train is empty")


# ------------------------------------------------------------------------------
# One example, one shard.
# ------------------------------------------------------------------------------


def make_example(
  seed: int,
  split: str,
  index: int,
  config: render.SceneConfig,
  combos: Sequence[tuple[str, str]],
  fps: float,
  paraphrases: bool = False,
  style_fraction: float = 1.0,
  event_fraction: float = 0.0,
) -> schema.Example:
  """Example `index` of `split`: a pure function of its arguments.

  With a style and `style_fraction` < 1, whether this example is styled is drawn
  from its own generator, so the scene itself is the same either way.
  """
  if config.style and style_fraction < 1.0:
    pick = np.random.default_rng([seed, SPLITS.index(split), index, 1]).uniform()
    if pick >= style_fraction:
      config = dataclasses.replace(config, style="")
  rng = np.random.default_rng([seed, SPLITS.index(split), index])
  scene = render.sample_scene(rng, config, combos)
  if event_fraction > 0:  # Its own generator: the scenes without events stay as they were.
    event_rng = np.random.default_rng([seed, SPLITS.index(split), index, 2])
    if event_rng.uniform() < event_fraction:
      scene = render.with_event(scene, event_rng)
  data, fmt = media.encode_raw(render.draw(scene))
  captions = [scene.caption]
  if paraphrases:
    captions += vocab.paraphrases(
      scene.color, scene.shape, scene.motion, scene.background, scene.style
    )
  return schema.Example(
    media=data,
    media_format=fmt,
    fps=0.0 if scene.num_frames == 1 else float(fps),
    num_frames=scene.num_frames,
    height=scene.height,
    width=scene.width,
    captions=tuple(captions),
    source_id=f"synthetic/{split}/{index:06d}",
    attributes=scene.attributes(),
    caption_windows=(scene.caption_windows,) if scene.event else (),
  )


@dataclasses.dataclass(frozen=True)
class _ShardTask:
  opts: Options
  split: str
  shard: int
  num_shards: int
  start: int
  stop: int

  @property
  def path(self) -> str:
    return os.path.join(
      self.opts.output_dir, shards.shard_name(self.split, self.shard, self.num_shards)
    )


def _write_shard(task: _ShardTask, progress: Callable[[int], None]) -> dict[str, Any]:
  """Writes examples [start, stop) of a split to one shard; returns its SizeStats dict."""
  opts = task.opts
  config = opts.scene_config()
  combos = split_combos(parse_heldout(opts.heldout))[task.split]
  stats = shards.SizeStats()
  with shards.shard_writer(task.path) as writer:
    for i in range(task.start, task.stop):
      ex = make_example(
        opts.seed,
        task.split,
        i,
        config,
        combos,
        opts.fps,
        opts.paraphrases,
        opts.style_fraction,
        opts.event_fraction,
      )
      writer.add(ex)
      stats.add(ex.height, ex.width, ex.num_frames)
      progress(1)
  return stats.to_dict()


_counter = None  # Examples written by all workers; set in each worker process.


def _init_worker(counter) -> None:
  global _counter
  _counter = counter


def _count(n: int) -> None:
  with _counter.get_lock():
    _counter.value += n


def _write_shard_in_worker(task: _ShardTask) -> dict[str, Any]:
  return _write_shard(task, _count)


def _tasks(opts: Options) -> list[_ShardTask]:
  tasks = []
  for split, n in (("train", opts.num_examples), ("eval", opts.eval_examples)):
    num_shards = -(-n // opts.examples_per_shard)
    for s in range(num_shards):
      start = s * opts.examples_per_shard
      tasks.append(
        _ShardTask(opts, split, s, num_shards, start, min(n, start + opts.examples_per_shard))
      )
  return tasks


# ------------------------------------------------------------------------------
# The whole dataset.
# ------------------------------------------------------------------------------


def generate(opts: Options, show_progress: bool = True) -> dict[str, Any]:
  """Writes every shard and the manifest of `opts.output_dir`; returns the manifest.

  Raises:
    ValueError: an option is invalid (the message names the flag).
  """
  validate(opts)
  os.makedirs(opts.output_dir, exist_ok=True)
  manifest_path = os.path.join(opts.output_dir, shards.MANIFEST)
  if os.path.exists(manifest_path):  # Never leave a manifest beside shards it does not describe.
    os.remove(manifest_path)

  tasks = _tasks(opts)
  total = sum(t.stop - t.start for t in tasks)
  workers = min(opts.num_workers or os.cpu_count() or 1, len(tasks))
  bar = tqdm(
    total=total,
    unit="ex",
    desc="synthetic",
    disable=not show_progress,
    smoothing=0.1,
    mininterval=0.5 if sys.stderr.isatty() else 60.0,  # Off a terminal: a line a minute.
  )
  results: dict[int, dict[str, Any]] = {}
  if workers <= 1:
    for k, task in enumerate(tasks):
      results[k] = _write_shard(task, bar.update)
  else:
    # spawn, not fork: the caller may hold threads (jax, grain) that fork would break.
    ctx = multiprocessing.get_context("spawn")
    counter = ctx.Value("q", 0)
    with concurrent.futures.ProcessPoolExecutor(
      workers, mp_context=ctx, initializer=_init_worker, initargs=(counter,)
    ) as pool:
      futures = {pool.submit(_write_shard_in_worker, t): k for k, t in enumerate(tasks)}
      pending = set(futures)
      while pending:
        done, pending = concurrent.futures.wait(pending, timeout=0.2)
        for f in done:
          results[futures[f]] = f.result()
        bar.update(counter.value - bar.n)
  bar.close()

  splits = {}
  for split in SPLITS:
    stats = shards.SizeStats()
    paths = []
    for k, task in enumerate(tasks):
      if task.split == split:
        stats.merge(results[k])
        paths.append(task.path)
    splits[split] = shards.split_entry(paths, stats)
  manifest = {
    "name": "synthetic",
    "splits": splits,
    "tokenizer": None,
    "generator": dataclasses.asdict(opts),
    "vocabulary": {
      "colors": {k: list(v) for k, v in vocab.COLOR_RGB.items()},
      "shapes": list(vocab.SHAPES),
      "motions": list(vocab.MOTIONS),
      "backgrounds": {k: list(v) for k, v in vocab.BACKGROUND_RGB.items()},
      "caption_video": vocab.VIDEO_TEMPLATE,
      "caption_image": vocab.IMAGE_TEMPLATE,
      "styles": dict(vocab.STYLES),
    },
    "heldout": [list(p) for p in parse_heldout(opts.heldout)],
  }
  shards.write_manifest(opts.output_dir, manifest)
  return manifest


# ------------------------------------------------------------------------------
# Command line.
# ------------------------------------------------------------------------------

_DEFAULTS = Options(output_dir="")
_HELP = {
  "output_dir": "Dataset directory to write (shards + manifest.json).",
  "num_examples": "Examples in the train split.",
  "num_eval": "Examples in the eval split (held-out combinations); -1: max(64, num_examples // 20).",
  "seed": "Example i of a split is determined by (seed, split, i).",
  "heldout": "Comma-separated color:shape pairs kept out of train, making up eval ('': none; eval then draws from every pair).",
  "paraphrases": "Add paraphrased captions after the canonical one.",
  "fps": "Frame rate recorded for videos.",
  "min_side": "Smallest frame side in pixels.",
  "max_side": "Largest frame side in pixels.",
  "min_frames": "Fewest frames of a video (images have 1).",
  "max_frames": "Most frames of a video.",
  "image_fraction": "Fraction of examples that are 1-frame images.",
  "aspect_ratios": "Comma-separated width:height ratios to draw sizes from.",
  "min_object": "Smallest object side as a fraction of the frame's shorter side.",
  "max_object": "Largest object side as a fraction of the frame's shorter side.",
  "min_travel": "Least distance moved over a clip, as a fraction of the room the object has.",
  "max_travel": "Most distance moved over a clip, as a fraction of the room the object has (<= 1).",
  "num_workers": "Processes writing shards; 0: os.cpu_count().",
  "examples_per_shard": "Examples per ArrayRecord shard.",
  "style": f"Visual style of every example, its phrase ending each caption: "
  f"{', '.join(f'{k} ({v!r})' for k, v in render.STYLES.items())}; '': none.",
  "style_fraction": "With --style: the fraction of examples drawn in it (the rest plain), "
  "e.g. to train a style adapter that keeps the base's behaviour on plain prompts.",
  "event_fraction": "Fraction of moving videos whose object changes direction once, in the "
  "middle third, with a second, time-stamped caption (caption_windows); the others are "
  "unchanged.",
}
_DEFINE = {
  int: flags.DEFINE_integer,
  float: flags.DEFINE_float,
  bool: flags.DEFINE_bool,
  str: flags.DEFINE_string,
}
_FLAGS = {
  f.name: _DEFINE[type(getattr(_DEFAULTS, f.name))](
    f.name,
    None if f.name == "output_dir" else getattr(_DEFAULTS, f.name),
    _HELP[f.name],
  )
  for f in dataclasses.fields(Options)
}


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments {' '.join(argv[1:])}")
  opts = Options(**{name: flag.value for name, flag in _FLAGS.items()})
  if not opts.output_dir:
    sys.exit("error: --output_dir is required")
  try:
    validate(opts)
  except ValueError as e:
    sys.exit(f"error: {e}")
  manifest = generate(opts)
  splits = manifest["splits"]
  size = sum(
    os.path.getsize(os.path.join(opts.output_dir, s)) for v in splits.values() for s in v["shards"]
  )
  print(
    f"synthetic: {splits['train']['num_examples']} train + {splits['eval']['num_examples']} eval "
    f"examples, {size / 2**20:.1f} MiB -> {opts.output_dir}"
  )


if __name__ == "__main__":
  app.run(main)
