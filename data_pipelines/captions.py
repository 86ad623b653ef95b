"""Caption files for ingest: which captions belong to which media file.

Two formats, chosen by the file's extension:

  CSV (.csv): a header row naming the columns `path` and `caption`, optionally
    `caption2`, `caption3`, ... for extra captions; other columns are ignored.
    Quote a caption that holds a comma. A row with more fields than the header
    is rejected rather than silently cut.
  JSONL (.jsonl, .ndjson, .json): one object per line,
    `{"path": ..., "caption": "..."}` and/or `{"path": ..., "captions": [...]}`, and
    optionally a time-stamped caption, `"windows": [{"text": ..., "start": F0, "end": F1},
    ...]`: texts for frames [F0, F1) of the source video (frames as decoded, disjoint),
    stored as the record's `caption_windows` (mapped onto each clip when the video is
    cut or resampled).

Paths are relative to the input directory, or absolute. The file is read as
bytes and decoded line by line, so a line that is not UTF-8 invalidates only the
row it belongs to. Every problem is tied to the media file its row names (the
file is then skipped with that reason) or, when no path can be read, reported on
its own with the line number.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import hashlib
import json
import os
import re
from collections.abc import Iterator

# Reasons a caption row is unusable (also the skip reasons of the report).
MISSING = "missing-caption"
DUPLICATE = "duplicate-caption"
EMPTY = "empty-caption"
BAD_ENCODING = "bad-caption-encoding"
BAD_ROW = "bad-caption-row"
NO_FILE = "caption-without-file"

FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}
_EXTRA_CAPTION = re.compile(r"caption(\d+)$")


class CaptionFileError(ValueError):
  """The caption file as a whole cannot be used (a command-line error)."""


@dataclasses.dataclass(frozen=True)
class Problem:
  reason: str
  detail: str


@dataclasses.dataclass(frozen=True)
class Row:
  """One parsed row; `problem` is set when the row cannot caption its file."""

  line: int
  path: str | None  # As written in the file; None when unreadable.
  captions: tuple[str, ...] = ()
  problem: Problem | None = None
  windows: tuple[tuple[str, int, int], ...] = ()  # (text, start, end) in source frames.


@dataclasses.dataclass
class CaptionTable:
  """The rows of a caption file, keyed by the absolute path they name."""

  source: str  # The caption file.
  root: str  # Directory relative paths are resolved against.
  sha256: str
  rows: dict[str, list[Row]]  # Normalized absolute path -> rows naming it.
  orphan_rows: list[Row]  # Rows whose path could not be read.

  def lookup(self, key: str) -> tuple[tuple[str, ...], Problem | None]:
    """Captions for the file at absolute path `key`, or the reason it has none."""
    rows = self.rows.get(key)
    name = os.path.basename(self.source)
    if not rows:
      return (), Problem(MISSING, f"no row in {name} names this file")
    if len(rows) > 1:
      lines = ", ".join(str(r.line) for r in rows)
      return (), Problem(DUPLICATE, f"{name} lines {lines} name this file; fix to one row")
    row = rows[0]
    if row.problem:
      return (), row.problem
    return row.captions, None

  def windows(self, key: str) -> tuple[tuple[str, int, int], ...]:
    """The time-stamped caption of the file at `key` (JSONL "windows"), or ()."""
    rows = self.rows.get(key) or []
    return rows[0].windows if len(rows) == 1 and not rows[0].problem else ()


def normalize(path: str, root: str) -> str:
  """The key of a path: absolute, normalized, symlinks not resolved."""
  return os.path.normpath(os.path.join(os.path.abspath(root), path))


def load(path: str, root: str) -> CaptionTable:
  """Parses a caption file; raises CaptionFileError if it cannot be used at all."""
  fmt = FORMATS.get(os.path.splitext(path)[1].lower())
  if fmt is None:
    raise CaptionFileError(
      f"--captions={path}: unknown caption format {os.path.splitext(path)[1]!r}; "
      f"allowed extensions: {', '.join(sorted(FORMATS))}"
    )
  try:
    with open(path, "rb") as f:
      data = f.read()
  except OSError as e:
    raise CaptionFileError(f"--captions={path}: cannot read: {e.strerror or e}") from None
  name = os.path.basename(path)
  rows = list(_csv_rows(data, name) if fmt == "csv" else _jsonl_rows(data, name))
  table = CaptionTable(
    source=path,
    root=root,
    sha256=hashlib.sha256(data).hexdigest(),
    rows=collections.defaultdict(list),
    orphan_rows=[],
  )
  for row in rows:
    if row.path is None:
      table.orphan_rows.append(row)
    else:
      table.rows[normalize(row.path, root)].append(row)
  table.rows = dict(table.rows)
  return table


def _lines(data: bytes) -> Iterator[tuple[int, str, bool]]:
  """Yields (line number, text, decoded cleanly) per physical line.

  Undecodable bytes become lone surrogates (surrogateescape) so that parsing
  goes on; `_bad` finds them in the parsed fields.
  """
  if data.startswith(b"\xef\xbb\xbf"):
    data = data[3:]
  for i, raw in enumerate(data.splitlines(keepends=True), start=1):
    try:
      yield i, raw.decode("utf-8"), True
    except UnicodeDecodeError:
      yield i, raw.decode("utf-8", "surrogateescape"), False


def _bad(text: str) -> bool:
  """True when `text` holds bytes that were not UTF-8."""
  try:
    text.encode("utf-8")
  except UnicodeEncodeError:
    return True
  return False


def _finish(line: int, path: str, captions: list[str], name: str) -> Row:
  """A row from its path and raw captions: decoding and emptiness checks."""
  if _bad(path):
    return Row(line, None, problem=Problem(BAD_ENCODING, f"{name}:{line}: path is not UTF-8"))
  if not path.strip():
    return Row(line, None, problem=Problem(BAD_ROW, f"{name}:{line}: empty path"))
  path = path.strip()
  if any(_bad(c) for c in captions):
    return Row(line, path, problem=Problem(BAD_ENCODING, f"{name}:{line}: caption is not UTF-8"))
  kept = tuple(c.strip() for c in captions if c.strip())
  if not kept:
    return Row(line, path, problem=Problem(EMPTY, f"{name}:{line}: caption is empty"))
  return Row(line, path, kept)


def _csv_rows(data: bytes, name: str) -> Iterator[Row]:
  lines = list(_lines(data))
  texts = iter(text for _, text, _ in lines)
  reader = csv.reader(texts)
  try:
    header = next(reader)
  except StopIteration:
    raise CaptionFileError(
      f"--captions: {name} is empty; expected a header row path,caption"
    ) from None
  except csv.Error as e:
    raise CaptionFileError(f"--captions: {name} line 1 is not valid CSV: {e}") from None
  columns = [h.strip().lower() for h in header]
  if "path" not in columns or "caption" not in columns:
    raise CaptionFileError(
      f"--captions: {name} header must name columns 'path' and 'caption' "
      f"(optionally caption2, caption3, ...); got {header!r}"
    )
  path_col = columns.index("path")
  extra = sorted(
    (int(m.group(1)), i) for i, c in enumerate(columns) if (m := _EXTRA_CAPTION.match(c))
  )
  caption_cols = [columns.index("caption")] + [i for _, i in extra]
  consumed = reader.line_num
  while True:
    first = consumed + 1
    try:
      fields = next(reader)
    except StopIteration:
      return
    except csv.Error as e:  # E.g. a huge field; the reader goes on at the next line.
      yield Row(first, None, problem=Problem(BAD_ROW, f"{name}:{first}: not valid CSV: {e}"))
      consumed = reader.line_num
      continue
    consumed = reader.line_num
    if not fields or all(not f.strip() for f in fields):
      continue
    clean = all(ok for _, _, ok in lines[first - 1 : consumed])
    if len(fields) > len(columns):
      path = fields[path_col] if not _bad(fields[path_col]) else None
      yield Row(
        first,
        path.strip() if path and path.strip() else None,
        problem=Problem(
          BAD_ROW,
          f"{name}:{first}: {len(fields)} fields but the header has {len(columns)}; "
          "quote captions that contain commas",
        ),
      )
      continue
    fields += [""] * (len(columns) - len(fields))  # Missing trailing fields are empty.
    row = _finish(first, fields[path_col], [fields[i] for i in caption_cols], name)
    if not clean and not row.problem:  # Bad bytes in a column we do not read.
      row = Row(
        first, row.path, problem=Problem(BAD_ENCODING, f"{name}:{first}: line is not UTF-8")
      )
    yield row


def _jsonl_rows(data: bytes, name: str) -> Iterator[Row]:
  for line, text, _ in _lines(data):
    if not text.strip():
      continue
    try:
      obj = json.loads(text)
    except json.JSONDecodeError as e:
      yield Row(line, None, problem=Problem(BAD_ROW, f"{name}:{line}: not valid JSON: {e.msg}"))
      continue
    if not isinstance(obj, dict) or not isinstance(obj.get("path"), str):
      yield Row(
        line,
        None,
        problem=Problem(BAD_ROW, f'{name}:{line}: expected an object with a "path" string'),
      )
      continue
    captions = []
    if "caption" in obj:
      captions.append(obj["caption"])
    if "captions" in obj:  # A list, or one caption.
      more = obj["captions"]
      captions.extend(more if isinstance(more, list) else [more])
    if not all(isinstance(c, str) for c in captions):
      path = obj["path"] if not _bad(obj["path"]) and obj["path"].strip() else None
      yield Row(
        line,
        path and path.strip(),
        problem=Problem(BAD_ROW, f'{name}:{line}: "caption"/"captions" must be strings'),
      )
      continue
    row = _finish(line, obj["path"], captions, name)
    if "windows" in obj and not row.problem:
      windows, error = _windows(obj["windows"])
      if error:
        row = Row(line, row.path, problem=Problem(BAD_ROW, f"{name}:{line}: {error}"))
      else:
        row = dataclasses.replace(row, windows=windows)
    yield row


def _windows(raw) -> tuple[tuple[tuple[str, int, int], ...], str | None]:
  """Parsed "windows" of a JSONL row, or the reason they cannot be used."""
  want = '"windows" must be a list of {"text", "start", "end"} with 0 <= start < end'
  if not isinstance(raw, list) or not raw:
    return (), want
  out = []
  for w in raw:
    if not isinstance(w, dict) or not isinstance(w.get("text"), str) or not w["text"].strip():
      return (), want
    start, end = w.get("start"), w.get("end")
    if not (isinstance(start, int) and isinstance(end, int) and 0 <= start < end):
      return (), want
    if _bad(w["text"]):
      return (), '"windows" text is not UTF-8'
    out.append((w["text"].strip(), start, end))
  spans = sorted((s, e) for _, s, e in out)
  if any(b[0] < a[1] for a, b in zip(spans, spans[1:], strict=False)):
    return (), f'"windows" overlap: {spans}'
  return tuple(out), None
