r"""Dataset statistics and pictures: counts, size histograms and a contact sheet per split.

  python -m data_pipelines.stats --data_dir=DIR --output_dir=OUT [--split=train] \
      [--num_examples=24] [--scan]

prints, per split, the numbers of examples, images and videos, the aspect
ratios, a frame-count summary and the total frames, and writes

  OUT/{split}_histograms.png     resolutions, frame counts and aspect ratios
  OUT/{split}_contact_sheet.png  --num_examples examples spread evenly over the split

Counts come from the manifest's size histograms; --scan reads every record
instead, prints where the manifest disagrees (MISMATCH lines) and then exits
non-zero.
"""

from __future__ import annotations

import collections
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import tqdm
from absl import app, flags, logging
from array_record.python.array_record_data_source import ArrayRecordDataSource
from matplotlib import ticker
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from data_pipelines import contact_sheet, media, schema, shards

# A split's statistics: the dict `shards.SizeStats.to_dict()` returns, i.e.
# num_examples, num_images, num_videos and the histograms resolution ("WxH"),
# num_frames (str(int)) and aspect_ratio (label), each a {key: count} map.
Stats = dict[str, Any]

_KEYS = ("num_examples", "num_images", "num_videos", "resolution", "num_frames", "aspect_ratio")


def manifest_stats(entry: Mapping[str, Any]) -> Stats | None:
  """A split's statistics from its manifest entry, or None if the entry has none."""
  hist = entry.get("size_histogram")
  if not hist or any(k not in entry for k in _KEYS[:3]):
    return None
  return {**{k: entry[k] for k in _KEYS[:3]}, **{k: dict(hist[k]) for k in _KEYS[3:]}}


def scan_stats(files: Sequence[str], desc: str = "scanning") -> Stats:
  """A split's statistics from reading every record of its shards."""
  stats = shards.SizeStats()
  with tqdm.tqdm(desc=desc, unit=" examples") as bar:
    for path in files:
      for e in shards.read_shard(path):
        stats.add(e.height, e.width, e.num_frames)
        bar.update()
  return stats.to_dict()


def differences(manifest: Stats, scanned: Stats) -> list[str]:
  """Where the manifest's statistics differ from the scanned ones, one line each."""
  out = []
  for k in _KEYS:
    a, b = manifest[k], scanned[k]
    if isinstance(a, Mapping):
      a, b = {str(x): int(n) for x, n in a.items()}, {str(x): int(n) for x, n in b.items()}
      bad = sorted(x for x in set(a) | set(b) if a.get(x, 0) != b.get(x, 0))
      if bad:
        shown = ", ".join(f"{x}: {a.get(x, 0)} vs {b.get(x, 0)}" for x in bad[:5])
        out.append(f"{k} differs (manifest vs records) at {shown}{' ...' if len(bad) > 5 else ''}")
    elif a != b:
      out.append(f"{k}: manifest says {a}, records have {b}")
  return out


def frame_counts(stats: Stats) -> tuple[np.ndarray, np.ndarray]:
  """Distinct frame counts (ascending) and how many examples have each."""
  pairs = sorted((int(k), int(v)) for k, v in stats["num_frames"].items() if int(v))
  return np.array([p[0] for p in pairs], np.int64), np.array([p[1] for p in pairs], np.int64)


def total_frames(stats: Stats) -> int:
  frames, counts = frame_counts(stats)
  return int((frames * counts).sum())


def _quantile(values: np.ndarray, counts: np.ndarray, q: float) -> int:
  """The q-quantile (lower) of `values` each repeated `counts` times."""
  cum = np.cumsum(counts)
  return int(values[np.searchsorted(cum, q * (cum[-1] - 1), side="right")])


def summary(split: str, stats: Stats) -> list[str]:
  """Printable lines describing one split."""
  n = stats["num_examples"]
  lines = [
    f"{split}: examples={n} images={stats['num_images']} videos={stats['num_videos']} "
    f"total_frames={total_frames(stats)}"
  ]
  if not n:
    return lines
  ratios = sorted(stats["aspect_ratio"].items(), key=lambda kv: (-kv[1], kv[0]))
  lines.append("  aspect ratios: " + ", ".join(f"{k}={v} ({100 * v / n:.1f}%)" for k, v in ratios))
  frames, counts = frame_counts(stats)
  for name, keep in (("all", frames >= 1), ("videos", frames > 1)):
    if counts[keep].sum():
      f, c = frames[keep], counts[keep]
      lines.append(
        f"  frames per example ({name}): min={f[0]} median={_quantile(f, c, 0.5)} "
        f"mean={(f * c).sum() / c.sum():.1f} max={f[-1]}"
      )
  res = sorted(stats["resolution"].items(), key=lambda kv: (-kv[1], kv[0]))
  top = ", ".join(f"{k}={v}" for k, v in res[:5])
  lines.append(f"  resolutions: {len(res)} distinct; most common {top}")
  return lines


