r"""Ingests real videos and images with captions into ArrayRecord shards.

  python -m data_pipelines.ingest --input=DIR_OR_GLOB --captions=FILE --output_dir=DIR

Inputs: a directory (searched recursively; dot-files, the caption file and the
output directory are left out) or a glob (`'clips/**/*.mp4'`; caption paths are
then relative to the glob's fixed leading directory). Videos: mp4 m4v mov mkv
webm (PyAV); images: png jpg jpeg webp (Pillow). Every other file found is
reported as an unsupported extension. Captions: see `data_pipelines/captions.py`
(CSV `path,caption[,caption2...]` or JSONL).

Storage. A video is kept whole when --fps leaves its rate unchanged and it has
at most --max_clip_frames frames (or no limit is set): its original file bytes
are stored (media_format from the container: mp4, mov, mkv, webm). An image is
stored as its original png/jpeg/webp bytes. Otherwise the video becomes clips:
--fps resamples (each output tick takes the nearest source frame), then the
frames are cut into --max_clip_frames clips (the first only, or all with
--split_clips), and each clip is re-encoded: --clip_format=mp4 (H.264 crf 18,
lossy; odd sides are edge-padded to even, and the mp4's own rate is rounded to
an integer while the record keeps the exact fps) or --clip_format=raw
(lossless raw+zlib). A clip's source_id is `PATH#clip=I` and clip_start its
start in seconds. --store=raw stores every record, whole or clipped, as
raw+zlib. Every record is decoded completely before it is written, by the same
functions readers use, and num_frames/height/width come from that decode.

Output in --output_dir:
  {split}-{i:05d}-of-{n:05d}.array_record  schema.Example records
  manifest.json                            shards, size histograms, flags
  ingest_report.json                       counts, and every skipped input with its reason
  ingest_plan.json, ingest_parts/*.json    the plan and per-shard reports (for resuming)

The sorted input list is cut into shards of --files_per_shard files, and
--num_workers processes each write whole shards. A shard and its part report
are written atomically; a rerun with the same inputs, captions and options
skips every finished shard (a different plan in --output_dir is refused).

The report counts as inputs the files found plus caption rows that name no
file or cannot be parsed; --max_error_fraction compares skipped/inputs.
Bad inputs are skipped, never half-written; reasons: unsupported-extension,
unreadable (broken symlink, directory, I/O error), zero-byte, wrong-type
(content is not what the extension says), corrupt (includes truncated),
unsupported-content (animated image, frame size changes), too-small,
too-large (also decompression bombs, refused from the header), too-many-frames,
too-short, missing-caption, duplicate-caption, empty-caption,
bad-caption-encoding, bad-caption-row, caption-without-file, worker-crash
(decoding the file killed its worker process, e.g. a decoder segfault or the
out-of-memory killer, confirmed by a rerun of its shard alone), internal-error.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import glob
import json
import math
import multiprocessing
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from absl import app, flags, logging
from tqdm import tqdm

from data_pipelines import captions as captions_lib
from data_pipelines import probe, schema, shards

PLAN = "ingest_plan.json"
REPORT = "ingest_report.json"
PARTS = "ingest_parts"
PLAN_VERSION = 1
WORKER_CRASH = "worker-crash"


class IngestError(ValueError):
  """A usage or setup problem; the command line prints it as one line."""


@dataclasses.dataclass(frozen=True)
class Config:
  """One ingest run (the command-line flags)."""

  input: str
  captions: str
  output_dir: str
  split: str = "train"
  files_per_shard: int = 64
  num_workers: int = 1  # 0: in this process (no crash isolation; for debugging).
  max_error_fraction: float | None = None
  options: probe.Options = probe.Options()


# ------------------------------------------------------------------------------
# Inputs.
# ------------------------------------------------------------------------------


def find_inputs(pattern: str, exclude: Sequence[str]) -> tuple[str, list[str]]:
  """(root, sorted absolute paths) of the inputs named by a directory or glob.

  `exclude`: absolute paths (files or directories) never taken as inputs.
  """
  exclude = [os.path.abspath(p) for p in exclude]
  if os.path.isdir(pattern):
    root = pattern
    found = _walk(pattern, exclude)
  elif glob.has_magic(pattern):
    parts = pattern.split(os.sep)
    fixed = []
    for p in parts:
      if glob.has_magic(p):
        break
      fixed.append(p)
    root = os.sep.join(fixed) or (os.sep if pattern.startswith(os.sep) else ".")
    found = []
    for m in glob.glob(pattern, recursive=True):
      if os.path.isdir(m) and probe.kind_of(m) is None:
        found += _walk(m, exclude)  # A matched plain directory: everything under it.
      elif not _excluded(os.path.abspath(m), exclude):
        found.append(os.path.abspath(m))
  elif os.path.lexists(pattern):
    root = os.path.dirname(pattern) or "."
    found = [os.path.abspath(pattern)]
  else:
    raise IngestError(f"--input={pattern}: no such file or directory")
  root = os.path.abspath(root)
  unique = sorted(set(found), key=lambda p: os.path.relpath(p, root))
  return root, unique


def _excluded(path: str, exclude: Sequence[str]) -> bool:
  return any(path == e or path.startswith(e + os.sep) for e in exclude)


def _walk(top: str, exclude: Sequence[str]) -> list[str]:
  found = []
  unfollowed = 0

  def on_error(e: OSError) -> None:
    logging.warning("cannot list %s: %s", e.filename, e.strerror)

  for dirpath, dirnames, filenames in os.walk(top, onerror=on_error):
    dirpath = os.path.abspath(dirpath)
    keep = []
    for d in sorted(dirnames):
      full = os.path.join(dirpath, d)
      if d.startswith(".") or _excluded(full, exclude):
        continue
      if probe.kind_of(d) is not None:
        found.append(full)  # A directory named like media: reported as unreadable.
      elif os.path.islink(full):
        unfollowed += 1
        continue
      keep.append(d)
    dirnames[:] = keep
    for f in filenames:
      full = os.path.join(dirpath, f)
      if not f.startswith(".") and not _excluded(full, exclude):
        found.append(full)
  if unfollowed:
    logging.warning("%d symlinked directories under %s were not followed", unfollowed, top)
  return found


# ------------------------------------------------------------------------------
# Plan: which files go into which shard; fixed on the first run.
# ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FileTask:
  path: str  # Absolute.
  rel: str  # Relative to the input root: the source_id and the report's name.
  captions: tuple[str, ...]
  problem: tuple[str, str] | None  # (reason, detail) from the caption file.
  windows: tuple[tuple[str, int, int], ...] = ()  # A time-stamped caption (source frames).


@dataclasses.dataclass(frozen=True)
class ShardTask:
  index: int
  name: str  # The shard's file name.
  output_dir: str
  files: tuple[FileTask, ...]
  options: probe.Options
  crashed: frozenset[int] = frozenset()  # File indices that killed a worker.


def _plan_options(config: Config) -> dict[str, Any]:
  opts = dataclasses.asdict(config.options)
  opts.pop("decoder_threads")  # Does not change the output.
  return {"split": config.split, "files_per_shard": config.files_per_shard, **opts}


def _check_plan(config: Config, plan: dict[str, Any]) -> None:
  """Writes the plan, or refuses one on disk that differs."""
  path = os.path.join(config.output_dir, PLAN)
  out = config.output_dir
  if not os.path.exists(path):
    if os.path.exists(os.path.join(out, shards.MANIFEST)) or glob.glob(
      os.path.join(glob.escape(out), "*.array_record")
    ):
      raise IngestError(
        f"--output_dir={out} already holds a dataset that this ingest did not plan "
        f"(no {PLAN}); use a new or empty directory"
      )
    shards.atomic_write_json(path, plan)
    return
  try:
    with open(path) as f:
      old = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise IngestError(f"{path} is unreadable ({e}); delete it or use a new --output_dir") from None
  hint = f"use a new --output_dir or delete {out}"
  if old.get("inputs") != plan["inputs"]:
    a, b = old.get("inputs") or [], plan["inputs"]
    diff = next(((x, y) for x, y in zip(a, b) if x != y), None)
    what = (
      f"first difference: {diff[0]!r} then, {diff[1]!r} now"
      if diff
      else "one list extends the other"
    )
    raise IngestError(
      f"--output_dir={out} holds a plan for different inputs ({len(a)} files planned, "
      f"{len(b)} found now; {what}); {hint}"
    )
  if old.get("captions_sha256") != plan["captions_sha256"]:
    raise IngestError(f"--output_dir={out} was planned with a different caption file; {hint}")
  changed = [
    f"--{k}={old.get('options', {}).get(k)!r} then, {v!r} now"
    for k, v in plan["options"].items()
    if old.get("options", {}).get(k) != v
  ]
  if changed:
    raise IngestError(
      f"--output_dir={out} was planned with other flags ({'; '.join(changed)}); {hint}"
    )


def _shard_done(output_dir: str, name: str) -> dict[str, Any] | None:
  """The part report of a finished shard, or None if it must be (re)done."""
  part = os.path.join(output_dir, PARTS, name + ".json")
  try:
    with open(part) as f:
      report = json.load(f)
  except (OSError, json.JSONDecodeError):
    return None
  if report.get("num_records") and not os.path.exists(os.path.join(output_dir, name)):
    return None  # The shard itself was deleted.
  return report


# ------------------------------------------------------------------------------
# Worker: one shard.
# ------------------------------------------------------------------------------

_progress: Callable[[tuple], None] = lambda msg: None
# Test hook: a worker dies abruptly (as on a decoder segfault) on a file of this name.
_CRASH_ENV = "SORA_JAX_INGEST_CRASH_ON"


def _init_worker(conn) -> None:
  global _progress
  _progress = conn.send


def run_shard(task: ShardTask) -> dict[str, Any]:
  """Writes one shard and its part report; never raises for a bad input file."""
  start = time.time()
  stats = shards.SizeStats()
  skipped = []
  input_bytes = 0
  path = os.path.join(task.output_dir, task.name)
  with shards.shard_writer(path) as writer:
    for i, f in enumerate(task.files):
      _progress(("start", task.index, i))
      try:
        if i in task.crashed:
          raise probe.Skip(WORKER_CRASH, "decoding it killed the worker process")
        if multiprocessing.parent_process() and os.environ.get(_CRASH_ENV) == os.path.basename(
          f.path
        ):
          os._exit(70)
        examples = probe.examples_from_file(
          f.path, f.rel, f.captions, task.options, caption_problem=f.problem, windows=f.windows
        )
        for e in examples:  # All of a file's records serialize, or none is written.
          schema.serialize(e)
        for e in examples:
          writer.add(e)
          stats.add(e.height, e.width, e.num_frames)
        input_bytes += os.path.getsize(f.path)
      except probe.Skip as s:
        skipped.append({"path": f.rel, "reason": s.reason, "detail": s.detail})
      except Exception as e:  # A bug; the file is skipped and the run goes on.
        logging.error("internal error on %s:\n%s", f.path, traceback.format_exc())
        detail = f"{type(e).__name__}: {e}"
        skipped.append({"path": f.rel, "reason": probe.INTERNAL_ERROR, "detail": detail})
      _progress(("done", task.index, i))
    num_records = writer.num_records
  if num_records == 0:
    os.remove(path)  # No empty shards: readers and the manifest list only real ones.
  report = {
    "shard": task.name,
    "num_files": len(task.files),
    "num_records": num_records,
    "stats": stats.to_dict(),
    "skipped": skipped,
    "input_bytes": input_bytes,
    "output_bytes": os.path.getsize(path) if num_records else 0,
    "seconds": round(time.time() - start, 3),
  }
  shards.atomic_write_json(os.path.join(task.output_dir, PARTS, task.name + ".json"), report)
  return report


class _Progress:
  """Collects worker messages: advances the bar, remembers each shard's open file."""

  def __init__(self, bar: tqdm):
    self.bar = bar
    self.current: dict[int, int] = {}  # Shard index -> file index being decoded.
    self.counted: dict[
      int, int
    ] = {}  # Shard index -> files on the bar (a redone file counts once).
    self.lock = threading.Lock()

  def __call__(self, msg: tuple) -> None:
    kind, shard, i = msg
    with self.lock:
      if kind == "start":
        self.current[shard] = i
        return
      self.current.pop(shard, None)
      if i >= self.counted.get(shard, 0):
        self.counted[shard] = i + 1
        self.bar.update(1)


