r"""Adds descriptive captions to every record of a dataset, beside its short captions.

  python -m data_pipelines.recaption --data_dir=out/demo/data --output_dir=out/demo/data_long
  python -m data_pipelines.recaption --data_dir=DATA --output_dir=OUT \
      --captioner=command --command="python my_vlm_captioner.py" --batch_size=8 --timeout=60

Sora trained on highly descriptive captions written by a captioning model for every
clip. This command writes them: the output directory is the input dataset with each
record's `descriptive_captions` filled (docs/data.md), the same shards and splits, and
a tokenizer retrained on short and descriptive captions together (the long captions
bring words the short ones never use). Training picks a descriptive caption with
probability `config.data.descriptive_captions`.

Captioners (`--captioner`):

  readback  for the built-in domain: reads what happens from the pixels
            (data_pipelines.readback: the object, its colour, shape, size and style,
            the background, where it starts and ends, which way and how fast it
            moves, and when it turns) and writes it as a few natural sentences whose
            wording varies per clip (seeded by the record's source id, so reruns
            write the same text).
  command   any captioner a team already runs (a vision-language model behind a
            script), started once per worker as `--command` and spoken to over JSON
            lines on its stdin and stdout:

              request   {"id": "3", "path": "/tmp/.../3.mp4", "kind": "video",
                         "fps": 8.0, "num_frames": 24, "width": 64, "height": 48,
                         "captions": ["a red circle moving left on a black background"]}
              response  {"id": "3", "caption": "A small red circle ..."}
                        or {"id": "3", "error": "why"}

            The media is written to a temporary file for the captioner to read (mp4
            for videos, png for images). Up to `--batch_size` requests are written
            before responses are read, in any order. A captioner that exits, hangs
            beyond `--timeout` seconds for a batch, answers with an error, or prints
            lines that are not responses costs only the clips it left unanswered:
            it is restarted and each such clip is asked again alone, up to
            `--retries` times; a clip that still fails keeps its short captions only
            and is listed in the report. Lines that are not JSON responses are counted
            and shown in the report (the first few), never fatal.

Shards run in parallel (`--num_workers`); each finished shard is recorded, so a rerun
after an interruption does only the rest (delete OUTPUT to start over). At the end,
OUTPUT/recaption_report.json holds counts, failures with their reasons, caption
lengths and a few examples.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import json
import math
import multiprocessing
import os
import queue
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np
from absl import app, flags
from tqdm import tqdm

from data_pipelines import media, readback, schema, shards, tokenizer, vocab

PARTS = ".recaption_parts"
REPORT = "recaption_report.json"
CAPTIONERS = ("readback", "command")

# ------------------------------------------------------------------------------
# What a clip shows, read from its pixels.
# ------------------------------------------------------------------------------

# Object side as a fraction of the shorter frame side (the built-in data draws 0.2-0.4).
SIZE_WORDS = ((0.27, "small"), (0.33, "medium-sized"), (math.inf, "large"))
# Speed in frame sides per second (the built-in data's terciles at 8 fps).
SPEED_WORDS = ((0.17, "slowly"), (0.27, "at a steady pace"), (math.inf, "quickly"))
DIRECTION_WORDS = {
  "moving left": "to the left",
  "moving right": "to the right",
  "moving up": "upward",
  "moving down": "downward",
}
# Thirds of the frame: (row, column) -> where.
POSITIONS = {
  (0, 0): "the top left corner",
  (0, 1): "the top edge",
  (0, 2): "the top right corner",
  (1, 0): "the left side",
  (1, 1): "the centre",
  (1, 2): "the right side",
  (2, 0): "the bottom left corner",
  (2, 1): "the bottom edge",
  (2, 2): "the bottom right corner",
}
STILL_TRAVEL = 0.08  # Displacement over a segment, in frame sides, below which it is still.
TURN_GAIN = 4.0  # A turn must fit the track this many times better than one straight line.


@dataclasses.dataclass(frozen=True)
class Facts:
  """What one clip shows. Positions are words of POSITIONS; None where unknown."""

  color: str | None
  shape: str | None
  background: str
  size: str | None  # A word of SIZE_WORDS.
  outlined: bool
  striped: bool
  kind: str  # "image" or "video".
  seconds: float  # Duration (0 for images).
  start: str | None
  end: str | None
  motion: str | None  # A vocab.MOTIONS word over the first segment; None for images.
  speed: str | None  # A word of SPEED_WORDS; None when still or an image.
  turn_frame: int | None = None  # The frame the object turns at, if it does.
  turn_motion: str | None = None
  turn_speed: str | None = None


def _word(value: float, table) -> str:
  return next(word for limit, word in table if value < limit)


def position(x: float, y: float, width: int, height: int) -> str:
  """Where (x, y) lies in a frame, as one of POSITIONS."""
  col = min(2, max(0, int(3 * x / width)))
  row = min(2, max(0, int(3 * y / height)))
  return POSITIONS[(row, col)]


def _segment(track: np.ndarray, times: np.ndarray, width: int, height: int, fps: float):
  """(motion, speed word, residual sum of squares) of the least-squares line through a
  segment of the centre track."""
  a = np.stack([np.ones_like(times), times], axis=1)
  coef, *_ = np.linalg.lstsq(a, track, rcond=None)  # [2, 2]: intercept, slope per axis
  sse = float(np.sum((a @ coef - track) ** 2))
  span = times[-1] - times[0]
  dx, dy = coef[1] * span / np.asarray([width, height])
  if max(abs(dx), abs(dy)) < STILL_TRAVEL:
    return vocab.STILL, None, sse
  if abs(dx) >= abs(dy):
    motion = "moving right" if dx > 0 else "moving left"
  else:
    motion = "moving down" if dy > 0 else "moving up"
  per_second = math.hypot(coef[1][0] / width, coef[1][1] / height) * fps
  return motion, _word(per_second, SPEED_WORDS), sse


def read_facts(frames: np.ndarray, fps: float) -> Facts:
  """Reads a clip's Facts from uint8 frames `[T, H, W, 3]` (an image: T = 1)."""
  got = readback.read_attributes(frames)
  t, h, w = frames.shape[:3]
  kind = "image" if t == 1 else "video"
  size = None
  if got["shape"] is not None and got["area"] > 0:
    fill = {"circle": math.pi / 4, "square": 1.0, "triangle": 0.5}[got["shape"]]
    size = _word(math.sqrt(got["area"] / fill) / min(h, w), SIZE_WORDS)
  found = [(i, c) for i, c in enumerate(got["centers"]) if c is not None]
  start = end = motion = speed = turn_frame = turn_motion = turn_speed = None
  if found:
    start = position(*found[0][1], w, h)
    end = position(*found[-1][1], w, h)
  if kind == "video" and len(found) >= 2:
    times = np.asarray([i for i, _ in found], np.float64)
    track = np.asarray([c for _, c in found], np.float64)
    motion, speed, sse = _segment(track, times, w, h, fps)
    # A turn: the split of the track into two straight segments that fits far better
    # than one line, with two different motions.
    best = None
    for k in range(2, len(found) - 1):
      m1, s1, e1 = _segment(track[:k], times[:k], w, h, fps)
      m2, s2, e2 = _segment(track[k - 1 :], times[k - 1 :], w, h, fps)
      if m1 != m2 and (best is None or e1 + e2 < best[0]):
        best = (e1 + e2, int(times[k - 1]), m1, s1, m2, s2)
    scale = (w * h) * 1e-4 * len(found)  # A floor: sub-pixel jitter is not a turn.
    if best is not None and sse > TURN_GAIN * (best[0] + scale):
      _, turn_frame, motion, speed, turn_motion, turn_speed = best
    if motion == vocab.STILL:
      speed = None
  return Facts(
    color=got["color"],
    shape=got["shape"],
    background=got["background"],
    size=size,
    outlined=bool(got["outlined"]),
    striped=bool(got["striped"]),
    kind=kind,
    seconds=t / fps if kind == "video" and fps > 0 else 0.0,
    start=start,
    end=end,
    motion=motion,
    speed=speed,
    turn_frame=turn_frame,
    turn_motion=turn_motion,
    turn_speed=turn_speed,
  )


