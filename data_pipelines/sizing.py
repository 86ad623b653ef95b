"""Token arithmetic: how many spacetime patches an example becomes, and what size fits a budget.

Sizes move through two stages. The latent stage compresses pixels by
`compression = (ct, ch, cw)`; time is causal, so `T` pixel frames become
`1 + (T - 1) // ct` latent frames (an image stays one frame; 1 + 4k frames
become 1 + k at ct = 4). The transformer then cuts the latent into patches of
`patch = (pt, ph, pw)`. A pixel side must therefore be a multiple of
`ch * ph` (height) or `cw * pw` (width).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

# A caption window's end that no token frame reaches: the caption sees every frame.
ALL_FRAMES = 1 << 30


@dataclasses.dataclass(frozen=True)
class Geometry:
  """Patch size and latent compression: everything that maps pixels to tokens."""

  patch: tuple[int, int, int] = (1, 8, 8)
  compression: tuple[int, int, int] = (1, 1, 1)
  channels: int = 3  # Channels of the latent the patches are cut from.

  @property
  def align(self) -> tuple[int, int]:
    """Pixel multiples required of (height, width)."""
    return (self.compression[1] * self.patch[1], self.compression[2] * self.patch[2])

  @property
  def patch_dim(self) -> int:
    return int(np.prod(self.patch)) * self.channels

  def latent_frames(self, frames: int) -> int:
    return 1 + (frames - 1) // self.compression[0]

  def pixel_frames(self, latent_frames: int) -> int:
    return 1 + (latent_frames - 1) * self.compression[0]

  def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
    return (self.latent_frames(frames), height // self.compression[1], width // self.compression[2])

  def grid(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
    """Patch grid (nt, nh, nw) of a pixel size; time is padded up to a multiple of pt."""
    lt, lh, lw = self.latent_shape(frames, height, width)
    return (-(-lt // self.patch[0]), lh // self.patch[1], lw // self.patch[2])

  def latent_frame(self, frame: int) -> int:
    """The latent frame holding pixel frame f: ceil(f / ct) (causal; frame 0 alone)."""
    return -(-frame // self.compression[0])

  def token_frame(self, frame: int) -> int:
    """The token frame (temporal patch) holding pixel frame f."""
    return self.latent_frame(frame) // self.patch[0]

  def token_windows(
    self, windows: Sequence[tuple[int, int]], frames: int
  ) -> list[tuple[int, int, int]]:
    """Caption windows `[start, end)` in pixel frames -> runs `(caption index, first token
    frame, end token frame)` covering every token frame of a `frames`-frame clip.

    Token frame j belongs to a window when its first pixel frame does; token frames in
    no window belong to caption 0. Adjacent token frames of one caption form one run.
    """
    n = self.token_frame(frames - 1) + 1
    first = [min(f for f in range(frames) if self.token_frame(f) == j) for j in range(n)]
    owner = [0] * n
    for i, (start, end) in enumerate(windows):
      for j in range(n):
        if start <= first[j] < end:
          owner[j] = i
    runs, j = [], 0
    while j < n:
      k = j
      while k < n and owner[k] == owner[j]:
        k += 1
      runs.append((owner[j], j, k))
      j = k
    return runs

  def num_tokens(self, frames: int, height: int, width: int) -> int:
    return math.prod(self.grid(frames, height, width))

  def size_error(self, frames: int, height: int, width: int) -> str | None:
    """Why a requested pixel size is invalid, or None if it is valid."""
    ah, aw = self.align
    if frames <= 0 or height <= 0 or width <= 0:
      return f"frames, height and width must be positive; got {frames}x{height}x{width}"
    if height % ah or width % aw:
      return f"height {height} and width {width} must be multiples of {ah} and {aw} (patch x compression)"
    if (frames - 1) % self.compression[0]:
      return f"num_frames {frames} must be 1 + a multiple of the temporal compression {self.compression[0]}"
    return None


def target_size(
  geom: Geometry,
  frames: int,
  height: int,
  width: int,
  max_tokens: int,
  max_frames: int,
  min_frame_tokens: int = 16,
  rng: np.random.Generator | None = None,
  min_token_fraction: float = 1.0,
) -> tuple[int, int, int]:
  """Picks (frames, height, width) of at most `max_tokens` patches, keeping the aspect ratio.

  Frames are kept (up to `max_frames`) as long as each frame still gets
  `min_frame_tokens` patches; beyond that, frames are dropped instead. Sides are
  rounded down to the required multiples and never upscaled beyond the native
  size except to reach one multiple. With `rng` and `min_token_fraction < 1`,
  the budget is drawn uniformly from [min_token_fraction, 1] * max_tokens, the
  random resolution sampling of NaViT.
  """
  if min(frames, height, width) <= 0:
    raise ValueError(f"size must be positive; got {frames}x{height}x{width}")
  budget = max_tokens
  if rng is not None and min_token_fraction < 1.0:
    budget = int(rng.uniform(min_token_fraction, 1.0) * max_tokens)
  budget = max(budget, 1)
  ah, aw = geom.align
  pt = geom.patch[0]

  # Time: whole temporal patches, from a window of at most max_frames.
  lt = geom.latent_frames(min(frames, max_frames))
  if lt > pt:
    lt -= lt % pt
  nt = -(-lt // pt)
  min_frame_tokens = min(min_frame_tokens, _tokens_at(height, width, ah, aw, 1e9))
  while nt > 1 and budget // nt < min_frame_tokens:
    nt -= 1
    lt = nt * pt

  # Space: the largest aligned size within the per-frame budget.
  per_frame = max(1, budget // nt)
  scale = min(1.0, math.sqrt(per_frame * ah * aw / (height * width)))
  nh = max(1, int(height * scale / ah))
  nw = max(1, int(width * scale / aw))
  while nh * nw > per_frame:  # Rounding up to one multiple may overshoot.
    if nh >= nw and nh > 1:
      nh -= 1
    elif nw > 1:
      nw -= 1
    else:
      break
  return geom.pixel_frames(lt), nh * ah, nw * aw


def _tokens_at(height: int, width: int, ah: int, aw: int, limit: float) -> int:
  """Patches per frame at native size (rounded down to multiples, at least 1 each)."""
  return int(min(limit, max(1, height // ah) * max(1, width // aw)))
