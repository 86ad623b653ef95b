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
            (data_pipelines.describe over data_pipelines.readback: the object, its colour, shape, size and style,
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
import multiprocessing
import os
import queue
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from absl import app, flags
from tqdm import tqdm

from data_pipelines import describe, media, pipeline, schema, shards, tokenizer

PARTS = ".recaption_parts"
MAX_SIDE = 128  # The readback captioner reads larger frames at this size (the built-in data's).
REPORT = "recaption_report.json"
CAPTIONERS = ("readback", "command")

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
      side = max(frames.shape[1:3])
      if side > MAX_SIDE:  # Facts are relative to the frame; large footage reads as fast small.
        h, w = (max(2, round(d * MAX_SIDE / side)) for d in frames.shape[1:3])
        frames = pipeline.resize_frames(frames, h, w)
      out.append(describe.describe(describe.read_facts(frames, ex.fps), ex.source_id, ex.fps))
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
  vocab_size: int = 0  # 0: the input tokenizer's size, at least MIN_VOCAB.

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


MIN_VOCAB = 512  # Long captions in few pieces: 128 pieces took 75 tokens per caption, 512 ~35.


def _vocab_size(data_dir: str) -> int:
  """The input tokenizer's size, at least MIN_VOCAB."""
  try:
    return max(tokenizer.load(data_dir).vocab_size, MIN_VOCAB)
  except shards.DatasetError:
    return MIN_VOCAB


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
  flags.DEFINE_integer("vocab_size", 0, "Tokenizer size (0: the input's, at least 512).")


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
    if (
      config.captioner == "readback"
      and shards.read_manifest(config.data_dir).get("name") != "synthetic"
    ):
      print(
        "note: --captioner=readback describes the built-in domain (one flat object on a flat "
        "background); for other footage use --captioner=command with your captioner"
      )
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