# ------------------------------------------------------------------------------
# Facts -> sentences.
# ------------------------------------------------------------------------------

_OPENINGS = (
  "A {size}{color} {shape} sits near {start} of a {background}.",
  "On a {background}, a {size}{color} {shape} starts near {start}.",
  "The clip shows a {size}{color} {shape} on a {background}, beginning near {start}.",
  "There is a {size}{color} {shape} near {start} of a {background}.",
)
_IMAGE_OPENINGS = (
  "A {size}{color} {shape} sits near {start} of a {background}.",
  "A still image of a {size}{color} {shape} near {start} of a {background}.",
  "On a {background}, a {size}{color} {shape} rests near {start}.",
)
_MOVES = (
  "It moves {speed} {direction} and ends near {end}.",
  "It travels {speed} {direction}, finishing near {end}.",
  "It glides {speed} {direction} until it reaches {end}.",
)
_TURNS = (
  "After about {when:.1f} seconds it turns and moves {speed} {direction}, ending near {end}.",
  "Around frame {frame} it changes course and heads {direction} {speed}, ending near {end}.",
)
_STILLS = (
  "It stays still for the whole clip.",
  "It does not move at all.",
  "It remains in place, standing still.",
)
_LENGTHS = ("The clip lasts {seconds:.1f} seconds.", "The video is {seconds:.1f} seconds long.")
_NO_OBJECT = "A plain {background} with nothing on it."


