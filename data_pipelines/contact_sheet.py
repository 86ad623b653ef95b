"""Contact sheets: a grid of images and videos, each with its caption and size beneath.

A video shows `frames_per_item` evenly spaced frames side by side (by default
first, middle and last); an image (one frame) shows once, centred. Every frame
is scaled to fit a `cell x cell` box keeping its aspect ratio: nearest-neighbour
when enlarging, so small frames stay sharp and their pixels exact, box filter
when shrinking. Used by `data_pipelines.stats` for datasets and by the sampling
binary for generated videos with their prompts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

BACKGROUND = (16, 16, 16)
TILE_COLOR = (40, 40, 40)
TEXT_COLOR = (235, 235, 235)
SIZE_COLOR = (150, 200, 255)


def frame_indices(num_frames: int, count: int) -> list[int]:
  """Up to `count` evenly spaced frame indices from first to last, without repeats."""
  if count <= 1 or num_frames == 1:
    return [0]
  return sorted({round(i * (num_frames - 1) / (count - 1)) for i in range(count)})


def fit(frame: np.ndarray, box: int) -> np.ndarray:
  """Scales `[H, W, 3]` uint8 to fit a `box x box` square, keeping the aspect ratio."""
  h, w = frame.shape[:2]
  scale = box / max(h, w)
  size = (max(1, round(w * scale)), max(1, round(h * scale)))
  if size == (w, h):
    return frame
  resample = Image.Resampling.NEAREST if scale > 1 else Image.Resampling.BOX
  return np.asarray(Image.fromarray(frame).resize(size, resample))


def _font(font_size: int | None) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
  if font_size is None:
    return ImageFont.load_default()
  try:
    return ImageFont.load_default(size=font_size)
  except (TypeError, ImportError):  # Pillow without FreeType: fixed-size bitmap font.
    return ImageFont.load_default()


def wrap(text: str, width: int, draw: ImageDraw.ImageDraw, font, max_lines: int) -> list[str]:
  """Greedy word wrap to `width` pixels; overlong words are cut; an ellipsis marks truncation."""

  def fits(s: str) -> bool:
    return draw.textlength(s, font=font) <= width

  lines, line = [], ""
  for word in text.split():
    while not fits(word):  # Cut a word longer than a line.
      n = 1
      while n < len(word) and fits(word[: n + 1]):
        n += 1
      if line:
        lines.append(line)
        line = ""
      lines.append(word[:n])
      word = word[n:]
    candidate = f"{line} {word}" if line else word
    if fits(candidate):
      line = candidate
    else:
      lines.append(line)
      line = word
  if line:
    lines.append(line)
  if len(lines) > max_lines:
    last = lines[max_lines - 1]
    while last and not fits(last + "…"):
      last = last[:-1]
    lines = lines[: max_lines - 1] + [last + "…"]
  return lines


def _as_video(frames: np.ndarray) -> np.ndarray:
  frames = np.asarray(frames)
  if frames.ndim == 3:
    frames = frames[None]
  if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or not frames.size:
    raise ValueError(
      f"contact sheet items need uint8 frames [T, H, W, 3] or [H, W, 3]; "
      f"got {frames.dtype} {frames.shape}"
    )
  return frames


def contact_sheet(
  items: Sequence[tuple[np.ndarray, str]],
  cell: int = 128,
  columns: int = 4,
  frames_per_item: int = 3,
  caption_lines: int = 3,
  pad: int = 6,
  font_size: int | None = None,
) -> np.ndarray:
  """Lays out captioned images and videos in a grid.

  Args:
    items: (frames uint8 `[T, H, W, 3]` or `[H, W, 3]`, caption) pairs.
    cell: side in pixels of the square box each shown frame is scaled into.
    columns: items per row (fewer if there are fewer items).
    frames_per_item: frames shown per video, evenly spaced from first to last.
    caption_lines: caption lines kept after wrapping (the rest is elided).
    pad: pixels between frames, inside each tile's border and between tiles.
    font_size: text size; None is Pillow's default font at its default size.

  Returns:
    The sheet, uint8 `[H, W, 3]`; `layout(...)` with the same arguments gives
    where each tile lies.
  """
  if not items:
    raise ValueError("contact_sheet needs at least one item")
  if cell < 8 or columns < 1 or frames_per_item < 1 or caption_lines < 0 or pad < 0:
    raise ValueError(
      f"cell={cell} (>= 8), columns={columns} (>= 1), frames_per_item={frames_per_item} "
      f"(>= 1), caption_lines={caption_lines} (>= 0), pad={pad} (>= 0)"
    )
  videos = [_as_video(frames) for frames, _ in items]
  font = _font(font_size)
  lay = layout(len(items), cell, columns, frames_per_item, caption_lines, pad, font_size)
  sheet = Image.new("RGB", (lay.width, lay.height), BACKGROUND)
  draw = ImageDraw.Draw(sheet)
  strip_w = lay.tile_w - 3 * pad  # Width of the frames of one tile.
  for i, (video, (_, caption)) in enumerate(zip(videos, items)):
    top, left = lay.origin(i)
    box = (left - pad, top - pad, left + strip_w + pad - 1, top + lay.tile_h - 2 * pad - 1)
    draw.rectangle(box, fill=TILE_COLOR)
    t, h, w, _ = video.shape
    shown = [fit(video[j], cell) for j in frame_indices(t, frames_per_item)]
    used = sum(f.shape[1] for f in shown) + pad * (len(shown) - 1)
    x = left + (strip_w - used) // 2  # Centre fewer or narrower frames in the tile.
    for f in shown:
      y = top + (cell - f.shape[0]) // 2
      sheet.paste(Image.fromarray(f), (x, y))
      x += f.shape[1] + pad
    y = top + cell + pad // 2
    draw.text((left, y), f"{w}x{h}x{t}", font=font, fill=SIZE_COLOR)
    for line in wrap(caption, strip_w, draw, font, caption_lines) if caption_lines else []:
      y += lay.line_h
      draw.text((left, y), line, font=font, fill=TEXT_COLOR)
  return np.asarray(sheet)


@dataclasses.dataclass(frozen=True)
class Layout:
  """Geometry of a sheet: sizes in pixels and where each tile starts."""

  columns: int
  rows: int
  tile_w: int
  tile_h: int
  line_h: int
  pad: int

  @property
  def width(self) -> int:
    return self.pad + self.columns * self.tile_w

  @property
  def height(self) -> int:
    return self.pad + self.rows * self.tile_h

  def origin(self, i: int) -> tuple[int, int]:
    """(top, left) of tile i's frame box, row-major."""
    row, col = divmod(i, self.columns)
    return 2 * self.pad + row * self.tile_h, 2 * self.pad + col * self.tile_w


def layout(
  num_items: int,
  cell: int = 128,
  columns: int = 4,
  frames_per_item: int = 3,
  caption_lines: int = 3,
  pad: int = 6,
  font_size: int | None = None,
) -> Layout:
  """The geometry `contact_sheet` uses for the same arguments."""
  ascent, descent = _font(font_size).getmetrics()
  line_h = ascent + descent + 2
  columns = min(columns, num_items)
  return Layout(
    columns=columns,
    rows=-(-num_items // columns),
    tile_w=frames_per_item * (cell + pad) + 2 * pad,  # Frames, tile padding, gap.
    tile_h=cell + pad // 2 + (1 + caption_lines) * line_h + 3 * pad,
    line_h=line_h,
    pad=pad,
  )
