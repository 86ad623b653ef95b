"""Rotary position embeddings over any number of axes (3D for video, 1D for text).

The head dim is cut into one even-sized chunk per axis; each chunk's pairs of
features rotate by angles `position * theta ** (-2i / chunk)`. Positions are
patch-grid coordinates, so any resolution or duration works without a learned
position table.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp


def axis_dims(head_dim: int, num_axes: int) -> tuple[int, ...]:
  """Even chunk sizes per axis; for 3 axes time gets ~1/4, height and width ~3/8 each."""
  if head_dim % 2:
    raise ValueError(f"head_dim {head_dim} must be even for rotary embeddings")
  if num_axes == 1:
    return (head_dim,)
  if num_axes != 3:
    raise ValueError("rotary embeddings support 1 or 3 axes")
  t = max(2, (head_dim // 4) // 2 * 2)
  hw = (head_dim - t) // 2 // 2 * 2
  return (head_dim - 2 * hw, hw, hw)


def angles(positions: jax.Array, dims: Sequence[int], theta: float = 10_000.0) -> jax.Array:
  """Rotation angles `[..., head_dim // 2]` for positions `[..., num_axes]`."""
  parts = []
  for axis, d in enumerate(dims):
    inv_freq = theta ** (-jnp.arange(0, d, 2, dtype=jnp.float32) / d)
    parts.append(positions[..., axis : axis + 1].astype(jnp.float32) * inv_freq)
  return jnp.concatenate(parts, axis=-1)


class Rotary:
  """Applies precomputed rotations to q or k `[B, L, H, Dh]`."""

  def __init__(self, positions: jax.Array, head_dim: int, theta: float = 10_000.0):
    num_axes = positions.shape[-1]
    a = angles(positions, axis_dims(head_dim, num_axes), theta)  # [B, L, Dh/2]
    self.cos = jnp.cos(a)[:, :, None, :]
    self.sin = jnp.sin(a)[:, :, None, :]

  def __call__(self, x: jax.Array) -> jax.Array:
    x2 = x.astype(jnp.float32).reshape(*x.shape[:-1], -1, 2)
    x0, x1 = x2[..., 0], x2[..., 1]
    out = jnp.stack([x0 * self.cos - x1 * self.sin, x0 * self.sin + x1 * self.cos], axis=-1)
    return out.reshape(x.shape).astype(x.dtype)


def segment_positions(segment_ids: jax.Array) -> jax.Array:
  """Index of each position within its segment: `[B, L]` -> `[B, L]` int32."""
  idx = jnp.arange(segment_ids.shape[-1], dtype=jnp.int32)
  prev = jnp.pad(
    segment_ids[..., :-1], [(0, 0)] * (segment_ids.ndim - 1) + [(1, 0)], constant_values=-1
  )
  start = jnp.where(segment_ids != prev, idx, 0)
  return idx - jax.lax.cummax(start, axis=segment_ids.ndim - 1)