def _background(f: Facts) -> str:
  if f.striped:
    return f"{f.background} background with horizontal stripes"
  return f"plain {f.background} background"


def describe(f: Facts, seed: str, fps: float = 0.0) -> str:
  """A few sentences stating the facts; the wording is drawn from `seed` (e.g. the
  record's source id), so the same record always reads the same."""
  rng = np.random.default_rng(zlib.crc32(seed.encode()))
  pick = lambda options: options[int(rng.integers(len(options)))]
  if f.color is None or f.shape is None:
    return _NO_OBJECT.format(background=_background(f)).capitalize()
  shape = f"hollow {f.shape}" if f.outlined else f.shape
  fields = dict(
    size=f"{f.size} " if f.size else "",
    color=f.color,
    shape=shape,
    background=_background(f),
    start=f.start,
  )
  if f.kind == "image":
    return pick(_IMAGE_OPENINGS).format(**fields)
  out = [pick(_OPENINGS).format(**fields)]
  if f.motion == vocab.STILL or f.motion is None:
    out.append(pick(_STILLS))
  elif f.turn_frame is None:
    direction = DIRECTION_WORDS[f.motion]
    out.append(pick(_MOVES).format(speed=f.speed, direction=direction, end=f.end))
  else:
    first = DIRECTION_WORDS.get(f.motion)
    out.append(
      "It stays still at first." if first is None else f"It first moves {f.speed} {first}."
    )
    second = DIRECTION_WORDS.get(f.turn_motion)
    if second is None:
      out.append(f"Around frame {f.turn_frame} it stops and stands still near {f.end}.")
    else:
      when = f.turn_frame / fps if fps > 0 else 0.0
      text = pick(_TURNS) if fps > 0 else _TURNS[1]
      out.append(
        text.format(when=when, frame=f.turn_frame, speed=f.turn_speed, direction=second, end=f.end)
      )
  if f.seconds > 0:
    out.append(pick(_LENGTHS).format(seconds=f.seconds))
  return " ".join(out)


def parse_description(text: str) -> dict[str, str | None]:
  """The facts a description written by `describe` states: color, shape, motion (the
  first), speed (the first), start and end (positions), background; None where absent."""
  low = text.lower()
  first = lambda words: min(
    ((low.find(w), w) for w in words if low.find(w) >= 0), default=(0, None)
  )[1]
  positions = sorted((m.start(), p) for p in POSITIONS.values() for m in re.finditer(p, low))
  motion = first(tuple(DIRECTION_WORDS.values()) + ("still", "does not move", "in place"))
  inverse = {v: k for k, v in DIRECTION_WORDS.items()}
  return {
    "color": first(vocab.COLORS),
    "shape": first(vocab.SHAPES),
    "background": first(vocab.BACKGROUNDS),
    "motion": inverse.get(motion, vocab.STILL if motion else None),
    "speed": first(tuple(w for _, w in SPEED_WORDS)),
    "start": positions[0][1] if positions else None,
    "end": positions[-1][1] if positions else None,
  }