def _run_pool(
  tasks: list[ShardTask], workers: int, progress: _Progress
) -> tuple[dict[int, dict], dict[int, int]]:
  """Runs shards in worker processes; returns (reports, {shard: file} open at a crash)."""
  ctx = multiprocessing.get_context("spawn")  # No fork of a process with threads.
  # Workers report on one pipe without a lock: each message is one write of
  # less than PIPE_BUF bytes, which the OS keeps whole, so a worker killed at
  # any moment can neither tear a message nor leave a lock held.
  reader, writer = ctx.Pipe(duplex=False)
  stop = threading.Event()

  def listen():
    while True:
      if reader.poll(0.05):
        progress(reader.recv())
      elif stop.is_set():
        return

  listener = threading.Thread(target=listen, daemon=True)
  listener.start()
  reports, crashed_at = {}, {}
  try:
    with concurrent.futures.ProcessPoolExecutor(
      workers, mp_context=ctx, initializer=_init_worker, initargs=(writer,)
    ) as pool:
      futures = {pool.submit(run_shard, t): t.index for t in tasks}
      try:
        for fut in concurrent.futures.as_completed(futures):
          reports[futures[fut]] = fut.result()
      except concurrent.futures.process.BrokenProcessPool:
        pass
  finally:
    stop.set()
    listener.join()
    reader.close()
    writer.close()
  if len(reports) < len(tasks):
    crashed_at = {s: i for s, i in progress.current.items() if s not in reports}
    progress.current.clear()
  return reports, crashed_at


