"""The attention call: segment masking, padding, grouped heads, extra masks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sora_jax.models import attention


def _packed(rng, b=2, lq=24, h=4, d=8, hkv=None):
  hkv = hkv or h
  q = jnp.asarray(rng.standard_normal((b, lq, h, d)), jnp.float32)
  k = jnp.asarray(rng.standard_normal((b, lq, hkv, d)), jnp.float32)
  v = jnp.asarray(rng.standard_normal((b, lq, hkv, d)), jnp.float32)
  seg = np.zeros((b, lq), np.int32)
  seg[0, :7], seg[0, 7:19] = 1, 2  # Two examples and padding.
  seg[1, :5], seg[1, 5:10], seg[1, 10:24] = 1, 2, 3
  return q, k, v, jnp.asarray(seg)


def _per_segment_reference(q, k, v, seg):
  """Attention computed example by example, with no packing at all."""
  out = np.zeros(q.shape, np.float32)
  rep = q.shape[2] // k.shape[2]
  for b in range(q.shape[0]):
    for s in set(np.asarray(seg[b]).tolist()) - {0}:
      idx = np.flatnonzero(np.asarray(seg[b]) == s)
      qs = np.asarray(q[b, idx])
      ks = np.repeat(np.asarray(k[b, idx]), rep, axis=1)
      vs = np.repeat(np.asarray(v[b, idx]), rep, axis=1)
      logits = np.einsum("qhd,khd->hqk", qs, ks) / np.sqrt(q.shape[-1])
      p = np.exp(logits - logits.max(-1, keepdims=True))
      p /= p.sum(-1, keepdims=True)
      out[b, idx] = np.einsum("hqk,khd->qhd", p, vs)
  return out


@pytest.mark.parametrize("hkv", [4, 2, 1])
def test_matches_unpacked_attention(hkv):
  q, k, v, seg = _packed(np.random.default_rng(0), hkv=hkv)
  got = attention.attention(q, k, v, seg, seg, backend="xla")
  np.testing.assert_allclose(np.asarray(got), _per_segment_reference(q, k, v, seg), atol=1e-5)


def test_padding_queries_return_zeros():
  q, k, v, seg = _packed(np.random.default_rng(1))
  out = attention.attention(q, k, v, seg, seg)
  np.testing.assert_array_equal(np.asarray(out)[np.asarray(seg) == 0], 0.0)
  assert np.all(np.isfinite(np.asarray(out)))


def test_changing_one_example_leaves_the_others_unchanged():
  rng = np.random.default_rng(2)
  q, k, v, seg = _packed(rng)
  out = attention.attention(q, k, v, seg, seg)
  other = np.asarray(seg) == 2
  k2 = jnp.where(other[..., None, None], k + 5.0, k)
  v2 = jnp.where(other[..., None, None], v * -3.0, v)
  out2 = attention.attention(q, k2, v2, seg, seg)
  keep = (np.asarray(seg) != 2) & (np.asarray(seg) != 0)
  np.testing.assert_array_equal(np.asarray(out)[keep], np.asarray(out2)[keep])
  assert not np.allclose(np.asarray(out)[other], np.asarray(out2)[other])


def test_cross_attention_with_different_lengths_and_extra_mask():
  rng = np.random.default_rng(3)
  q = jnp.asarray(rng.standard_normal((1, 6, 2, 8)), jnp.float32)
  kv = jnp.asarray(rng.standard_normal((1, 4, 2, 8)), jnp.float32)
  qseg = jnp.asarray([[1, 1, 1, 2, 2, 0]])
  kseg = jnp.asarray([[1, 1, 2, 0]])
  full = attention.attention(q, kv, kv, qseg, kseg)
  # Query 0 may only see key 0: its output is exactly v[0].
  mask = np.ones((1, 6, 4), bool)
  mask[0, 0, 1] = False
  masked = attention.attention(q, kv, kv, qseg, kseg, mask=jnp.asarray(mask))
  np.testing.assert_allclose(np.asarray(masked)[0, 0], np.asarray(kv)[0, 0], atol=1e-6)
  np.testing.assert_array_equal(np.asarray(masked)[0, 1:], np.asarray(full)[0, 1:])


def test_gradients_do_not_cross_segments():
  q, k, v, seg = _packed(np.random.default_rng(4))
  sel = jnp.asarray(np.asarray(seg) == 1)[..., None, None]

  def loss(k):
    return jnp.sum(jnp.where(sel, attention.attention(q, k, v, seg, seg), 0.0))

  g = np.asarray(jax.grad(loss)(k))
  assert np.all(g[np.asarray(seg) != 1] == 0)
  assert np.any(g[np.asarray(seg) == 1] != 0)


def test_unknown_backend_and_bad_shapes_are_refused():
  q, k, v, seg = _packed(np.random.default_rng(5))
  with pytest.raises(ValueError, match="model.attention"):
    attention.attention(q, k, v, seg, seg, backend="nope")
  with pytest.raises(ValueError, match="segment ids"):
    attention.attention(q, k, v, seg[:, :5], seg)