# ------------------------------------------------------------------------------
# Captioners.
# ------------------------------------------------------------------------------


class CaptionError(Exception):
  """One clip could not be captioned; the message says why."""


class Readback:
  """Captions the built-in domain from its pixels."""

  def __call__(self, examples: Sequence[schema.Example]) -> list[str | CaptionError]:
    out: list[str | CaptionError] = []
    for ex in examples:
      try:
        frames = media.decode(ex)
      except Exception as e:  # A record whose media cannot be decoded costs that record.
        out.append(CaptionError(f"media: {type(e).__name__}: {e}"))
        continue
      out.append(describe(read_facts(frames, ex.fps), ex.source_id, ex.fps))
    return out

  def close(self) -> None:
    pass


class Command:
  """A captioner process spoken to over JSON lines (see the module docstring)."""

  def __init__(self, command: str, timeout: float, retries: int, batch_size: int):
    if not command.strip():
      raise ValueError("--captioner=command needs --command")
    self.argv = shlex.split(command)
    self.timeout, self.retries, self.batch_size = timeout, retries, batch_size
    self.proc: subprocess.Popen | None = None
    self.lines: queue.Queue[str | None] = queue.Queue()
    self.tmp = tempfile.mkdtemp(prefix="recaption-")
    self.garbage: list[str] = []  # Lines that were not responses (the first few kept).
    self.num_garbage = 0
    self.restarts = 0

  def _start(self) -> None:
    self.proc = subprocess.Popen(
      self.argv,
      stdin=subprocess.PIPE,
      stdout=subprocess.PIPE,
      stderr=subprocess.DEVNULL,
      text=True,
      bufsize=1,
      start_new_session=True,  # Killed as a group: a shell wrapper takes its child along.
    )
    self.lines = queue.Queue()
    out = self.proc.stdout

    def pump(q=self.lines):
      for line in out:
        q.put(line)
      q.put(None)  # The process closed its stdout (exited).

    threading.Thread(target=pump, daemon=True).start()

  def _stop(self) -> None:
    if self.proc is None:
      return
    with contextlib.suppress(ProcessLookupError, PermissionError):
      os.killpg(self.proc.pid, signal.SIGKILL)
    self.proc.wait()
    self.proc = None

  def _request(self, key: str, ex: schema.Example) -> dict[str, Any]:
    frames = media.decode(ex)
    if ex.is_image:
      path = os.path.join(self.tmp, f"{key}.png")
      media.write_png(path, frames[0])
    else:
      path = os.path.join(self.tmp, f"{key}.mp4")
      media.write_mp4(path, frames, ex.fps)
    return {
      "id": key,
      "path": path,
      "kind": "image" if ex.is_image else "video",
      "fps": ex.fps,
      "num_frames": ex.num_frames,
      "width": ex.width,
      "height": ex.height,
      "captions": list(ex.captions),
    }

  def _ask(self, requests: dict[str, dict]) -> tuple[dict[str, str], dict[str, str]]:
    """Sends requests; returns ({id: caption}, {id: why}) for those answered; the rest
    were left unanswered (the process is then stopped)."""
    if self.proc is None or self.proc.poll() is not None:
      self._stop()
      self._start()
      self.restarts += 1
    answers, errors = {}, {}
    try:
      for r in requests.values():
        self.proc.stdin.write(json.dumps(r) + "\n")
      self.proc.stdin.flush()
    except (BrokenPipeError, OSError):
      self._stop()
      return answers, errors
    deadline = time.monotonic() + self.timeout
    while len(answers) + len(errors) < len(requests):
      try:
        line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
      except queue.Empty:
        line = None
      if line is None:  # Timed out or exited: what is unanswered is retried.
        self._stop()
        break
      try:
        msg = json.loads(line)
        key = msg["id"] if isinstance(msg, dict) else None
      except (json.JSONDecodeError, KeyError, TypeError):
        key = None
      if key not in requests or key in answers or key in errors:
        self.num_garbage += 1
        if len(self.garbage) < 5:
          self.garbage.append(line.strip()[:200])
        continue
      caption = msg.get("caption")
      if isinstance(caption, str) and caption.strip():
        answers[key] = caption.strip()
      else:
        errors[key] = str(msg.get("error") or "a response without a caption")
    return answers, errors

  def __call__(self, examples: Sequence[schema.Example]) -> list[str | CaptionError]:
    out: list[str | CaptionError | None] = [None] * len(examples)
    requests = {}
    for i, ex in enumerate(examples):
      try:
        requests[str(i)] = self._request(str(i), ex)
      except Exception as e:
        out[i] = CaptionError(f"media: {type(e).__name__}: {e}")
    why: dict[str, str] = {}
    pending = list(requests)
    for start in range(0, len(pending), self.batch_size):
      batch = {k: requests[k] for k in pending[start : start + self.batch_size]}
      answers, errors = self._ask(batch)
      for k, text in answers.items():
        out[int(k)] = text
      # Unanswered or failed: alone, so one bad clip cannot cost its neighbours.
      for k in batch:
        if k in answers:
          continue
        why[k] = errors.get(k, f"no answer within {self.timeout:g} s (or the captioner exited)")
        for _ in range(self.retries):
          got, err = self._ask({k: batch[k]})
          if k in got:
            out[int(k)] = got[k]
            break
          why[k] = err.get(k, f"no answer within {self.timeout:g} s (or the captioner exited)")
        if out[int(k)] is None:
          out[int(k)] = CaptionError(why[k])
    for r in requests.values():
      with contextlib.suppress(OSError):
        os.remove(r["path"])
    return out  # type: ignore[return-value]

  def close(self) -> None:
    if self.proc is not None and self.proc.poll() is None:
      with contextlib.suppress(OSError):
        self.proc.stdin.close()
      with contextlib.suppress(subprocess.TimeoutExpired):
        self.proc.wait(timeout=5)
    self._stop()
    shutil.rmtree(self.tmp, ignore_errors=True)


