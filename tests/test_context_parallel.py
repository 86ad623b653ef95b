"""Context parallelism: attention over a sequence sharded along the `context` mesh axis."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sora_jax.core import sharding
from sora_jax.models import attention, context_parallel

RULES = (
  ("batch", ("data", "fsdp")),
  ("length", "context"),
  ("text_length", None),
  ("act_heads", "tensor"),
)


def _packed(seed=0, b=2, length=64, heads=8, dim=8):
  rng = np.random.default_rng(seed)
  q, k, v = (
    jnp.asarray(rng.standard_normal((b, length, heads, dim)), jnp.float32) for _ in range(3)
  )
  seg = np.zeros((b, length), np.int32)
  seg[0, :11], seg[0, 11:40], seg[0, 40:61] = 1, 2, 3  # Segments cross shard boundaries.
  seg[1, :64] = 1
  return q, k, v, jnp.asarray(seg)


def _run(mesh_shape, scheme, q, k, v, seg, grads=False):
  mesh = sharding.make_mesh(mesh_shape)

  def f(q, k, v):
    return context_parallel.sharded_attention(q, k, v, seg, seg, scheme=scheme, backend="xla")

  with jax.set_mesh(mesh), sharding.axis_rules(RULES):
    if grads:
      g = jax.jit(jax.grad(lambda q, k, v: jnp.sum(jnp.sin(f(q, k, v))), argnums=(0, 1, 2)))
      return g(q, k, v)
    return jax.jit(f)(q, k, v)


@pytest.mark.parametrize("scheme", context_parallel.SCHEMES)
@pytest.mark.parametrize(
  "mesh_shape", [{"context": 8}, {"data": 2, "context": 4}, {"context": 2, "tensor": 4}]
)
def test_sharded_attention_matches_one_device(scheme, mesh_shape):
  q, k, v, seg = _packed()
  want = attention.attention(q, k, v, seg, seg, backend="xla")
  got = _run(mesh_shape, scheme, q, k, v, seg)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)


@pytest.mark.parametrize("scheme", context_parallel.SCHEMES)
def test_sharded_attention_gradients_match(scheme):
  q, k, v, seg = _packed(seed=1)

  def ref(q, k, v):
    return jnp.sum(jnp.sin(attention.attention(q, k, v, seg, seg, backend="xla")))

  want = jax.grad(ref, argnums=(0, 1, 2))(q, k, v)
  got = _run({"data": 2, "context": 4}, scheme, q, k, v, seg, grads=True)
  for a, b in zip(got, want, strict=True):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


def test_ulysses_needs_heads_divisible_by_context():
  q, k, v, seg = _packed(heads=2)
  with pytest.raises(ValueError, match="ulysses"):
    _run({"context": 8}, "ulysses", q, k, v, seg)


def test_long_rows_use_bounded_memory_chunks(monkeypatch):
  """The reference processes long rows in query chunks with the same result."""
  q, k, v, seg = _packed(seed=2)
  want = attention.attention(q, k, v, seg, seg, backend="xla")
  monkeypatch.setattr(attention, "CHUNK_ELEMENTS", 2 * 8 * 64 * 16)  # 16 queries per chunk.
  got = jax.jit(lambda q: attention.attention(q, k, v, seg, seg, backend="xla"))(q)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-6)
  g1 = jax.grad(lambda q: jnp.sum(attention.attention(q, k, v, seg, seg) ** 2))(q)
  monkeypatch.setattr(attention, "CHUNK_ELEMENTS", 1 << 26)
  g0 = jax.grad(lambda q: jnp.sum(attention.attention(q, k, v, seg, seg) ** 2))(q)
  np.testing.assert_allclose(np.asarray(g1), np.asarray(g0), atol=1e-5)
