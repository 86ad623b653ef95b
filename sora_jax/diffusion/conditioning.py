r"""Clean context anywhere in the input: the one mechanism behind every editing mode.

Every token carries a **keep** value k in [0, 1], constant over a token frame (a
temporal patch: in pixel space `pt` frames, in latent space `pt` latent frames):

  k = 1       the frame is given and kept exactly,
  k = 0       the frame is generated freely,
  0 < k < 1   the given frame is a starting point that may change.

k sets how far into the schedule the token joins: its noise level is

  t_token = min(t, 1 - k)            (t: the example's shifted noise level, 0 = data)

so a kept token sits at t = 0 for the whole run, a free one follows the
example's schedule, and one at k = 0.3 starts from its given value noised to
0.7 and only moves once the schedule passes 0.7 (SDEdit, per token). Training
and sampling both call `token_times`, so they cannot drift apart.

**Training** (`config.flow.conditioning`): each example draws a task from a
mixture; the task sets its keep values:

  text      nothing given (plain text-to-video; its weight is also the
            condition-dropout rate that guidance over given frames relies on)
  first     the first token frame given (image-to-video)
  last      the last token frame given
  ends      first and last given (loops, connecting two shots)
  prefix    the first m frames given, m ~ U{1..n-1} (forward extension)
  suffix    the last m frames given (backward extension)
  random    each frame given with probability `random_fraction`
  forcing   every frame its own k ~ U[0, 1] (diffusion forcing, Pusa's vectorised
            timesteps): any keep curve a user draws is in the training distribution

An example whose task would give every frame (an image, or `ends` on two
frames) falls back to `text`. Given tokens (k = 1) are noised to a small random
level in [0, given_noise] rather than exactly 0 (so the model does not rely on
pixel-exact context, as LTX-Video and Open-Sora condition), and the loss covers
only the tokens that are not given. Caption dropout stays in the data pipeline
(`data.caption_dropout`), independent of the task, so guidance can push on the
text and on the given frames separately.

Defaults (`experiments/base.py`): off (all weight on `text`). The editing
mixture (`MIXTURE`, used by the demo and the editing configs) puts 25% of
examples in conditioned tasks, mostly image-to-video and extension, as Open-Sora
1.1/1.2 do (mask_no = 0.75, `image_head` the largest share); LTX-Video and
Open-Sora 2.0 condition more, Pusa every example (vectorised timesteps). We
measured both ends on the demo (docs/performance.md, "Editing"): with 50%
conditioned, text-to-video motion fell from 67.5% to 50% at the same steps;
with 25% it read 62.5% while every editing figure held (continuity 62-100%,
storyboard 62%/62%, re-cut 100%), so 25% it is. Images fall back to `text`,
so about 18% of a demo batch's examples end up conditioned.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

TASKS = ("text", "first", "last", "ends", "prefix", "suffix", "random", "forcing")
# The editing mixture (a quarter of the examples conditioned); see the module docstring.
MIXTURE = dict(
  text=0.75, first=0.08, last=0.02, ends=0.03, prefix=0.05, suffix=0.02, random=0.02, forcing=0.03
)


@dataclasses.dataclass(frozen=True)
class ConditioningConfig:
  weights: tuple[float, ...]  # One per TASKS entry.
  given_noise: float = 0.05  # Given tokens are noised to U[0, given_noise] in training.
  random_fraction: float = 0.5  # The "random" task gives each frame with this probability.

  @classmethod
  def from_config(cls, cfg: Mapping[str, Any] | None) -> ConditioningConfig | None:
    """From `config.flow.conditioning`; None when every example is plain text-to-video."""
    if not cfg:
      return None
    d = dict(cfg)
    weights = tuple(float(d.get(name, 0.0)) for name in TASKS)
    if sum(weights[1:]) == 0:
      return None
    return cls(
      weights=weights,
      given_noise=float(d.get("given_noise", 0.05)),
      random_fraction=float(d.get("random_fraction", 0.5)),
    )


def validate(cfg: Mapping[str, Any]) -> str | None:
  """Why `config.flow.conditioning` is invalid, or None."""
  d = dict(cfg)
  known = set(TASKS) | {"given_noise", "random_fraction"}
  unknown = sorted(set(d) - known)
  if unknown:
    return f"config.flow.conditioning has no field {unknown[0]!r}; allowed: {sorted(known)}"
  for name in TASKS:
    if float(d.get(name, 0.0)) < 0:
      return f"config.flow.conditioning.{name}={d[name]}: weights must be >= 0"
  if sum(float(d.get(name, 0.0)) for name in TASKS) <= 0:
    return "config.flow.conditioning: the task weights sum to 0; give text=1 for none"
  if not 0.0 <= float(d.get("given_noise", 0.05)) <= 0.5:
    return f"config.flow.conditioning.given_noise={d['given_noise']}: allowed [0, 0.5]"
  if not 0.0 < float(d.get("random_fraction", 0.5)) < 1.0:
    return f"config.flow.conditioning.random_fraction={d['random_fraction']}: allowed (0, 1)"
  return None


def token_times(t: jax.Array, keep: jax.Array, given_t: jax.Array | float = 0.0) -> jax.Array:
  """Per-token noise levels `[B, L]`: min(t, 1 - keep), and `given_t` where keep = 1."""
  return jnp.where(keep >= 1.0, given_t, jnp.minimum(t, 1.0 - keep))


def frames_per_segment(coords: jax.Array, segment_ids: jax.Array, num_segments: int) -> jax.Array:
  """Token frames of each segment `[B, K]`: 1 + the largest time coordinate among its tokens."""
  one_hot = jax.nn.one_hot(segment_ids, num_segments, dtype=jnp.int32)
  return jnp.max(one_hot * (coords[..., 0:1] + 1), axis=1)


def _per_frame_uniform(key: jax.Array, segment_ids: jax.Array, frame: jax.Array) -> jax.Array:
  """U[0, 1) per (row, segment, token frame), equal for the tokens of one frame `[B, L]`."""
  b, length = segment_ids.shape
  rows = jnp.broadcast_to(jnp.arange(b)[:, None], (b, length))

  def one(r, s, f):
    return jax.random.uniform(jax.random.fold_in(jax.random.fold_in(key, r * 65_537 + s), f))

  return jax.vmap(one)(rows.ravel(), segment_ids.ravel(), frame.ravel()).reshape(b, length)


def sample_keep(
  rng: jax.Array,
  coords: jax.Array,
  segment_ids: jax.Array,
  num_segments: int,
  cfg: ConditioningConfig,
) -> tuple[jax.Array, jax.Array]:
  """Training keep values `[B, L]` float32 and each segment's task index `[B, K]`."""
  task_rng, len_rng, frame_rng, level_rng = jax.random.split(rng, 4)
  b = segment_ids.shape[0]
  logits = jnp.log(jnp.asarray(cfg.weights, jnp.float32))
  task = jax.random.categorical(task_rng, logits, shape=(b, num_segments))
  n = frames_per_segment(coords, segment_ids, num_segments)
  # prefix/suffix length m in [1, n - 1] (0 when n = 1: nothing given).
  m = jnp.floor(jax.random.uniform(len_rng, (b, num_segments)) * (n - 1)).astype(jnp.int32) + 1
  m = jnp.where(n > 1, m, 0)

  gather = lambda v: jnp.take_along_axis(v, segment_ids, axis=1)
  tk, nk, mk = gather(task), gather(n), gather(m)
  f = coords[..., 0]
  u_given = _per_frame_uniform(frame_rng, segment_ids, f)
  u_level = _per_frame_uniform(level_rng, segment_ids, f)
  first, last = f == 0, f == nk - 1
  given = jnp.stack(
    [
      jnp.zeros_like(first),  # text
      first,
      last,
      first | last,
      f < mk,  # prefix
      f >= nk - mk,  # suffix
      u_given < cfg.random_fraction,  # random
      jnp.zeros_like(first),  # forcing: fractional, below
    ],
    axis=-1,
  )
  keep = jnp.take_along_axis(given, tk[..., None], axis=-1)[..., 0].astype(jnp.float32)
  keep = jnp.where(tk == TASKS.index("forcing"), u_level, keep)
  keep = jnp.where(segment_ids > 0, keep, 0.0)
  # An example with every token given would teach nothing: it becomes plain text.
  one_hot = jax.nn.one_hot(segment_ids, num_segments, dtype=jnp.float32)
  free = jnp.einsum("bl,blk->bk", (keep < 1.0).astype(jnp.float32), one_hot)
  all_given = gather(free) == 0
  keep = jnp.where(all_given, 0.0, keep)
  task = jnp.where(free == 0, 0, task)
  return keep, task


def given_levels(rng: jax.Array, segment_ids: jax.Array, cfg: ConditioningConfig) -> jax.Array:
  """Training noise levels of given tokens `[B, L]`, U[0, given_noise] per token."""
  return cfg.given_noise * jax.random.uniform(rng, segment_ids.shape)


def loss_weights(keep: jax.Array, segment_ids: jax.Array) -> jax.Array:
  """1 on the tokens the loss covers (real and not given), else 0 `[B, L]`."""
  return ((keep < 1.0) & (segment_ids > 0)).astype(jnp.float32)
