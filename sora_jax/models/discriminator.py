"""A 3D patch discriminator for the autoencoder's optional adversarial loss.

  video [B, T, H, W, 3] in [-1, 1] -> logits [B, T', H / 2^n, W / 2^n, 1]

n stride-2 (spatial) 3x3x3 convolutions with leaky ReLU and RMS norm, then a
1-channel 3x3x3 conv: each logit judges one spacetime patch, so the loss
pushes local texture and motion toward real clips, not global layout. Time is
padded on both sides: the discriminator only trains the decoder and need not
be causal. Parameters carry the same logical axis names as the autoencoder's.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from sora_jax.models import layers


@dataclasses.dataclass(frozen=True)
class DiscriminatorConfig:
  channels: int = 32
  num_layers: int = 3  # Stride-2 layers; channels double each, up to 8x.


class Conv3d(nnx.Module):
  def __init__(self, cin, cout, stride, *, rngs):
    init = jax.nn.initializers.variance_scaling(1.0, "fan_in", "normal")
    self.kernel = nnx.Param(
      init(rngs.params(), (3, 3, 3, cin, cout), jnp.float32),
      out_sharding=(None, None, None, "conv_in", "conv_out"),
    )
    self.bias = nnx.Param(jnp.zeros((cout,), jnp.float32), out_sharding=("conv_out",))
    self.stride = stride

  def __call__(self, x):
    y = jax.lax.conv_general_dilated(
      x,
      self.kernel[...],
      window_strides=self.stride,
      padding=((1, 1), (1, 1), (1, 1)),
      dimension_numbers=("NDHWC", "DHWIO", "NDHWC"),
    )
    return y + self.bias[...]


class Discriminator(nnx.Module):
  def __init__(self, cfg: DiscriminatorConfig, *, rngs: nnx.Rngs):
    chans = [cfg.channels * min(2**i, 8) for i in range(cfg.num_layers + 1)]
    self.convs = nnx.List(
      [Conv3d(3, chans[0], (1, 1, 1), rngs=rngs)]
      + [Conv3d(chans[i], chans[i + 1], (1, 2, 2), rngs=rngs) for i in range(cfg.num_layers)]
    )
    self.norms = nnx.List([layers.RMSNorm(c, "conv_in") for c in chans[1:]])
    self.out = Conv3d(chans[-1], 1, (1, 1, 1), rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    h = jax.nn.leaky_relu(self.convs[0](x.astype(jnp.float32)), 0.2)
    for conv, norm in zip(self.convs[1:], self.norms, strict=True):
      h = jax.nn.leaky_relu(norm(conv(h)), 0.2)
    return self.out(h)


def hinge_d_loss(real_logits: jax.Array, fake_logits: jax.Array) -> jax.Array:
  """The discriminator's hinge loss."""
  return 0.5 * (jnp.mean(jax.nn.relu(1.0 - real_logits)) + jnp.mean(jax.nn.relu(1.0 + fake_logits)))


def generator_loss(fake_logits: jax.Array) -> jax.Array:
  """The decoder's adversarial loss (hinge generator form)."""
  return -jnp.mean(fake_logits)
