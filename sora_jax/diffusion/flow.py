r"""Rectified flow: the training objective and the time schedule of sampling.

Convention: t = 0 is data, t = 1 is noise, and the path is straight,

  x_t = (1 - t) x_0 + t \epsilon,     v = dx_t/dt = \epsilon - x_0,

so the model predicts the velocity v and sampling integrates dx/dt = v from
t = 1 down to t = 0.

Timesteps are drawn per example (segment), logit-normal: t = sigmoid(m + s u)
with u ~ N(0, 1). Larger examples need more noise to destroy the same
information, so t is then shifted by

  shift(n) = clip((n / shift_base_tokens) ** shift_power, shift_min, shift_max)
  t' = shift * t / (1 + (shift - 1) * t),

where n is the example's token count (SD3's resolution-dependent shift,
with the token count in place of the pixel count). Sampling applies the same
shift to its uniform time grid, per example.

The network may output v directly (`prediction="velocity"`), a clean
estimate x0_hat from which v = (x_t - x0_hat) / t (`prediction="data"`), or
the scaled residual F of EDM's preconditioning (`prediction="preconditioned"`,
Karras et al. 2022) carried over to the straight path:

  x0_hat = c_skip(t) x_t + c_out(t) F,   D = (1 - t)^2 s^2 + t^2,
  c_skip = (1 - t) s^2 / D,              c_out = s t / sqrt(D),

with s = `sigma_data`, so that F's target (x0 - c_skip x_t) / c_out has unit
variance at every t and c_skip x_t is the best linear guess of x0. Near t = 0
the estimate is mostly the input itself: the network only removes the little
noise there is, where an x0-predicting network must rebuild every pixel of a
clip it can already see.

The sampler always works with velocities. The loss is the squared error of v
(of F for "preconditioned", EDM's unit weighting) averaged over each example's
tokens and features, then over the examples of the batch, so one long video
does not outweigh the images packed beside it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from sora_jax.diffusion import conditioning as conditioning_lib


@dataclasses.dataclass(frozen=True)
class FlowConfig:
  logit_mean: float = 0.0
  logit_std: float = 1.0
  shift_base_tokens: int = 256
  shift_power: float = 0.5
  shift_min: float = 0.5
  shift_max: float = 8.0
  prediction: str = "velocity"  # What the network outputs: "velocity", or "data" (x0).
  # "data" prediction: the loss is |x0 - x0_hat|^2 / max(t, min_t)^2, the velocity
  # error with its weight on near-clean timesteps capped (min_t = 1: the x0 error).
  min_t: float = 0.05
  # "preconditioned" prediction: the standard deviation of the data.
  sigma_data: float = 0.5
  # Clean context in training (sora_jax.diffusion.conditioning); None: text-to-video only.
  conditioning: conditioning_lib.ConditioningConfig | None = None

  @classmethod
  def from_config(cls, cfg: Mapping[str, Any]) -> FlowConfig:
    names = {f.name for f in dataclasses.fields(cls)} - {"conditioning"}
    cond = conditioning_lib.ConditioningConfig.from_config(dict(cfg).get("conditioning"))
    return cls(**{k: v for k, v in dict(cfg).items() if k in names}, conditioning=cond)


def segment_counts(segment_ids: jax.Array, num_segments: int) -> jax.Array:
  """Tokens per segment id: `[B, L]` -> `[B, num_segments]` float32 (index 0 = padding)."""
  one_hot = jax.nn.one_hot(segment_ids, num_segments, dtype=jnp.float32)
  return one_hot.sum(axis=1)


def shift_for(counts: jax.Array, cfg: FlowConfig) -> jax.Array:
  """The timestep shift of examples with `counts` tokens."""
  s = (jnp.maximum(counts, 1.0) / cfg.shift_base_tokens) ** cfg.shift_power
  return jnp.clip(s, cfg.shift_min, cfg.shift_max)


def shifted(t: jax.Array, shift: jax.Array) -> jax.Array:
  return shift * t / (1.0 + (shift - 1.0) * t)


def per_token(values: jax.Array, segment_ids: jax.Array) -> jax.Array:
  """Gathers per-segment values `[B, K]` to tokens `[B, L]`."""
  return jnp.take_along_axis(values, segment_ids, axis=1)


def sample_timesteps(
  rng: jax.Array, segment_ids: jax.Array, num_segments: int, cfg: FlowConfig
) -> jax.Array:
  """Per-token timesteps `[B, L]`, constant within a segment (see module docstring)."""
  b = segment_ids.shape[0]
  u = jax.random.normal(rng, (b, num_segments))
  t = jax.nn.sigmoid(cfg.logit_mean + cfg.logit_std * u)
  t = shifted(t, shift_for(segment_counts(segment_ids, num_segments), cfg))
  return per_token(t, segment_ids)


def per_segment(
  values: jax.Array,
  segment_ids: jax.Array,
  num_segments: int,
  weights: jax.Array | None = None,
):
  """Mean of `values [B, L]` over each example's tokens: (means [B, K-1], present [B, K-1]).

  Column k - 1 is segment id k (padding, id 0, is dropped); `present` marks the
  segments that have tokens in the row. `weights [B, L]` (0/1) restricts the mean to
  some tokens (e.g. those not given as context); a segment with none is not present.
  """
  one_hot = jax.nn.one_hot(segment_ids, num_segments, dtype=jnp.float32)[..., 1:]  # no padding
  if weights is not None:
    one_hot = one_hot * weights[..., None]
  sums = jnp.einsum("bl,blk->bk", values.astype(jnp.float32), one_hot)
  counts = one_hot.sum(axis=1)
  present = counts > 0
  return jnp.where(present, sums / jnp.maximum(counts, 1.0), 0.0), present


def segment_mean(
  values: jax.Array,
  segment_ids: jax.Array,
  num_segments: int,
  weights: jax.Array | None = None,
):
  """Mean of `values [B, L]` over each example's (weighted) tokens, then over all examples.

  Returns (mean over examples, number of examples).
  """
  per_example, present = per_segment(values, segment_ids, num_segments, weights)
  n = present.sum()
  return per_example.sum() / jnp.maximum(n, 1), n


def noised(x0: jax.Array, noise: jax.Array, t: jax.Array, segment_ids: jax.Array) -> jax.Array:
  """x_t = (1 - t) x_0 + t noise on real tokens, 0 on padding; `t` is per token `[B, L]`."""
  real = (segment_ids > 0)[..., None]
  return jnp.where(real, (1.0 - t[..., None]) * x0 + t[..., None] * noise, 0.0)


def _preconditioning(t: jax.Array, cfg: FlowConfig):
  """(t, sigma_data^2, D) of the "preconditioned" prediction (module docstring)."""
  s2 = cfg.sigma_data**2
  return t, s2, (1.0 - t) ** 2 * s2 + t**2


def velocity(
  out: jax.Array, xt: jax.Array, t: jax.Array, cfg: FlowConfig, *, min_t: float = 0.0
) -> jax.Array:
  """The velocity a network output stands for.

  "velocity": the output is v itself. "data": the output is a clean estimate
  x0_hat and v = (x_t - x0_hat) / t, the straight line from it through x_t
  (JiT, Li & He 2025): the network then only has to produce clean data, which
  lies on a low-dimensional manifold, instead of reproducing every dimension
  of the noise; for large pixel patches that is the difference between
  learning and not. `min_t` clips the division (training only; sampling
  divides by the exact t > 0).
  "preconditioned": v = (x_t - x0_hat) / t with the division done in closed form,
  finite at t = 0 (see the module docstring).
  """
  if cfg.prediction == "velocity":
    return out
  if cfg.prediction == "preconditioned":
    t, s2, d = _preconditioning(t[..., None], cfg)
    return xt * (t - (1.0 - t) * s2) / d - out * (cfg.sigma_data * jax.lax.rsqrt(d))
  return (xt - out) / jnp.maximum(t, min_t)[..., None]


def clean_estimate(out: jax.Array, xt: jax.Array, t: jax.Array, cfg: FlowConfig) -> jax.Array:
  """The clean tokens x0_hat a network output stands for: the output itself ("data"),
  c_skip x_t + c_out F ("preconditioned"), or x_t - t v ("velocity"), the point the
  straight path reaches at t = 0."""
  if cfg.prediction == "data":
    return out
  if cfg.prediction == "preconditioned":
    t, s2, d = _preconditioning(t[..., None], cfg)
    return xt * ((1.0 - t) * s2 / d) + out * (cfg.sigma_data * t * jax.lax.rsqrt(d))
  return xt - t[..., None] * out


def network_output(
  model, batch: Mapping[str, jax.Array], t: jax.Array, noise: jax.Array
) -> tuple[jax.Array, jax.Array]:
  """(x_t, the network's output on it) for a packed batch noised to `t [B, L]`."""
  xt = noised(batch["tokens"], noise, t, batch["segment_ids"])
  out = model(
    xt,
    batch["coords"],
    batch["segment_ids"],
    t,
    batch["text_ids"],
    batch["text_segment_ids"],
    batch.get("text_frames"),  # Caption windows (data.caption_windows), or None.
  )
  return xt, out


def token_loss(
  model, batch: Mapping[str, jax.Array], t: jax.Array, noise: jax.Array, cfg: FlowConfig
) -> jax.Array:
  """The objective per token `[B, L]` at given timesteps `t [B, L]` and `noise`.

  The squared error of the velocity, averaged over features ("preconditioned": of F,
  which is the velocity's error times D / sigma_data^2). Every user of the objective
  (training, evaluation probes) calls this, so they cannot drift apart.
  """
  x0 = batch["tokens"]
  xt, out = network_output(model, batch, t, noise)
  pred = velocity(out, xt, t, cfg, min_t=cfg.min_t)
  # The target is the velocity the true x0 stands for under the same clip: noise - x0
  # where t >= min_t, and t / min_t of it below. Against the unclipped noise - x0, the
  # best output below min_t would be x_t - min_t (noise - x0), not x0: noise and
  # overshoot where the sampler's last steps read it.
  target = noise - x0
  if cfg.prediction == "data":
    target = velocity(x0, xt, t, cfg, min_t=cfg.min_t)
  err = jnp.mean(jnp.square(pred - target), axis=-1)
  if cfg.prediction == "preconditioned":
    # |F - F*|^2 = |v - v*|^2 t^2 / c_out^2, without dividing by c_out (0 at t = 0).
    _, s2, d = _preconditioning(t, cfg)
    err = err * d / s2
  return err


def context_loss(
  model,
  batch: Mapping[str, jax.Array],
  keep: jax.Array,
  t: jax.Array,
  noise: jax.Array,
  cfg: FlowConfig,
  num_segments: int,
  weights: jax.Array | None = None,
) -> jax.Array:
  """The objective with frames given as context: tokens at `token_times(t, keep)`, the mean
  over each example's `weights` tokens (default: those not given), then over examples."""
  seg = batch["segment_ids"]
  tt = conditioning_lib.token_times(t, keep)
  if weights is None:
    weights = conditioning_lib.loss_weights(keep, seg)
  return segment_mean(token_loss(model, batch, tt, noise, cfg), seg, num_segments, weights)[0]


def loss_fn(
  model, batch: Mapping[str, jax.Array], rng: jax.Array, cfg: FlowConfig, num_segments: int
):
  """Rectified-flow velocity loss of a packed batch; returns (loss, aux metrics).

  With `cfg.conditioning`, each example draws a task that gives some of its frames
  as clean context (sora_jax.diffusion.conditioning): given tokens sit at a small
  noise level and the loss averages over the other tokens only.
  """
  seg = batch["segment_ids"]
  t_rng, n_rng = jax.random.split(rng)
  t = sample_timesteps(t_rng, seg, num_segments, cfg)
  noise = jax.random.normal(n_rng, batch["tokens"].shape, batch["tokens"].dtype)
  weights, aux = None, {}
  if cfg.conditioning is not None:
    k_rng, g_rng = jax.random.split(jax.random.fold_in(rng, 1))
    keep, task = conditioning_lib.sample_keep(
      k_rng, batch["coords"], seg, num_segments, cfg.conditioning
    )
    t = conditioning_lib.token_times(
      t, keep, conditioning_lib.given_levels(g_rng, seg, cfg.conditioning)
    )
    weights = conditioning_lib.loss_weights(keep, seg)
    present = segment_counts(seg, num_segments)[:, 1:] > 0
    aux["conditioned_examples"] = jnp.sum(present & (task[:, 1:] > 0))
  per_token_loss = token_loss(model, batch, t, noise, cfg)
  loss, num_examples = segment_mean(per_token_loss, seg, num_segments, weights)
  return loss, {"num_examples": num_examples, "real_tokens": (seg > 0).sum(), **aux}