# ------------------------------------------------------------------------------
# The run: shards in parallel, each recorded when done.
# ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Config:
  data_dir: str
  output_dir: str
  captioner: str = "readback"
  command: str = ""
  batch_size: int = 8
  timeout: float = 60.0
  retries: int = 1
  num_workers: int = 2
  vocab_size: int = 0  # 0: the input tokenizer's size (or 256 without one).

  def validate(self) -> Config:
    if self.captioner not in CAPTIONERS:
      raise ValueError(f"--captioner={self.captioner!r}; allowed: {', '.join(CAPTIONERS)}")
    if self.captioner == "command" and not self.command.strip():
      raise ValueError("--captioner=command needs --command='PROGRAM ARGS'")
    if os.path.abspath(self.data_dir) == os.path.abspath(self.output_dir):
      raise ValueError("--output_dir must differ from --data_dir (the input is left untouched)")
    for name in ("batch_size", "retries", "num_workers", "vocab_size"):
      low = 1 if name == "batch_size" else 0
      if getattr(self, name) < low:
        raise ValueError(f"--{name}={getattr(self, name)}; must be >= {low}")
    if not self.timeout > 0:
      raise ValueError(f"--timeout={self.timeout}; must be > 0")
    return self


def make_captioner(config: Config):
  if config.captioner == "readback":
    return Readback()
  return Command(config.command, config.timeout, config.retries, config.batch_size)


_progress = lambda n: None


def _init_worker(q) -> None:
  global _progress
  _progress = q.put