_DEAD_WORKERS = "worker processes die outside any input file; rerun with --num_workers=0 to see why"


def _execute(tasks: list[ShardTask], workers: int, bar: tqdm) -> dict[int, dict]:
  """Runs every shard; a worker killed by a file (decoder crash, out of memory) is survived.

  After a crash, each shard that was open runs alone in one process, so a
  second crash names its file for certain; that file is skipped as
  worker-crash and the shard runs again. Then the rest go on in parallel.
  """
  progress = _Progress(bar)
  if workers == 0:
    global _progress
    _progress = progress
    return {t.index: run_shard(t) for t in tasks}
  reports: dict[int, dict] = {}
  pending = {t.index: t for t in tasks}
  while pending:
    done, crashed_at = _run_pool(list(pending.values()), workers, progress)
    reports.update(done)
    for s in done:
      del pending[s]
    if pending and not done and not crashed_at:
      raise RuntimeError(_DEAD_WORKERS)
    for s in crashed_at:  # Alone, so that a crash is this shard's own.
      task = pending.pop(s)
      while True:
        alone, again = _run_pool([task], 1, progress)
        if alone:
          reports[s] = alone[s]
          break
        if s not in again:
          raise RuntimeError(_DEAD_WORKERS)
        bad = again[s]
        logging.warning("%s killed its worker process; skipping it", task.files[bad].path)
        task = dataclasses.replace(task, crashed=task.crashed | {bad})
  return reports


