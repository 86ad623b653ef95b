"""Rectified flow: per-example timesteps, the token-count shift, and per-example loss weighting."""

import jax
import jax.numpy as jnp
import numpy as np

from sora_jax.diffusion import flow


def test_timesteps_are_constant_within_a_segment_and_in_range():
  seg = jnp.asarray([[1, 1, 1, 2, 2, 3, 0, 0], [1, 1, 1, 1, 1, 1, 1, 1]])
  t = np.asarray(flow.sample_timesteps(jax.random.key(0), seg, 4, flow.FlowConfig()))
  assert t.shape == seg.shape and np.all((t > 0) & (t < 1))
  for b, row in enumerate(np.asarray(seg)):
    for s in set(row.tolist()) - {0}:
      assert len(set(t[b, row == s].tolist())) == 1


def test_shift_grows_with_token_count():
  cfg = flow.FlowConfig(shift_base_tokens=256, shift_min=0.25, shift_max=8.0)
  counts = jnp.asarray([16.0, 256.0, 1024.0, 4096.0])
  shift = np.asarray(flow.shift_for(counts, cfg))
  np.testing.assert_allclose(shift, [0.25, 1.0, 2.0, 4.0])
  t = jnp.full(4, 0.5)
  shifted = np.asarray(flow.shifted(t, jnp.asarray(shift)))
  assert np.all(np.diff(shifted) > 0)  # Bigger examples get noisier timesteps.
  np.testing.assert_allclose(flow.shifted(jnp.asarray([0.0, 1.0]), 3.0), [0.0, 1.0])


def test_mean_weights_examples_equally_whatever_their_length():
  seg = jnp.asarray([[1] * 12 + [2] * 2 + [0] * 2])
  values = jnp.asarray([[1.0] * 12 + [3.0] * 2 + [100.0] * 2])
  mean, n = flow.segment_mean(values, seg, 3)
  assert int(n) == 2
  np.testing.assert_allclose(float(mean), 2.0)  # (1 + 3) / 2, padding ignored.


def test_loss_is_zero_for_a_perfect_velocity_model():
  """A model that knows x0 predicts the velocity exactly."""
  x0 = jnp.asarray(np.random.default_rng(0).standard_normal((1, 6, 4)), jnp.float32)
  batch = {
    "tokens": x0,
    "coords": jnp.zeros((1, 6, 3), jnp.int32),
    "segment_ids": jnp.asarray([[1, 1, 1, 2, 2, 2]]),
    "text_ids": jnp.zeros((1, 2), jnp.int32),
    "text_segment_ids": jnp.asarray([[1, 2]]),
  }
  # x_t = (1 - t) x0 + t eps  =>  (x_t - x0) / t = eps - x0 = v.
  loss, aux = flow.loss_fn(
    lambda *a: (a[0] - x0) / a[3][..., None], batch, jax.random.key(1), flow.FlowConfig(), 3
  )
  assert float(loss) < 1e-8 and int(aux["num_examples"]) == 2


def test_data_prediction_loss_is_the_clean_error_at_every_t():
  """With x0 prediction and min_t, a model that outputs x0 has zero loss at every t, and
  any other output costs |x0 - out|^2 / max(t, min_t)^2, below min_t as well."""
  rng = np.random.default_rng(0)
  x0 = jnp.asarray(rng.standard_normal((1, 6, 4)), jnp.float32)
  noise = jnp.asarray(rng.standard_normal((1, 6, 4)), jnp.float32)
  batch = {
    "tokens": x0,
    "coords": jnp.zeros((1, 6, 3), jnp.int32),
    "segment_ids": jnp.ones((1, 6), jnp.int32),
    "text_ids": jnp.zeros((1, 2), jnp.int32),
    "text_segment_ids": jnp.ones((1, 2), jnp.int32),
  }
  cfg = flow.FlowConfig(prediction="data", min_t=0.5)
  t = jnp.asarray([[0.02, 0.1, 0.3, 0.5, 0.7, 0.95]])
  exact = flow.token_loss(lambda *a: x0, batch, t, noise, cfg)
  np.testing.assert_allclose(exact, 0.0, atol=1e-10)
  off = flow.token_loss(lambda *a: x0 + 0.1, batch, t, noise, cfg)
  np.testing.assert_allclose(off[0], 0.01 / np.maximum(np.asarray(t[0]), 0.5) ** 2, rtol=1e-4)


def test_clean_estimate_inverts_both_predictions():
  rng = np.random.default_rng(1)
  x0, noise = (jnp.asarray(rng.standard_normal((1, 5, 3)), jnp.float32) for _ in range(2))
  t = jnp.asarray([[0.01, 0.2, 0.5, 0.8, 1.0]])
  xt = flow.noised(x0, noise, t, jnp.ones((1, 5), jnp.int32))
  for prediction, out in (("velocity", noise - x0), ("data", x0)):
    cfg = flow.FlowConfig(prediction=prediction)
    np.testing.assert_allclose(flow.clean_estimate(out, xt, t, cfg), x0, atol=1e-5)


def _skip_and_scale(t, sigma):
  d = (1 - t) ** 2 * sigma**2 + t**2
  return (1 - t) * sigma**2 / d, sigma * t / np.sqrt(d)


def test_preconditioned_prediction_is_edm_skip_and_scale():
  """ "preconditioned": x0_hat = c_skip x_t + c_out F; the loss is |F - F*|^2 at every t
  (unit weight), the velocity it stands for is (x_t - x0_hat) / t and stays finite at t = 0."""
  rng = np.random.default_rng(2)
  x0, noise = (jnp.asarray(rng.standard_normal((1, 6, 4)), jnp.float32) for _ in range(2))
  t = jnp.asarray([[0.0, 0.05, 0.3, 0.5, 0.8, 1.0]])
  seg = jnp.ones((1, 6), jnp.int32)
  xt = flow.noised(x0, noise, t, seg)
  cfg = flow.FlowConfig(prediction="preconditioned", sigma_data=0.7)
  c_skip, c_out = (jnp.asarray(c)[..., None] for c in _skip_and_scale(np.asarray(t), 0.7))
  target = (x0 - c_skip * xt) / jnp.where(c_out > 0, c_out, 1.0)  # F* (any F at t = 0)
  np.testing.assert_allclose(flow.clean_estimate(target, xt, t, cfg), x0, atol=1e-5)
  v = flow.velocity(target, xt, t, cfg)
  assert bool(jnp.all(jnp.isfinite(v)))
  np.testing.assert_allclose(v[0, 1:], (noise - x0)[0, 1:], atol=1e-4)
  np.testing.assert_allclose(v[0, 0], -xt[0, 0] - target[0, 0], atol=1e-6)  # D = s^2 at t = 0
  batch = {
    "tokens": x0,
    "coords": jnp.zeros((1, 6, 3), jnp.int32),
    "segment_ids": seg,
    "text_ids": jnp.zeros((1, 2), jnp.int32),
    "text_segment_ids": jnp.ones((1, 2), jnp.int32),
  }
  exact = flow.token_loss(lambda *a: target, batch, t, noise, cfg)
  np.testing.assert_allclose(exact[0, 1:], 0.0, atol=1e-8)
  off = flow.token_loss(lambda *a: target + 0.1, batch, t, noise, cfg)
  np.testing.assert_allclose(off[0, 1:], 0.01, rtol=1e-3)  # F's error, whatever t
  assert bool(jnp.all(jnp.isfinite(off)))  # t = 0 (given tokens, weight 0): finite