# ------------------------------------------------------------------------------
# Pictures.
# ------------------------------------------------------------------------------


def _bars(ax, labels: Sequence[str], counts: Sequence[int], color: str, horizontal=False) -> None:
  """Labelled bars at integer positions (labels such as "1:1" are not parsed as numbers)."""
  pos = np.arange(len(labels))
  if horizontal:
    ax.barh(pos, counts, color=color)
    ax.set_yticks(pos, labels)
    ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
  else:
    ax.bar(pos, counts, color=color)
    ax.set_xticks(pos, labels, rotation=90 if len(labels) > 10 else 0)
    ax.yaxis.set_major_locator(ticker.MaxNLocator(integer=True))


def histogram_figure(stats: Stats, title: str, top_k: int = 15) -> Figure:
  """Resolutions (top-k bars and width-vs-height scatter), frame counts and aspect ratios."""
  fig = Figure(figsize=(13, 9), dpi=100, layout="constrained")
  FigureCanvasAgg(fig)
  fig.suptitle(title)
  (ax_res, ax_wh), (ax_t, ax_ar) = fig.subplots(2, 2)

  res = sorted(stats["resolution"].items(), key=lambda kv: (-kv[1], kv[0]))[:top_k]
  _bars(ax_res, [k for k, _ in res][::-1], [v for _, v in res][::-1], "tab:blue", horizontal=True)
  ax_res.set_title(f"most common resolutions (W x H), top {len(res)}")
  ax_res.set_xlabel("examples")

  wh = collections.Counter()
  for k, v in stats["resolution"].items():
    w, h = (int(x) for x in k.split("x"))
    wh[(w, h)] += v
  if wh:
    (ws, hs), vs = zip(*wh.keys()), np.array(list(wh.values()), float)
    points = ax_wh.scatter(ws, hs, s=20 + 300 * vs / vs.max(), c=vs, cmap="viridis", alpha=0.8)
    fig.colorbar(points, ax=ax_wh, label="examples")
    lim = max(max(ws), max(hs)) * 1.1
    ax_wh.plot([0, lim], [0, lim], color="gray", lw=0.5, ls="--")  # Square sizes.
    ax_wh.set_xlim(0, lim)
    ax_wh.set_ylim(0, lim)
  ax_wh.set_title("width vs height (marker size: examples)")
  ax_wh.set_xlabel("width (px)")
  ax_wh.set_ylabel("height (px)")

  frames, counts = frame_counts(stats)
  if len(frames) and len(frames) <= 40:  # Few distinct lengths: one bar each.
    _bars(ax_t, [str(f) for f in frames], counts, "tab:orange")
  elif len(frames):
    ax_t.hist(frames, bins=50, weights=counts, color="tab:orange")
    ax_t.yaxis.set_major_locator(ticker.MaxNLocator(integer=True))
  ax_t.set_title(f"duration: frames per example (total {total_frames(stats)})")
  ax_t.set_xlabel("frames (1 = image)")
  ax_t.set_ylabel("examples")

  ratios = sorted(stats["aspect_ratio"].items(), key=lambda kv: (-kv[1], kv[0]))
  _bars(ax_ar, [k for k, _ in ratios], [v for _, v in ratios], "tab:green")
  ax_ar.set_title("aspect ratio (W:H)")
  ax_ar.set_ylabel("examples")
  return fig


def sample_indices(num_records: int, count: int) -> list[int]:
  """`count` indices spread evenly from the first to the last record."""
  if num_records <= 0 or count <= 0:
    return []
  if count >= num_records:
    return list(range(num_records))
  return sorted({round(i * (num_records - 1) / max(1, count - 1)) for i in range(count)})


def sheet_items(
  files: Sequence[str], count: int, frames_per_item: int = 3
) -> list[tuple[np.ndarray, str]]:
  """(frames, caption) of `count` examples spread over a split; undecodable ones are skipped."""
  source = ArrayRecordDataSource(list(files))
  items = []
  for i in tqdm.tqdm(sample_indices(len(source), count), desc="decoding", unit=" examples"):
    example = schema.deserialize(source[i])
    try:
      frames = decode_shown(example, frames_per_item)
    except media.MediaError as e:
      logging.warning("record %d (%s) skipped: %s", i, example.source_id, e)
      continue
    items.append((frames, example.captions[0] if example.captions else ""))
  return items