# ------------------------------------------------------------------------------
# The run.
# ------------------------------------------------------------------------------


def run(config: Config) -> dict[str, Any]:
  """Ingests per `config`; returns the report (with "summary" and maybe "error")."""
  started = time.time()
  out = config.output_dir
  caption_path = os.path.abspath(config.captions)
  root, inputs = find_inputs(config.input, exclude=[caption_path, out])
  if not inputs:
    raise IngestError(f"--input={config.input}: no files matched")
  try:
    table = captions_lib.load(config.captions, root)
  except captions_lib.CaptionFileError as e:
    raise IngestError(str(e)) from None

  # Files against caption rows.
  files = []
  for p in inputs:
    key = captions_lib.normalize(p, root)
    caps, problem = table.lookup(key)
    problem = (problem.reason, problem.detail) if problem else None
    files.append(FileTask(p, os.path.relpath(p, root), caps, problem, table.windows(key)))
  input_keys = {captions_lib.normalize(p, root) for p in inputs}
  caption_only = []  # Caption-file problems that no input file carries.
  cap_name = os.path.basename(config.captions)
  for key, rows in sorted(table.rows.items()):
    if key not in input_keys and not os.path.lexists(key):
      lines = ", ".join(str(r.line) for r in rows)
      caption_only.append(
        {
          "path": rows[0].path,
          "reason": captions_lib.NO_FILE,
          "detail": f"{cap_name} line {lines}: no such file",
        }
      )
  for row in table.orphan_rows:
    caption_only.append(
      {"path": f"{cap_name}:{row.line}", "reason": row.problem.reason, "detail": row.problem.detail}
    )

  # The plan.
  n = math.ceil(len(files) / config.files_per_shard)
  names = [shards.shard_name(config.split, i, n) for i in range(n)]
  plan = {
    "version": PLAN_VERSION,
    "input_root": root,
    "inputs": [f.rel for f in files],
    "captions_sha256": table.sha256,
    "options": _plan_options(config),
    "shards": names,
  }
  try:
    os.makedirs(os.path.join(out, PARTS), exist_ok=True)
  except OSError as e:
    raise IngestError(f"--output_dir={out}: cannot create: {e.strerror or e}") from None
  _check_plan(config, plan)
  _remove_stale_temporaries(out)

  tasks, reports = [], {}
  for i, name in enumerate(names):
    chunk = files[i * config.files_per_shard : (i + 1) * config.files_per_shard]
    report = _shard_done(out, name)
    if report is not None and report.get("num_files") == len(chunk):
      reports[i] = report
    else:
      tasks.append(ShardTask(i, name, out, tuple(chunk), config.options))
  reused = len(reports)
  workers = min(config.num_workers, len(tasks))
  logging.info(
    "%d files in %d shards; %d done before, %d to do on %d workers",
    len(files),
    n,
    reused,
    len(tasks),
    workers,
  )
  todo = sum(len(t.files) for t in tasks)
  with tqdm(total=todo, desc="ingest", unit="file", mininterval=1.0, disable=not todo) as bar:
    reports.update(_execute(tasks, workers, bar))

  _remove_stale_temporaries(out)  # Left by workers that crashed.

  # Merge.
  stats = shards.SizeStats()
  skipped = list(caption_only)
  shard_paths = []
  input_bytes = 0
  for i in range(n):
    r = reports[i]
    stats.merge(r["stats"])
    skipped += r["skipped"]
    input_bytes += r["input_bytes"]
    if r["num_records"]:
      shard_paths.append(os.path.join(out, names[i]))
  skipped.sort(key=lambda s: (s["path"], s["reason"]))
  by_reason = collections.Counter(s["reason"] for s in skipped)
  num_inputs = len(files) + len(caption_only)
  seconds = time.time() - started
  done_files = sum(len(t.files) for t in tasks)
  report = {
    "num_inputs": num_inputs,
    "num_records": stats.num_examples,
    "num_skipped": len(skipped),
    "skipped_by_reason": dict(sorted(by_reason.items(), key=lambda kv: (-kv[1], kv[0]))),
    "skipped": skipped,
    "num_shards": len(shard_paths),
    "shards_reused": reused,
    "seconds": round(seconds, 3),
    "files_per_second": round(done_files / seconds, 2) if seconds else None,
    "input_bytes": input_bytes,
  }
  report_path = os.path.join(out, REPORT)
  reasons = ", ".join(f"{k}: {v}" for k, v in report["skipped_by_reason"].items())
  report["summary"] = (
    f"ingest: {num_inputs} files -> {stats.num_examples} records in {len(shard_paths)} shards; "
    f"{len(skipped)} skipped{f' ({reasons})' if reasons else ''}; report: {report_path}"
  )
  frac = len(skipped) / num_inputs
  if config.max_error_fraction is not None and frac > config.max_error_fraction:
    report["error"] = (
      f"{len(skipped)} of {num_inputs} inputs skipped ({frac:.1%}), more than "
      f"--max_error_fraction={config.max_error_fraction}; see {report_path}"
    )
  elif not shard_paths:
    report["error"] = f"no input yielded a record; see {report_path}"
  shards.atomic_write_json(report_path, report)
  if "error" not in report:
    tokenizer = None
    with contextlib.suppress(shards.DatasetError):  # Keep a tokenizer trained since.
      tokenizer = shards.read_manifest(out).get("tokenizer")
    shards.write_manifest(
      out,
      {
        "name": "ingest",
        "splits": {config.split: shards.split_entry(shard_paths, stats)},
        "tokenizer": tokenizer,
        "ingest": _flag_values(config),
      },
    )
  return report


