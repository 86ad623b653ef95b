"""Reconstruction quality: PSNR and SSIM of videos in [-1, 1], per clip, over all frames.

PSNR = 10 log10(1 / MSE) on pixels scaled to [0, 1]. SSIM is the standard
Gaussian-window SSIM (Wang et al. 2004: window 11, sigma 1.5, K1 = 0.01,
K2 = 0.03) computed per frame and colour channel and averaged; frames smaller
than the window use a window of their smaller side (odd).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _unit(x: jax.Array) -> jax.Array:
  return (jnp.clip(x.astype(jnp.float32), -1.0, 1.0) + 1.0) * 0.5


def psnr(x: jax.Array, y: jax.Array) -> jax.Array:
  """PSNR in dB of each clip `[B, T, H, W, C]` -> `[B]` (capped at 100 dB for identical clips)."""
  mse = jnp.mean(jnp.square(_unit(x) - _unit(y)), axis=tuple(range(1, x.ndim)))
  return jnp.minimum(10.0 * jnp.log10(1.0 / jnp.maximum(mse, 1e-10)), 100.0)


def _gaussian(size: int, sigma: float) -> jax.Array:
  r = jnp.arange(size, dtype=jnp.float32) - (size - 1) / 2
  g = jnp.exp(-0.5 * jnp.square(r / sigma))
  return g / g.sum()


def _blur(x: jax.Array, g: jax.Array) -> jax.Array:
  """Separable 'valid' Gaussian filter over H and W of `[N, H, W]`."""
  k = g.size
  dn = ("NHWC", "HWIO", "NHWC")
  y = jax.lax.conv_general_dilated(
    x[..., None], g.reshape(k, 1, 1, 1), (1, 1), "VALID", dimension_numbers=dn
  )
  y = jax.lax.conv_general_dilated(y, g.reshape(1, k, 1, 1), (1, 1), "VALID", dimension_numbers=dn)
  return y[..., 0]


def ssim(x: jax.Array, y: jax.Array, window: int = 11, sigma: float = 1.5) -> jax.Array:
  """Mean SSIM of each clip `[B, T, H, W, C]` -> `[B]`."""
  b = x.shape[0]
  size = min(window, x.shape[2], x.shape[3])
  size -= 1 - size % 2  # Odd.
  g = _gaussian(size, sigma)

  def planes(v):  # [B, T, H, W, C] -> [B * T * C, H, W]
    v = jnp.moveaxis(_unit(v), -1, 2)
    return v.reshape(-1, *v.shape[-2:])

  a, c = planes(x), planes(y)
  mu_a, mu_c = _blur(a, g), _blur(c, g)
  var_a = _blur(a * a, g) - mu_a**2
  var_c = _blur(c * c, g) - mu_c**2
  cov = _blur(a * c, g) - mu_a * mu_c
  c1, c2 = 0.01**2, 0.03**2
  s = ((2 * mu_a * mu_c + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_c**2 + c1) * (var_a + var_c + c2))
  return s.reshape(b, -1).mean(axis=1)