def decode_shown(example: schema.Example, frames_per_item: int = 3) -> np.ndarray:
  """The frames of an example that a contact sheet shows, `[T', H, W, 3]`."""
  frames = media.decode(example)
  return np.ascontiguousarray(frames[contact_sheet.frame_indices(len(frames), frames_per_item)])


# ------------------------------------------------------------------------------
# Command line.
# ------------------------------------------------------------------------------


def run(
  data_dir: str,
  output_dir: str,
  splits: Sequence[str] = (),
  num_examples: int = 24,
  scan: bool = False,
  columns: int = 4,
  cell: int = 128,
) -> dict[str, list[str]]:
  """Prints and draws the statistics of `splits` (default all).

  Returns:
    Per split, the lines where the manifest disagrees with the records (only
    with `scan`; empty when they agree).

  Raises:
    shards.DatasetError: no dataset at `data_dir`, or an unknown split.
  """
  manifest = shards.read_manifest(data_dir)
  splits = list(splits) or list(manifest["splits"])
  files = {s: shards.split_files(data_dir, s) for s in splits}  # Checks every split first.
  os.makedirs(output_dir, exist_ok=True)
  mismatches = {}
  for split in splits:
    stats = manifest_stats(manifest["splits"][split])
    if scan or stats is None:
      scanned = scan_stats(files[split], desc=f"scanning {split}")
      if stats is None:
        logging.info("split %s: no size histogram in the manifest; scanned the records", split)
      else:
        mismatches[split] = differences(stats, scanned)
      stats = scanned
    print("\n".join(summary(split, stats)))
    for line in mismatches.get(split, []):
      print(f"  MISMATCH {line}")
    title = f"{os.path.abspath(data_dir)} [{split}]: {stats['num_examples']} examples "
    title += f"({stats['num_images']} images, {stats['num_videos']} videos)"
    path = os.path.join(output_dir, f"{split}_histograms.png")
    histogram_figure(stats, title).savefig(path)
    print(f"  wrote {path}")
    items = sheet_items(files[split], num_examples) if num_examples > 0 else []
    if num_examples > 0 and not items:
      print("  no decodable examples; no contact sheet")
    if items:
      path = os.path.join(output_dir, f"{split}_contact_sheet.png")
      media.write_png(path, contact_sheet.contact_sheet(items, cell=cell, columns=columns))
      print(f"  wrote {path}")
  return mismatches


def define_flags() -> None:
  """Defines the command-line flags (only when run as a program: other modules may share names)."""
  flags.DEFINE_string("data_dir", None, "Dataset directory (with manifest.json).")
  flags.DEFINE_string("output_dir", None, "Directory for the PNG files.")
  flags.DEFINE_list("split", [], "Splits to describe (comma-separated); default: all.")
  flags.DEFINE_integer("num_examples", 24, "Examples on each contact sheet; 0: none.")
  flags.DEFINE_bool("scan", False, "Read every record and check the manifest's counts.")
  flags.DEFINE_integer("columns", 4, "Examples per contact sheet row.")
  flags.DEFINE_integer("cell", 128, "Contact sheet frame box side in pixels.")


def main(argv: Sequence[str]) -> None:
  del argv
  f = flags.FLAGS
  if not f.data_dir:
    sys.exit("error: --data_dir is required")
  if not f.output_dir:
    sys.exit("error: --output_dir is required")
  for name, low in (("num_examples", 0), ("columns", 1), ("cell", 8)):
    if f[name].value < low:
      sys.exit(f"error: --{name}={f[name].value}; must be >= {low}")
  try:
    mismatches = run(f.data_dir, f.output_dir, f.split, f.num_examples, f.scan, f.columns, f.cell)
  except (shards.DatasetError, schema.SchemaError) as e:
    sys.exit(f"error: {e}")
  except RuntimeError as e:  # What the ArrayRecord reader raises for a corrupt shard.
    sys.exit(f"error: --data_dir={f.data_dir}: cannot read a shard: {e}")
  bad = [s for s, lines in mismatches.items() if lines]
  if bad:
    sys.exit(f"error: the manifest of {f.data_dir} disagrees with its records in {bad}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