def _remove_stale_temporaries(output_dir: str) -> None:
  """Deletes partial shards and reports of killed writers (shards.shard_writer names)."""
  for d in (output_dir, os.path.join(output_dir, PARTS)):
    for stale in glob.glob(os.path.join(glob.escape(d), "*.tmp-*")):
      with contextlib.suppress(FileNotFoundError):
        os.remove(stale)


def _flag_values(config: Config) -> dict[str, Any]:
  d = dataclasses.asdict(config)
  d.update(d.pop("options"))
  return d


# ------------------------------------------------------------------------------
# Command line.
# ------------------------------------------------------------------------------


def define_flags() -> None:
  """Defines the command-line flags (only when run as a program: other modules share names)."""
  flags.DEFINE_string("input", None, "Directory (searched recursively) or glob of media.")
  flags.DEFINE_string("captions", None, "Caption file: .csv or .jsonl.")
  flags.DEFINE_string("output_dir", None, "Where shards and reports go.")
  flags.DEFINE_string("split", "train", "Split name of the shards.")
  flags.DEFINE_integer(
    "files_per_shard", 64, "Input files per shard (the unit of parallel work and of resuming)."
  )
  flags.DEFINE_integer(
    "num_workers", None, "Worker processes (default: all cores; 0: in this process)."
  )
  flags.DEFINE_float("fps", 0.0, "Resample videos to this frame rate; 0 keeps the source rate.")
  flags.DEFINE_integer(
    "max_clip_frames", 0, "Frames per clip; longer videos are cut (0: no limit)."
  )
  flags.DEFINE_boolean(
    "split_clips", False, "Cut long videos into consecutive clips (else keep only the first)."
  )
  flags.DEFINE_integer(
    "min_clip_frames", 1, "Drop clips (e.g. the tail of a split) and videos with fewer frames."
  )
  flags.DEFINE_enum(
    "clip_format", "mp4", ["mp4", "raw"], "Re-encoded clips: mp4 (H.264, lossy) or raw (raw+zlib)."
  )
  flags.DEFINE_enum(
    "store",
    "original",
    ["original", "raw"],
    "original: keep file bytes when frames are unchanged; raw: store all as raw+zlib frames.",
  )
  flags.DEFINE_integer("min_side", 16, "Skip media with a side shorter than this.")
  flags.DEFINE_integer("max_side", 4096, "Skip media with a side longer than this.")
  flags.DEFINE_integer(
    "max_pixels", 4096 * 4096, "Skip media with more pixels per frame (checked from the header)."
  )
  flags.DEFINE_integer(
    "max_frames", schema.MAX_FRAMES, "Skip videos with more source frames than this."
  )
  flags.DEFINE_float(
    "max_error_fraction", None, "Fail the run when skipped/inputs exceeds this (0..1)."
  )


