"""The causal video autoencoder: shapes, causality, chunking, tiling, training, axis names.

Models are tiny (base 8 channels, 4 latent channels). Parameters are drawn with
the "rbg" PRNG, whose initializers compile in a fraction of threefry's time on
CPU; encode and decode run under jit for the same reason.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from sora_jax.models import autoencoder as ae

# One 3D conv per layer compiles faster than the CPU default ("frames"), which
# test_frame_by_frame_convolution_equals_one_3d_convolution checks against it.
CFG = ae.AutoencoderConfig(latent_channels=4, base_channels=8, norm_groups=2, conv_impl="3d")

_encode = nnx.jit(lambda model, x: model.encode(x))
_decode = nnx.jit(lambda model, z: model.decode(z))


def _model(seed: int = 0) -> ae.VideoAutoencoder:
  return ae.VideoAutoencoder(CFG, rngs=nnx.Rngs(params=jax.random.key(seed, impl="rbg")))


def _video(shape, seed=0) -> jax.Array:
  return jax.random.uniform(jax.random.key(seed), shape, minval=-1.0, maxval=1.0)


@pytest.fixture(scope="module")
def model() -> ae.VideoAutoencoder:
  return _model()


@pytest.mark.parametrize("t,h,w", [(1, 8, 24), (5, 16, 40), (9, 24, 8)])
def test_shapes_for_images_and_videos(model, t, h, w):
  mean, logvar = _encode(model, _video((2, t, h, w, 3)))
  latent = (2, 1 + (t - 1) // 4, h // 8, w // 8, CFG.latent_channels)
  assert mean.shape == latent and logvar.shape == latent
  assert _decode(model, mean).shape == (2, t, h, w, 3)


def test_rejects_bad_shapes(model):
  with pytest.raises(ValueError, match="1 \\+ 4k"):
    model.encode(jnp.zeros((1, 4, 16, 16, 3)))
  with pytest.raises(ValueError, match="multiples of 8"):
    model.encode(jnp.zeros((1, 5, 12, 16, 3)))


def test_encoder_is_causal(model):
  x = _video((1, 9, 16, 16, 3))
  changed = x.at[:, 5:].set(_video((1, 4, 16, 16, 3), seed=1))
  (a, _), (b, _) = _encode(model, x), _encode(model, changed)
  # Latent frame j sees input frames <= 4j: frames 5..8 only reach latent frame 2.
  np.testing.assert_allclose(a[:, :2], b[:, :2], atol=1e-5)
  assert np.abs(a[:, 2] - b[:, 2]).max() > 1e-3
  # The first frame is encoded on its own: an image is a one-frame video.
  np.testing.assert_allclose(_encode(model, x[:, :1])[0], a[:, :1], atol=1e-5)


def test_decoder_is_causal(model):
  z = jax.random.normal(jax.random.key(2), (1, 3, 2, 2, CFG.latent_channels))
  a = _decode(model, z)
  b = _decode(model, z.at[:, 2].set(0.0))
  # Output frame t sees latent frames <= ceil(t / 4): latent 2 only reaches frames 5..8.
  np.testing.assert_allclose(a[:, :5], b[:, :5], atol=1e-5)
  assert np.abs(a[:, 5:] - b[:, 5:]).max() > 1e-3
  np.testing.assert_allclose(_decode(model, z[:, :1]), a[:, :1], atol=1e-5)


def test_chunked_encode_and_decode_equal_one_shot(model):
  x = _video((1, 13, 16, 16, 3))
  mean, logvar = _encode(model, x)
  # Chunks [0], [1..8], [9..12]: the first frame alone, a full chunk and a shorter tail.
  m, lv = model.encode_chunked(x, chunk_frames=8)
  np.testing.assert_allclose(m, mean, atol=1e-4)
  np.testing.assert_allclose(lv, logvar, atol=1e-4)
  # Latent chunks [0], [1, 2], [3].
  video = _decode(model, mean)
  np.testing.assert_allclose(model.decode_chunked(mean, chunk_latent_frames=2), video, atol=1e-4)
  with pytest.raises(ValueError, match="chunk_frames=3"):
    model.encode_chunked(x, chunk_frames=3)


def test_tiled_decode_is_exact_in_one_tile_and_close_with_overlap(model):
  z = jax.random.normal(jax.random.key(3), (1, 1, 12, 12, CFG.latent_channels))
  video = _decode(model, z)
  one_tile = nnx.jit(lambda m, z: m.decode_tiled(z, tile_latent=12, overlap_latent=4))(model, z)
  np.testing.assert_array_equal(one_tile, video)  # The one-pass decode itself.
  err = lambda **kw: float(jnp.mean(jnp.abs(model.decode_tiled(z, **kw) - video)))
  hard, blended = err(tile_latent=8, overlap_latent=0), err(tile_latent=8, overlap_latent=4)
  wide = err(tile_latent=10, overlap_latent=6)
  # Tiles cannot see across their borders and each tile has its own group-norm
  # statistics, so the result is approximate. On this random-init model blending
  # beats abutting tiles, and the error shrinks as the overlap grows (below a
  # fifth of the mean |output| at 6 of 10 latent pixels).
  assert blended < hard
  assert wide < 0.7 * blended
  assert wide < 0.2 * float(jnp.mean(jnp.abs(video)))


def test_tiled_encode_is_exact_in_one_tile(model):
  x = _video((1, 5, 16, 24, 3))
  mean, _ = _encode(model, x)
  one_tile = nnx.jit(lambda m, x: m.encode_tiled(x, tile_latent=4))(model, x)
  np.testing.assert_array_equal(one_tile[0], mean)
  tiled, _ = model.encode_tiled(x, tile_latent=2, overlap_latent=1)
  assert tiled.shape == mean.shape and np.all(np.isfinite(tiled))


def _clips() -> jax.Array:
  """Two 5-frame 16x16 clips of a coloured square moving on a dark background."""
  clips = np.full((2, 5, 16, 16, 3), -0.8, np.float32)
  for i, color in enumerate([(1.0, -1.0, -1.0), (-1.0, 0.5, 1.0)]):
    for t in range(5):
      y, x = 2 + t, 3 + (2 * t if i == 0 else 8 - t)
      clips[i, t, y : y + 6, x : x + 6] = color
  return jnp.asarray(clips)


def test_short_training_run_lowers_reconstruction_loss():
  model, clips = _model(seed=1), _clips()
  graphdef, params = nnx.split(model, nnx.Param)
  opt = optax.adam(3e-3)
  opt_state = opt.init(params)

  def loss_fn(p, rng):
    recon, mean, logvar = nnx.merge(graphdef, p)(clips, rng)
    return jnp.mean(jnp.abs(recon - clips)) + 1e-4 * ae.kl_loss(mean, logvar)

  @jax.jit
  def step(p, s, rng):
    loss, grads = jax.value_and_grad(loss_fn)(p, rng)
    updates, s = opt.update(grads, s, p)
    return optax.apply_updates(p, updates), s, loss

  @jax.jit
  def recon_l1(p):
    m = nnx.merge(graphdef, p)
    return jnp.mean(jnp.abs(m.decode(m.encode(clips)[0]) - clips))

  before = float(recon_l1(params))
  for i in range(40):
    params, opt_state, loss = step(params, opt_state, jax.random.key(i))
    assert np.isfinite(float(loss)), i
  after = float(recon_l1(params))
  assert after < 0.5 * before, (before, after)


def test_bfloat16_compute_keeps_float32_params():
  cfg = ae.AutoencoderConfig(latent_channels=4, base_channels=8, dtype="bfloat16")
  model = ae.VideoAutoencoder(cfg, rngs=nnx.Rngs(params=jax.random.key(0, impl="rbg")))
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
  recon, mean, _ = nnx.jit(lambda m, x: m(x, jax.random.key(0)))(model, _video((1, 1, 8, 8, 3)))
  assert recon.dtype == jnp.float32 and mean.dtype == jnp.float32
  assert np.all(np.isfinite(recon))


def test_temporal_kernel_one_encodes_and_decodes_each_frame_alone():
  cfg = ae.AutoencoderConfig(
    latent_channels=4,
    base_channels=8,
    norm_groups=2,
    channel_mults=(1, 2, 2),
    temporal_down=(False, False),
    temporal_kernel=1,
  )
  model = ae.VideoAutoencoder(cfg, rngs=nnx.Rngs(params=jax.random.key(0, impl="rbg")))
  assert (cfg.temporal_factor, cfg.spatial_factor) == (1, 4)
  x = _video((1, 6, 16, 16, 3))
  mean, _ = _encode(model, x)
  assert mean.shape == (1, 6, 4, 4, 4)  # Any frame count: no 1 + 4k rule.
  for j in (0, 3, 5):  # Frame j's latent is the latent of frame j alone, before or after.
    alone, _ = _encode(model, x[:, j : j + 1])
    np.testing.assert_allclose(mean[:, j], alone[:, 0], atol=1e-5)
    np.testing.assert_allclose(_decode(model, mean)[:, j], _decode(model, alone)[:, 0], atol=1e-5)
  with pytest.raises(ValueError, match="temporal_kernel=0"):
    ae.AutoencoderConfig(temporal_kernel=0)


def test_every_parameter_has_logical_axis_names(model):
  for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    names = var.get_metadata().get("out_sharding")
    assert names is not None and len(names) == var.get_value().ndim, path


def test_config_validation():
  with pytest.raises(ValueError, match="temporal_down"):
    ae.AutoencoderConfig(channel_mults=(1, 2), temporal_down=(True, True))
  with pytest.raises(ValueError, match="norm_groups=3 must divide"):
    ae.AutoencoderConfig(base_channels=8, norm_groups=3)
  with pytest.raises(ValueError, match="conv_impl='cudnn'"):
    ae.AutoencoderConfig(conv_impl="cudnn")
  with pytest.raises(ValueError, match="latent_channels must divide 32"):
    ae.AutoencoderConfig(base_channels=8, latent_channels=5)
  ae.AutoencoderConfig(base_channels=8, latent_channels=5, shortcuts=False)
  assert (CFG.temporal_factor, CFG.spatial_factor) == (4, 8)


@pytest.mark.parametrize(
  "kernel,stride", [((3, 3, 3), (1, 1, 1)), ((3, 3, 3), (2, 2, 2)), ((1, 3, 3), (1, 2, 2))]
)
def test_frame_by_frame_convolution_equals_one_3d_convolution(kernel, stride):
  x = _video((2, 7, 10, 12, 5))
  k = jax.random.normal(jax.random.key(1), (*kernel, 5, 6)) * 0.2
  conv = jax.jit(ae.conv3d, static_argnums=(2, 3))
  frames, one = conv(x, k, stride, "frames"), conv(x, k, stride, "3d")
  assert (
    frames.shape
    == one.shape
    == (2, (7 - kernel[0]) // stride[0] + 1, 10 // stride[1], 12 // stride[2], 6)
  )
  np.testing.assert_allclose(frames, one, atol=1e-5)


def _zero_convs(module):
  for _, m in nnx.iter_modules(module):
    if isinstance(m, ae.CausalConv3d):
      m.kernel[...] = jnp.zeros_like(m.kernel[...])
      m.bias[...] = jnp.zeros_like(m.bias[...])


def test_shortcuts_are_average_pooling_and_nearest_upsampling():
  kw = dict(rngs=nnx.Rngs(0), dtype=jnp.float32, param_dtype=jnp.float32, impl="3d")
  x = _video((2, 5, 8, 12, 4))
  down, up = ae.Downsample(4, True, True, **kw), ae.Upsample(4, True, True, **kw)
  _zero_convs(down)
  _zero_convs(up)
  pooled = x.reshape(2, 5, 4, 2, 6, 2, 4).mean(axis=(3, 5))
  # Frame 0 alone, then the means of frame pairs (1, 2) and (3, 4).
  expect = jnp.concatenate([pooled[:, :1], pooled[:, 1:].reshape(2, 2, 2, 4, 6, 4).mean(2)], 1)
  y, _ = down(x)
  np.testing.assert_allclose(y, expect, atol=1e-6)
  # Chunked: the first chunk is frame 0 alone, later ones are whole pairs.
  y0, cache = down(x[:, :1])
  y1, _ = down(x[:, 1:], cache)
  np.testing.assert_allclose(jnp.concatenate([y0, y1], 1), expect, atol=1e-6)
  z, _ = up(expect)  # 1 + 2 frames -> 1 + 4, each pixel to a 2x2 block.
  nearest = jnp.repeat(jnp.repeat(expect, 2, axis=2), 2, axis=3)
  np.testing.assert_allclose(z, jnp.concatenate([nearest[:, :1], nearest[:, 1:].repeat(2, 1)], 1))
  # Without shortcuts the zeroed convs give zeros.
  plain = ae.Downsample(4, True, False, **kw)
  _zero_convs(plain)
  np.testing.assert_array_equal(plain(x)[0], 0.0)


def test_without_shortcuts_chunked_equals_one_shot(model):
  cfg = ae.AutoencoderConfig(**{**CFG.__dict__, "shortcuts": False})
  plain = ae.VideoAutoencoder(cfg, rngs=nnx.Rngs(params=jax.random.key(0, impl="rbg")))
  # The shortcuts have no parameters and leave the tree as it was, so checkpoints of
  # either kind restore into the other's structure.
  shapes = lambda m: {p: v.get_value().shape for p, v in nnx.to_flat_state(nnx.state(m))}
  assert shapes(plain) == shapes(model)
  model = plain
  x = _video((1, 9, 8, 8, 3))
  mean, _ = _encode(model, x)
  np.testing.assert_allclose(model.encode_chunked(x, chunk_frames=4)[0], mean, atol=1e-4)
  np.testing.assert_allclose(model.decode_chunked(mean), _decode(model, mean), atol=1e-4)