def run_shard(config: Config, name: str) -> dict[str, Any]:
  """Captions one shard into OUTPUT/name and records it; returns its part report."""
  start = time.time()
  captioner = make_captioner(config)
  failures, lengths, examples = [], [], []
  try:
    with shards.shard_writer(os.path.join(config.output_dir, name)) as writer:
      batch: list[schema.Example] = []

      def flush():
        for ex, text in zip(batch, captioner(batch), strict=True):
          if isinstance(text, CaptionError):
            failures.append({"source_id": ex.source_id, "reason": str(text)})
          else:
            ex = dataclasses.replace(ex, descriptive_captions=(text,))
            lengths.append(len(text.split()))
            if len(examples) < 3:
              examples.append({"caption": ex.captions[0], "descriptive": text})
          writer.add(ex)
        _progress(len(batch))
        batch.clear()

      for ex in shards.read_shard(os.path.join(config.data_dir, name)):
        batch.append(ex)
        if len(batch) == config.batch_size:
          flush()
      if batch:
        flush()
      num_records = writer.num_records
  finally:
    captioner.close()
  report = {
    "shard": name,
    "num_records": num_records,
    "captioned": num_records - len(failures),
    "failures": failures,
    "words": lengths,
    "examples": examples,
    "seconds": round(time.time() - start, 3),
  }
  if isinstance(captioner, Command):
    report.update(
      garbage_lines=captioner.num_garbage, garbage=captioner.garbage, restarts=captioner.restarts
    )
  shards.atomic_write_json(os.path.join(config.output_dir, PARTS, name + ".json"), report)
  return report


def _done(config: Config, name: str) -> dict[str, Any] | None:
  try:
    with open(os.path.join(config.output_dir, PARTS, name + ".json")) as f:
      report = json.load(f)
  except (OSError, json.JSONDecodeError):
    return None
  return report if os.path.exists(os.path.join(config.output_dir, name)) else None


def run(config: Config) -> dict[str, Any]:
  """Recaptions every shard of every split; returns the report (also written to
  OUTPUT/recaption_report.json)."""
  config.validate()
  manifest = shards.read_manifest(config.data_dir)
  names = [s for split in manifest["splits"].values() for s in split["shards"]]
  total = {n: shards.count_records(os.path.join(config.data_dir, n)) for n in names}
  os.makedirs(os.path.join(config.output_dir, PARTS), exist_ok=True)
  reports = {n: r for n in names if (r := _done(config, n)) is not None}
  todo = [n for n in names if n not in reports]
  start = time.time()
  with tqdm(
    total=sum(total.values()),
    initial=sum(r["num_records"] for r in reports.values()),
    unit="clip",
    desc="recaption",
    mininterval=1.0 if sys.stderr.isatty() else 60.0,
  ) as bar:
    if config.num_workers == 0 or len(todo) <= 1:
      global _progress
      _progress = bar.update
      for n in todo:
        reports[n] = run_shard(config, n)
    elif todo:
      ctx = multiprocessing.get_context("spawn")
      q = ctx.SimpleQueue()
      stop = threading.Event()

      def listen():
        while not stop.is_set() or not q.empty():
          if q.empty():
            time.sleep(0.05)
            continue
          bar.update(q.get())

      listener = threading.Thread(target=listen, daemon=True)
      listener.start()
      try:
        workers = min(config.num_workers, len(todo))
        with concurrent.futures.ProcessPoolExecutor(
          workers, mp_context=ctx, initializer=_init_worker, initargs=(q,)
        ) as pool:
          futures = {pool.submit(run_shard, config, n): n for n in todo}
          for fut in concurrent.futures.as_completed(futures):
            reports[futures[fut]] = fut.result()
      finally:
        stop.set()
        listener.join()
  report = _summarize(config, [reports[n] for n in names], time.time() - start)
  # The dataset: the same splits and shards; a tokenizer that knows the long captions.
  out_manifest = dict(manifest)
  out_manifest.pop("tokenizer", None)
  out_manifest["recaption"] = {
    "source": os.path.abspath(config.data_dir),
    "captioner": config.captioner,
    "command": config.command if config.captioner == "command" else "",
    "captioned": report["captioned"],
    "failed": report["failed"],
  }
  shards.write_manifest(config.output_dir, out_manifest)
  vocab_size = config.vocab_size or _vocab_size(config.data_dir)
  tokenizer.train(config.output_dir, vocab_size)
  report["tokenizer"] = {"vocab_size": vocab_size, **_lengths(config.output_dir)}
  shards.atomic_write_json(os.path.join(config.output_dir, REPORT), report)
  return report


def _vocab_size(data_dir: str) -> int:
  try:
    return tokenizer.load(data_dir).vocab_size
  except shards.DatasetError:
    return 256