def config_from_flags() -> Config:
  """The Config of the command line; IngestError names a bad flag."""
  f = flags.FLAGS
  for name in ("input", "captions", "output_dir"):
    if not f[name].value:
      raise IngestError(f"--{name} is required")
  workers = (os.cpu_count() or 1) if f.num_workers is None else f.num_workers
  checks = [
    ("files_per_shard", f.files_per_shard, f.files_per_shard >= 1, ">= 1"),
    ("num_workers", workers, workers >= 0, ">= 0"),
    ("fps", f.fps, 0 <= f.fps <= 1000, "0 (keep) or a rate up to 1000"),
    ("max_clip_frames", f.max_clip_frames, f.max_clip_frames >= 0, ">= 0"),
    ("min_clip_frames", f.min_clip_frames, f.min_clip_frames >= 1, ">= 1"),
    (
      "min_side",
      f.min_side,
      schema.MIN_SIDE <= f.min_side <= f.max_side,
      f"{schema.MIN_SIDE}..--max_side",
    ),
    (
      "max_side",
      f.max_side,
      f.max_side <= schema.MAX_SIDE,
      f"--min_side..{schema.MAX_SIDE}",
    ),
    ("max_pixels", f.max_pixels, f.max_pixels >= 1, ">= 1"),
    (
      "max_frames",
      f.max_frames,
      1 <= f.max_frames <= schema.MAX_FRAMES,
      f"1..{schema.MAX_FRAMES}",
    ),
  ]
  if f.max_error_fraction is not None:
    frac = f.max_error_fraction
    checks.append(("max_error_fraction", frac, 0 <= frac <= 1, "0..1"))
  if f.split_clips:
    checks.append(("split_clips", True, f.max_clip_frames > 0, "only with --max_clip_frames"))
  if f.max_clip_frames:
    checks.append(
      (
        "min_clip_frames",
        f.min_clip_frames,
        f.min_clip_frames <= f.max_clip_frames,
        "<= --max_clip_frames",
      )
    )
  for name, value, ok, allowed in checks:
    if not ok:
      raise IngestError(f"--{name}={value}; allowed: {allowed}")
  cpus = os.cpu_count() or 1
  return Config(
    input=f.input,
    captions=f.captions,
    output_dir=f.output_dir,
    split=f.split,
    files_per_shard=f.files_per_shard,
    num_workers=workers,
    max_error_fraction=f.max_error_fraction,
    options=probe.Options(
      fps=f.fps,
      max_clip_frames=f.max_clip_frames,
      split_clips=f.split_clips,
      min_clip_frames=f.min_clip_frames,
      clip_format=f.clip_format,
      store=f.store,
      min_side=f.min_side,
      max_side=f.max_side,
      max_pixels=f.max_pixels,
      max_frames=f.max_frames,
      decoder_threads=max(1, cpus // max(1, workers)),
    ),
  )


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments {argv[1:]}; pass everything as --flags")
  try:
    report = run(config_from_flags())
  except IngestError as e:
    sys.exit(f"error: {e}")
  print(report["summary"])
  if "error" in report:
    sys.exit(f"error: {report['error']}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
