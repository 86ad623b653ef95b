"""The diffusion transformer: packing isolation, text windows, scan/remat equivalence, axis names."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sora_jax.models import dit, layers, text_encoder


def _cfg(**kw):
  base = dict(
    patch_dim=12,
    depth=2,
    width=32,
    heads=2,
    text=text_encoder.TextConfig(vocab_size=20, width=16, depth=1, heads=1),
  )
  base.update(kw)
  return dit.DiTConfig(**base)


def _nonzero_model(cfg, seed=0):
  """A model whose zero-initialized gates and output layer are made non-zero."""
  model = dit.DiT(cfg, rngs=nnx.Rngs(seed))
  gd, params = nnx.split(model, nnx.Param)
  rng = np.random.default_rng(seed)
  params = jax.tree.map(
    lambda p: p + 0.05 * rng.standard_normal(p.shape).astype(np.float32), params
  )
  return nnx.merge(gd, params)


def _inputs(seed=0, b=2, length=20, lt=12):
  rng = np.random.default_rng(seed)
  seg = np.zeros((b, length), np.int32)
  seg[0, :8], seg[0, 8:17] = 1, 2
  seg[1, :12], seg[1, 12:20] = 1, 2
  tseg = np.zeros((b, lt), np.int32)
  tseg[0, :4], tseg[0, 4:9] = 1, 2
  tseg[1, :6], tseg[1, 6:12] = 1, 2
  return dict(
    tokens=jnp.asarray(rng.standard_normal((b, length, 12)), jnp.float32),
    coords=jnp.asarray(rng.integers(0, 4, (b, length, 3)), jnp.int32),
    segment_ids=jnp.asarray(seg),
    t=jnp.asarray(rng.uniform(size=(b, length)), jnp.float32),
    text_ids=jnp.asarray(rng.integers(4, 20, (b, lt)), jnp.int32),
    text_segment_ids=jnp.asarray(tseg),
  )


def _run(model, x):
  return np.asarray(
    model(x["tokens"], x["coords"], x["segment_ids"], x["t"], x["text_ids"], x["text_segment_ids"])
  )


@pytest.mark.parametrize("adaln", ["single", "block"])
def test_output_shape_and_zero_init(adaln):
  model = dit.DiT(_cfg(adaln=adaln), rngs=nnx.Rngs(0))
  out = _run(model, _inputs())
  assert out.shape == (2, 20, 12) and out.dtype == np.float32
  np.testing.assert_array_equal(out, 0.0)  # adaLN-Zero: the final layer starts at zero.


@pytest.mark.parametrize("mlp", ["gelu", "swiglu"])
def test_changing_one_packed_example_leaves_the_others_unchanged(mlp):
  model = _nonzero_model(_cfg(mlp=mlp))
  x = _inputs()
  base = _run(model, x)
  seg, tseg = np.asarray(x["segment_ids"]), np.asarray(x["text_segment_ids"])
  y = dict(x)
  y["tokens"] = jnp.where((seg == 2)[..., None], x["tokens"] * -2 + 1, x["tokens"])
  y["coords"] = jnp.where((seg == 2)[..., None], x["coords"] + 3, x["coords"])
  y["t"] = jnp.where(seg == 2, 1 - x["t"], x["t"])
  y["text_ids"] = jnp.where(tseg == 2, (x["text_ids"] + 5) % 20, x["text_ids"])
  changed = _run(model, y)
  np.testing.assert_allclose(changed[seg == 1], base[seg == 1], atol=1e-6)
  assert not np.allclose(changed[seg == 2], base[seg == 2], atol=1e-3)


def test_text_frame_windows_gate_captions():
  """Caption tokens reach only the frames inside their [start, end) window."""
  model = _nonzero_model(_cfg())
  x = _inputs()
  coords = np.asarray(x["coords"]).copy()
  coords[..., 0] += 1  # Every token is at frame >= 1.
  lt = x["text_ids"].shape[1]

  def run(text_ids, end):
    windows = np.zeros((2, lt, 2), np.int32)
    windows[..., 1] = end
    return np.asarray(
      model(
        x["tokens"],
        jnp.asarray(coords),
        x["segment_ids"],
        x["t"],
        text_ids,
        x["text_segment_ids"],
        text_frames=jnp.asarray(windows),
      )
    )

  other_text = (x["text_ids"] + 7) % 20
  real = np.asarray(x["segment_ids"]) > 0
  # Window [0, 1): no token is inside it, so the caption cannot matter.
  np.testing.assert_allclose(run(x["text_ids"], 1)[real], run(other_text, 1)[real], atol=1e-6)
  # Window [0, 10): every token sees its caption.
  assert not np.allclose(run(x["text_ids"], 10)[real], run(other_text, 10)[real], atol=1e-3)


def test_pooled_text_is_the_mean_of_the_visible_caption_tokens():
  text = jnp.arange(1, 6, dtype=jnp.float32)[None, :, None] * jnp.ones((1, 5, 2))
  tseg = jnp.asarray([[1, 1, 2, 2, 2]])
  seg = jnp.asarray([[1, 2, 2, 0]])
  pooled = np.asarray(dit.pool_text(text, seg, tseg))
  np.testing.assert_allclose(pooled[0, :, 0], [1.5, 4.0, 4.0, 0.0])  # Padding gets zeros.
  window = jnp.asarray([[[True] * 5, [True, True, False, True, True], [False] * 5, [True] * 5]])
  pooled = np.asarray(dit.pool_text(text, seg, tseg, window))
  np.testing.assert_allclose(pooled[0, :, 0], [1.5, 4.5, 0.0, 0.0])
  # Without a window the per-example means; with an all-true window the dense weights:
  # the same, on random rows (segment 3 has no caption tokens: zeros).
  rng = np.random.default_rng(0)
  seg = jnp.asarray(np.sort(rng.integers(0, 5, (2, 40)), axis=1)[:, ::-1].copy())
  tseg = jnp.asarray(np.where(np.arange(12) < 10, rng.choice([1, 2, 4], (2, 12)), 0))
  text = jnp.asarray(rng.standard_normal((2, 12, 3)), jnp.float32)
  np.testing.assert_allclose(
    np.asarray(dit.pool_text(text, seg, tseg)),
    np.asarray(dit.pool_text(text, seg, tseg, jnp.ones((2, 40, 12), bool))),
    atol=1e-6,
  )


def test_fractional_positions_are_relative_to_each_packed_example():
  def grid(t, h, w):
    return np.stack(
      np.meshgrid(np.arange(t), np.arange(h), np.arange(w), indexing="ij"), -1
    ).reshape(-1, 3)

  a, b = grid(3, 2, 4), grid(5, 4, 2)  # Two clips of other sizes, packed, then padding.
  coords = np.concatenate([a, b, np.zeros((3, 3), int)])[None]
  seg = np.concatenate([np.full(len(a), 1), np.full(len(b), 2), np.zeros(3, int)])[None]
  f = np.asarray(dit.fractional_features(jnp.asarray(coords), jnp.asarray(seg), 2))
  assert f.shape == (1, len(a) + len(b) + 3, 12)
  # First and last tokens of each example: the same corner features, whatever the size.
  first_a, last_a, first_b, last_b = 0, len(a) - 1, len(a), len(a) + len(b) - 1
  np.testing.assert_allclose(f[0, first_a], f[0, first_b], atol=1e-6)
  np.testing.assert_allclose(f[0, last_a], f[0, last_b], atol=1e-6)
  assert np.abs(f[0, first_a] - f[0, last_a]).max() > 1.0
  # A single frame sits at time fraction 0 (cos = 1).
  one = np.asarray(
    dit.fractional_features(jnp.asarray(grid(1, 2, 2))[None], jnp.ones((1, 4), jnp.int32), 1)
  )
  np.testing.assert_allclose(one[0, :, 1], 1.0)


def _stacked_to_list(pure):
  """Unstacks scanned `blocks` params into the unrolled layout."""
  out = dict(pure)
  for enc in ("blocks",):
    stacked = pure[enc]
    depth = jax.tree.leaves(stacked)[0].shape[0]
    out[enc] = {i: jax.tree.map(lambda a, i=i: a[i], stacked) for i in range(depth)}
  te = dict(pure["text_encoder"])
  depth = jax.tree.leaves(te["blocks"])[0].shape[0]
  te["blocks"] = {i: jax.tree.map(lambda a, i=i: a[i], te["blocks"]) for i in range(depth)}
  out["text_encoder"] = te
  return out


def test_scan_and_unrolled_layers_agree():
  scanned = _nonzero_model(_cfg(scan_layers=True))
  unrolled = dit.DiT(_cfg(scan_layers=False), rngs=nnx.Rngs(1))
  pure = nnx.to_pure_dict(nnx.state(scanned, nnx.Param))
  gd, params = nnx.split(unrolled, nnx.Param)
  nnx.replace_by_pure_dict(params, _stacked_to_list(pure))
  unrolled = nnx.merge(gd, params)
  x = _inputs()
  np.testing.assert_allclose(_run(unrolled, x), _run(scanned, x), atol=1e-5)


@pytest.mark.parametrize("remat", ["full", "dots"])
def test_remat_keeps_values_and_gradients(remat):
  x = _inputs()
  outs = []
  for policy in ("none", remat):
    model = _nonzero_model(_cfg(remat=policy))
    gd, params = nnx.split(model, nnx.Param)

    def loss(p, gd=gd):
      return jnp.mean(jnp.square(nnx.merge(gd, p)(*[x[k] for k in x])))

    outs.append(jax.value_and_grad(loss)(params))
  np.testing.assert_allclose(outs[0][0], outs[1][0], rtol=1e-6)
  for a, b in zip(jax.tree.leaves(outs[0][1]), jax.tree.leaves(outs[1][1]), strict=True):
    np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("mlp", ["gelu", "swiglu"])
def test_every_parameter_has_logical_axis_names(mlp):
  model = dit.DiT(_cfg(mlp=mlp), rngs=nnx.Rngs(0))
  for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    names = var.get_metadata().get("out_sharding")
    assert names is not None and len(names) == var.get_value().ndim, path


def test_swiglu_multiplies_a_gate_into_the_hidden_units():
  mlp = layers.MLP(
    8, 12, kind="swiglu", rngs=nnx.Rngs(0), dtype=jnp.float32, param_dtype=jnp.float32
  )
  x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 5, 8)), jnp.float32)
  w = {k: getattr(mlp, k).kernel[...] for k in ("gate", "up", "down")}
  b = {k: getattr(mlp, k).bias[...] for k in ("gate", "up", "down")}
  hidden = jax.nn.silu(x @ w["gate"] + b["gate"]) * (x @ w["up"] + b["up"])
  np.testing.assert_allclose(mlp(x), hidden @ w["down"] + b["down"], rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="allowed: gelu, swiglu"):
    layers.MLP(8, 12, kind="geglu", rngs=nnx.Rngs(0), dtype=jnp.float32, param_dtype=jnp.float32)


def test_bfloat16_compute_keeps_float32_params():
  model = dit.DiT(_cfg(dtype="bfloat16"), rngs=nnx.Rngs(0))
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
  out = _run(model, _inputs())
  assert out.dtype == np.float32 and np.all(np.isfinite(out))


@pytest.mark.parametrize("scan", [True, False])
def test_a_text_encoder_of_depth_zero_keeps_each_caption_token_its_own(scan):
  """text.depth=0: a token's encoding is its embedding, normed; it ignores its neighbours."""
  text = text_encoder.TextConfig(vocab_size=20, width=16, depth=0, heads=1)
  enc = text_encoder.SmallTextEncoder(text, rngs=nnx.Rngs(0), scan=scan)
  x = _inputs()
  other = x["text_ids"].at[:, 0].set((x["text_ids"][:, 0] + 1) % 20)
  a = np.asarray(enc(x["text_ids"], x["text_segment_ids"]))
  b = np.asarray(enc(other, x["text_segment_ids"]))
  np.testing.assert_array_equal(a[:, 1:], b[:, 1:])
  assert not np.allclose(a[:, 0], b[:, 0])
  model = dit.DiT(_cfg(text=text, scan_layers=scan), rngs=nnx.Rngs(0))
  assert np.isfinite(_run(model, x)).all()