def _lengths(data_dir: str) -> dict[str, Any]:
  tok = tokenizer.load(data_dir)
  short, long = [], []
  for path in shards.split_files(data_dir, "train"):
    for ex in shards.read_shard(path):
      short.extend(ex.captions[:1])
      long.extend(ex.descriptive_captions)
      if len(short) >= 500:
        break
    if len(short) >= 500:
      break
  return {
    "short_tokens": tokenizer.caption_lengths(tok, short) if short else {},
    "descriptive_tokens": tokenizer.caption_lengths(tok, long) if long else {},
  }


def _summarize(config: Config, parts: list[dict], seconds: float) -> dict[str, Any]:
  words = [w for p in parts for w in p["words"]]
  failures = [f for p in parts for f in p["failures"]]
  reasons: dict[str, int] = {}
  for f in failures:
    reasons[f["reason"]] = reasons.get(f["reason"], 0) + 1
  out = {
    "data_dir": os.path.abspath(config.data_dir),
    "captioner": config.captioner,
    "num_records": sum(p["num_records"] for p in parts),
    "captioned": sum(p["captioned"] for p in parts),
    "failed": len(failures),
    "failure_reasons": reasons,
    "failures": failures[:100],
    "words": {
      "mean": round(float(np.mean(words)), 1) if words else 0.0,
      "max": int(max(words)) if words else 0,
    },
    "examples": [e for p in parts for e in p["examples"]][:6],
    "seconds": round(seconds, 1),
  }
  if config.captioner == "command":
    out["garbage_lines"] = sum(p.get("garbage_lines", 0) for p in parts)
    out["garbage"] = [g for p in parts for g in p.get("garbage", [])][:5]
    out["restarts"] = sum(p.get("restarts", 0) for p in parts)
  return out


# ------------------------------------------------------------------------------
# Command line.
# ------------------------------------------------------------------------------

FLAGS = flags.FLAGS


def define_flags() -> None:
  flags.DEFINE_string("data_dir", None, "Dataset to recaption (left untouched).")
  flags.DEFINE_string("output_dir", None, "Where the recaptioned dataset goes.")
  flags.DEFINE_enum("captioner", "readback", list(CAPTIONERS), "Who writes the captions.")
  flags.DEFINE_string("command", "", "--captioner=command: the program and its arguments.")
  flags.DEFINE_integer("batch_size", 8, "Clips per request batch.")
  flags.DEFINE_float("timeout", 60.0, "--captioner=command: seconds a batch may take.")
  flags.DEFINE_integer("retries", 1, "--captioner=command: tries again for a clip alone.")
  flags.DEFINE_integer("num_workers", 2, "Shards captioned at once (0: in this process).")
  flags.DEFINE_integer("vocab_size", 0, "Tokenizer size (0: the input tokenizer's).")


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments {argv[1:]}")
  for name in ("data_dir", "output_dir"):
    if not getattr(FLAGS, name):
      sys.exit(f"error: --{name} is required")
  config = Config(
    data_dir=FLAGS.data_dir,
    output_dir=FLAGS.output_dir,
    captioner=FLAGS.captioner,
    command=FLAGS.command,
    batch_size=FLAGS.batch_size,
    timeout=FLAGS.timeout,
    retries=FLAGS.retries,
    num_workers=FLAGS.num_workers,
    vocab_size=FLAGS.vocab_size,
  )
  try:
    report = run(config)
  except (ValueError, shards.DatasetError) as e:
    sys.exit(f"error: {e}")
  print(
    f"captioned {report['captioned']} of {report['num_records']} clips in "
    f"{report['seconds']:.0f} s; {report['failed']} failed"
    + (f" ({report['failure_reasons']})" if report["failed"] else "")
  )
  if report.get("garbage_lines"):
    print(f"the captioner printed {report['garbage_lines']} lines that were not responses")
  for e in report["examples"][:2]:
    print(f"  {e['caption']!r}\n    -> {e['descriptive']!r}")
  tok = report["tokenizer"]["descriptive_tokens"]
  if tok:
    print(
      f"descriptive captions: {report['words']['mean']:.0f} words, {tok['median']} tokens "
      f"median ({tok['p99']} p99): set config.data.max_text_len to hold them"
    )
  print(f"dataset: {config.output_dir} (report: {os.path.join(config.output_dir, REPORT)})")


if __name__ == "__main__":
  define_flags()
  app.run(main)
