"""Fused attention backends against the XLA reference on packed rows.

The Pallas kernels run through interpret mode on CPU ("*_interpret" backends);
cuDNN cannot run here, so its mask construction is checked with jax's "xla"
implementation standing in, and the backend itself only for its refusals.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sora_jax.models import attention

TOL = dict(atol=1e-4, rtol=1e-4)


def _qkv(rng, b, lq, lk, h, hkv, d, dtype=jnp.float32):
  def draw(*shape):
    return jnp.asarray(rng.standard_normal(shape), dtype)

  return draw(b, lq, h, d), draw(b, lk, hkv, d), draw(b, lk, hkv, d)


def _packed(rng, length=160, h=2, hkv=2, d=16, dtype=jnp.float32):
  """Self-attention rows: segments of different lengths across the 128-token
  block boundary, trailing padding, a length that is no multiple of a block."""
  q, k, v = _qkv(rng, 2, length, length, h, hkv, d, dtype)
  seg = np.zeros((2, length), np.int32)
  seg[0, :37], seg[0, 37:100], seg[0, 100:150] = 1, 2, 3
  seg[1, :90], seg[1, 90:131] = 1, 2
  return q, k, v, jnp.asarray(seg)


def _cross(rng, lq=160, lk=39, h=2, hkv=2, d=16):
  """Video queries to caption keys: example 2 of row 0 has no caption."""
  q, k, v = _qkv(rng, 2, lq, lk, h, hkv, d)
  q_seg = np.zeros((2, lq), np.int32)
  q_seg[0, :60], q_seg[0, 60:100], q_seg[0, 100:150] = 1, 2, 3
  q_seg[1, :130], q_seg[1, 130:] = 1, 2
  kv_seg = np.zeros((2, lk), np.int32)
  kv_seg[0, :10], kv_seg[0, 10:25] = 1, 3
  kv_seg[1, :12], kv_seg[1, 12:] = 1, 2
  return q, k, v, jnp.asarray(q_seg), jnp.asarray(kv_seg)


def _grads(backend, q, k, v, q_seg, kv_seg, **kw):
  def loss(q, k, v):
    out = attention.attention(q, k, v, q_seg, kv_seg, backend=backend, **kw)
    return jnp.sum(jnp.sin(out.astype(jnp.float32)))

  return jax.grad(loss, argnums=(0, 1, 2))(q, k, v)


def _assert_parity(backend, q, k, v, q_seg, kv_seg, grads=False):
  got = attention.attention(q, k, v, q_seg, kv_seg, backend=backend)
  want = attention.attention(q, k, v, q_seg, kv_seg, backend="xla")
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), **TOL)
  np.testing.assert_array_equal(np.asarray(got)[np.asarray(q_seg) == 0], 0.0)
  if grads:
    for g, r in zip(_grads(backend, q, k, v, q_seg, kv_seg), _grads("xla", q, k, v, q_seg, kv_seg)):
      np.testing.assert_allclose(np.asarray(g), np.asarray(r), **TOL)


def _assert_matches_reference_with_grads(fn, q, k, v, seg):
  """fn(q, k, v) against the reference on self-attention rows `seg`: values and gradients."""
  want = attention.attention(q, k, v, seg, seg, backend="xla")
  np.testing.assert_allclose(np.asarray(fn(q, k, v)), np.asarray(want), **TOL)
  got = jax.grad(lambda *a: jnp.sum(jnp.sin(fn(*a))), (0, 1, 2))(q, k, v)
  for g, r in zip(got, _grads("xla", q, k, v, seg, seg)):
    np.testing.assert_allclose(np.asarray(g), np.asarray(r), **TOL)


# block_sparse ----------------------------------------------------------------

PACKED = attention.Packing(max_len=90, max_segments=3)  # What _packed's rows hold.


def _bs(q, k, v, q_seg, kv_seg, packing=PACKED, **kw):
  return attention.attention(q, k, v, q_seg, kv_seg, backend="block_sparse", packing=packing, **kw)


@pytest.mark.parametrize("h,hkv,length", [(2, 2, 160), (4, 1, 160), (2, 2, 37)])
def test_block_sparse_matches_reference(h, hkv, length):
  # Segments straddle the 16-token blocks; 37 is no multiple of a block.
  q, k, v, seg = _packed(np.random.default_rng(20), h=h, hkv=hkv, length=length)
  _assert_matches_reference_with_grads(lambda *a: _bs(*a, seg, seg), q, k, v, seg)


def test_block_sparse_many_short_examples_and_extra_mask_under_jit():
  rng = np.random.default_rng(21)
  q, k, v = _qkv(rng, 2, 96, 96, 2, 2, 8)
  lengths = rng.integers(1, 9, size=40)
  seg = np.zeros((2, 96), np.int32)
  for r in range(2):
    starts = np.cumsum(np.concatenate([[0], lengths]))
    for i in range(len(lengths)):
      if starts[i + 1] <= 90:
        seg[r, starts[i] : starts[i + 1]] = i + 1
  seg = jnp.asarray(seg)
  mask = jnp.asarray(rng.random((2, 96, 96)) < 0.7)
  packing = attention.Packing(max_len=8, max_segments=40)
  fn = jax.jit(lambda q, k, v, s, m: _bs(q, k, v, s, s, packing=packing, mask=m))
  want = attention.attention(q, k, v, seg, seg, mask=mask, backend="xla")
  np.testing.assert_allclose(np.asarray(fn(q, k, v, seg, mask)), np.asarray(want), **TOL)


def test_block_sparse_cross_attention_and_unsorted_ids_stay_exact():
  q, k, v, q_seg, kv_seg = _cross(np.random.default_rng(22), h=2, hkv=1)
  want = attention.attention(q, k, v, q_seg, kv_seg, backend="xla")
  np.testing.assert_allclose(np.asarray(_bs(q, k, v, q_seg, kv_seg, None)), np.asarray(want), **TOL)
  # Ids that do not increase along the row: the block summaries over-approximate, exactly.
  q, k, v, seg = _packed(np.random.default_rng(23))
  shuffled = jnp.asarray(np.random.default_rng(0).permutation(np.asarray(seg).T).T)
  want = attention.attention(q, k, v, shuffled, shuffled, backend="xla")
  got = _bs(q, k, v, shuffled, shuffled)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), **TOL)


def test_block_sparse_broken_packing_promise_falls_back_to_exact():
  q, k, v, seg = _packed(np.random.default_rng(24))
  want = attention.attention(q, k, v, seg, seg, backend="xla")
  got = _bs(q, k, v, seg, seg, packing=attention.Packing(max_len=2, max_segments=1))
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), **TOL)


def test_block_sparse_pair_bound_covers_every_packing():
  from sora_jax.models import attention_block_sparse as bs

  rng = np.random.default_rng(25)
  for _ in range(300):
    length, block = int(rng.integers(8, 200)), int(rng.choice([4, 8, 16]))
    cap, count = int(rng.integers(1, length + 1)), int(rng.integers(1, 30))
    seg, pos = np.zeros((1, length), np.int32), 0
    for s in range(1, count + 1):
      n = int(rng.integers(1, cap + 1))
      if pos + n > length:
        break
      seg[0, pos : pos + n], pos = s, pos + n + int(rng.integers(0, 2))
    padded = -(-length // block) * block
    seg = np.pad(seg, [(0, 0), (0, padded - length)])
    pairs = int(bs.meeting_blocks(seg, seg, block).sum())
    assert pairs <= bs.max_pairs(padded, block, attention.Packing(cap, count)), (cap, count)


def test_block_sparse_waste_is_measured_against_useful_pairs():
  from sora_jax.models import attention_block_sparse as bs

  seg = np.zeros((1, 64), np.int32)
  seg[0, :32], seg[0, 32:48] = 1, 2  # Block-aligned examples: nothing wasted at block 16.
  w = bs.waste(seg, 16, attention.Packing(32, 2))
  assert w["waste"] == 0.0 and w["useful_fraction_of_dense"] == (32**2 + 16**2) / 64**2
  seg[0, 30:34] = 3  # Straddling examples waste part of their blocks.
  assert bs.waste(seg, 16)["waste"] > 0.0


# segments --------------------------------------------------------------------


def _seg(q, k, v, q_seg, kv_seg, packing=PACKED, **kw):
  return attention.attention(q, k, v, q_seg, kv_seg, backend="segments", packing=packing, **kw)


@pytest.mark.parametrize("h,hkv,length", [(2, 2, 160), (4, 1, 160), (2, 2, 37)])
def test_segments_match_reference_values_and_gradients(h, hkv, length):
  q, k, v, seg = _packed(np.random.default_rng(40), h=h, hkv=hkv, length=length)
  _assert_matches_reference_with_grads(lambda *a: _seg(*a, seg, seg), q, k, v, seg)
  np.testing.assert_array_equal(np.asarray(_seg(q, k, v, seg, seg))[np.asarray(seg) == 0], 0.0)
  # Two arrays with the same ids (not one object) get their own slot maps: the same result.
  want = attention.attention(q, k, v, seg, seg, backend="xla")
  np.testing.assert_allclose(np.asarray(_seg(q, k, v, seg, seg + 0)), np.asarray(want), **TOL)


def test_segments_many_short_examples_with_an_extra_mask_under_jit():
  rng = np.random.default_rng(41)
  q, k, v = _qkv(rng, 2, 96, 96, 2, 2, 8)
  seg = np.zeros((2, 96), np.int32)
  for r in range(2):
    pos, sid = int(r), 1  # Row 1 starts with a padding token.
    while pos < 90:
      n = int(rng.integers(1, 9))
      seg[r, pos : min(pos + n, 90)], pos, sid = sid, pos + n, sid + 1
  seg = jnp.asarray(seg)
  mask = jnp.asarray(rng.random((2, 96, 96)) < 0.7)
  packing = attention.Packing(max_len=8, max_segments=int(seg.max()))
  fn = jax.jit(lambda q, k, v, s, m: _seg(q, k, v, s, s, packing=packing, mask=m))
  want = attention.attention(q, k, v, seg, seg, mask=mask, backend="xla")
  np.testing.assert_allclose(np.asarray(fn(q, k, v, seg, mask)), np.asarray(want), **TOL)
  # Gradients too; some queries see no key at all (every one of theirs masked).
  assert not np.all(np.any(np.asarray(mask) & (np.asarray(seg)[:, :, None] == seg[:, None]), -1))
  got = jax.grad(lambda *a: jnp.sum(jnp.sin(fn(*a, seg, mask))), (0, 1, 2))(q, k, v)
  for g, r in zip(got, _grads("xla", q, k, v, seg, seg, mask=mask)):
    np.testing.assert_allclose(np.asarray(g), np.asarray(r), **TOL)


@pytest.mark.parametrize(
  "breaks", ["too many examples", "an example too long", "an example split in two"]
)
def test_segments_rows_that_break_the_packing_run_the_reference(breaks):
  q, k, v, seg = _packed(np.random.default_rng(42))
  seg = np.asarray(seg).copy()
  packing = PACKED
  if breaks == "too many examples":
    packing = attention.Packing(max_len=90, max_segments=2)
  elif breaks == "an example too long":
    packing = attention.Packing(max_len=60, max_segments=3)
  else:
    seg[0, 120:130] = 1
  seg = jnp.asarray(seg)
  want = attention.attention(q, k, v, seg, seg, backend="xla")
  np.testing.assert_allclose(np.asarray(_seg(q, k, v, seg, seg, packing)), np.asarray(want), **TOL)


CROSS = attention.Packing(max_len=130, max_segments=3, kv_max_len=27)  # _cross's rows.


def test_segments_cross_attention_to_packed_captions_matches_reference():
  q, k, v, q_seg, kv_seg = _cross(np.random.default_rng(45))
  # Values and gradients; example 2 of row 0 has no caption, so its queries return zeros.

  def cross(q, k, v):
    return _seg(q, k, v, q_seg, kv_seg, packing=CROSS)

  want = attention.attention(q, k, v, q_seg, kv_seg, backend="xla")
  np.testing.assert_allclose(np.asarray(cross(q, k, v)), np.asarray(want), **TOL)
  got = jax.grad(lambda *a: jnp.sum(jnp.sin(cross(*a))), (0, 1, 2))(q, k, v)
  for g, r in zip(got, _grads("xla", q, k, v, q_seg, kv_seg)):
    np.testing.assert_allclose(np.asarray(g), np.asarray(r), **TOL)
  np.testing.assert_array_equal(np.asarray(want)[0, 60:100], 0.0)
  # A storyboard's window mask under jit, and a caption longer than the cap (reference).
  mask = jnp.asarray(np.random.default_rng(46).random((2, 160, 39)) < 0.6)
  fn = jax.jit(lambda q, k, v, m: _seg(q, k, v, q_seg, kv_seg, packing=CROSS, mask=m))
  want = attention.attention(q, k, v, q_seg, kv_seg, mask=mask, backend="xla")
  np.testing.assert_allclose(np.asarray(fn(q, k, v, mask)), np.asarray(want), **TOL)
  short = attention.Packing(max_len=130, max_segments=3, kv_max_len=20)
  want = attention.attention(q, k, v, q_seg, kv_seg, backend="xla")
  np.testing.assert_allclose(
    np.asarray(_seg(q, k, v, q_seg, kv_seg, packing=short)), np.asarray(want), **TOL
  )


def test_segments_refuse_what_they_cannot_do_and_auto_falls_back():
  q, k, v, q_seg, kv_seg = _cross(np.random.default_rng(43))
  with pytest.raises(attention.AttentionUnsupported, match="kv_max_len"):
    _seg(q, k, v, q_seg, kv_seg)
  q, k, v, seg = _packed(np.random.default_rng(44))
  with pytest.raises(attention.AttentionUnsupported, match="packing"):
    _seg(q, k, v, seg, seg, packing=None)


def test_segments_waste_counts_slot_padding():
  from sora_jax.models import attention_segments as sg

  seg = np.zeros((1, 64), np.int32)
  seg[0, :32], seg[0, 32:64] = 1, 2  # Two full slots: nothing wasted.
  w = sg.waste(seg, attention.Packing(32, 2))
  assert w["waste"] == 0.0 and w["computed_fraction_of_dense"] == 0.5 and w["broken_rows"] == 0
  seg[0, 48:] = 0  # Half a slot of padding: 1 - (32^2 + 16^2) / (2 * 32^2).
  assert sg.waste(seg, attention.Packing(32, 2))["waste"] == pytest.approx(0.375)
  seg[0, 40:44] = 1  # Example 1 split in two: the row breaks the contract.
  assert sg.waste(seg, attention.Packing(32, 2))["broken_rows"] == 1
  # Cross-attention: 32 + 16 queries to captions of 4 and 8 tokens in slots of 32 x 8.
  seg[0, 40:44], text = 2, np.zeros((1, 16), np.int32)
  text[0, :4], text[0, 4:12] = 1, 2
  w = sg.waste(seg, attention.Packing(32, 2, kv_max_len=8), text)
  assert w["waste"] == pytest.approx(1 - (32 * 4 + 16 * 8) / (2 * 32 * 8))
  assert w["useful_fraction_of_dense"] == pytest.approx((32 * 4 + 16 * 8) / (64 * 16))
  assert w["broken_rows"] == 0


# On the device this suite runs on (launch/gpu_check.sh runs it on a GPU) -------

DEVICE_KERNELS = {"gpu": ["pallas_gpu", "cudnn"], "tpu": ["splash_tpu"]}


@pytest.mark.parametrize(
  "backend", ["block_sparse", "segments", *DEVICE_KERNELS.get(jax.default_backend(), [])]
)
def test_this_devices_kernels_match_reference_values_and_gradients(backend):
  dtype = jnp.bfloat16 if backend == "cudnn" else jnp.float32
  q, k, v, seg = _packed(np.random.default_rng(30), h=4, hkv=2, d=64, dtype=dtype)
  kw = {"packing": PACKED}
  f = lambda name: lambda q, k, v: attention.attention(q, k, v, seg, seg, backend=name, **kw)
  tol = dict(atol=3e-2, rtol=3e-2)  # bf16 and TF32 matrix units on accelerators.
  up = lambda x: np.asarray(x, np.float32)
  np.testing.assert_allclose(up(f(backend)(q, k, v)), up(f("xla")(q, k, v)), **tol)
  loss = lambda name: lambda *a: jnp.sum(jnp.sin(f(name)(*a).astype(jnp.float32)))
  for g, r in zip(
    jax.grad(loss(backend), (0, 1, 2))(q, k, v), jax.grad(loss("xla"), (0, 1, 2))(q, k, v)
  ):
    np.testing.assert_allclose(up(g), up(r), **tol)


# pallas_gpu ------------------------------------------------------------------


@pytest.mark.parametrize("hkv,d", [(2, 16), (1, 24)])
def test_pallas_gpu_matches_reference(hkv, d):
  q, k, v, seg = _packed(np.random.default_rng(0), hkv=hkv, d=d)
  _assert_parity("pallas_gpu_interpret", q, k, v, seg, seg)


def test_pallas_gpu_gradients_match_reference():
  q, k, v, seg = _packed(np.random.default_rng(1), h=2, hkv=1)
  _assert_parity("pallas_gpu_interpret", q, k, v, seg, seg, grads=True)


def test_pallas_gpu_under_jit_with_one_segment_array():
  q, k, v, seg = _packed(np.random.default_rng(2), length=50)
  fn = jax.jit(
    lambda q, k, v, s: attention.attention(q, k, v, s, s, backend="pallas_gpu_interpret")
  )
  want = attention.attention(q, k, v, seg, seg, backend="xla")
  np.testing.assert_allclose(np.asarray(fn(q, k, v, seg)), np.asarray(want), **TOL)


def test_pallas_gpu_refuses_extra_mask():
  q, k, v, seg = _packed(np.random.default_rng(3), length=32)
  with pytest.raises(attention.AttentionUnsupported, match="extra attention mask"):
    attention.attention(
      q, k, v, seg, seg, mask=jnp.ones((2, 32, 32), bool), backend="pallas_gpu_interpret"
    )


def test_pallas_gpu_refuses_cross_attention_lengths():
  q, k, v, q_seg, kv_seg = _cross(np.random.default_rng(4), lq=32, lk=16)
  with pytest.raises(attention.AttentionUnsupported, match="self-attention only"):
    attention.attention(q, k, v, q_seg, kv_seg, backend="pallas_gpu_interpret")


def test_pallas_gpu_refuses_different_segment_ids():
  q, k, v, seg = _packed(np.random.default_rng(5), length=32)
  other = seg.at[:, :5].set(0)
  with pytest.raises(attention.AttentionUnsupported, match="one segment-id array"):
    attention.attention(q, k, v, seg, other, backend="pallas_gpu_interpret")
  # Inside jit only identity is known: equal but distinct tracers are refused too.
  fn = lambda a, b: attention.attention(q, k, v, a, b, backend="pallas_gpu_interpret")
  with pytest.raises(attention.AttentionUnsupported, match="one segment-id array"):
    jax.jit(fn)(seg, seg)


def test_pallas_gpu_refuses_small_head_dim():
  q, k, v, seg = _packed(np.random.default_rng(6), length=32, d=8)
  with pytest.raises(attention.AttentionUnsupported, match="head dims 16..256"):
    attention.attention(q, k, v, seg, seg, backend="pallas_gpu_interpret")


# splash_tpu ------------------------------------------------------------------


@pytest.mark.parametrize("h,hkv", [(2, 2), (4, 2), (2, 1)])
def test_splash_matches_reference(h, hkv):
  q, k, v, seg = _packed(np.random.default_rng(7), h=h, hkv=hkv)
  _assert_parity("splash_tpu_interpret", q, k, v, seg, seg)


def test_splash_gradients_match_reference():
  q, k, v, seg = _packed(np.random.default_rng(8), h=4, hkv=2)
  _assert_parity("splash_tpu_interpret", q, k, v, seg, seg, grads=True)


def test_splash_cross_attention_matches_reference():
  q, k, v, q_seg, kv_seg = _cross(np.random.default_rng(9), h=2, hkv=1)
  _assert_parity("splash_tpu_interpret", q, k, v, q_seg, kv_seg, grads=True)
  # Example 2 of row 0 has no caption: zeros, as in the reference.
  out = attention.attention(q, k, v, q_seg, kv_seg, backend="splash_tpu_interpret")
  np.testing.assert_array_equal(np.asarray(out)[0, 60:100], 0.0)


def test_splash_kernel_cache_is_safe_across_jit_and_eager():
  from sora_jax.models import attention_splash

  attention_splash._kernel.cache_clear()
  q, k, v, seg = _packed(np.random.default_rng(16), length=40)
  fn = lambda q, s: attention.attention(q, k, v, s, s, backend="splash_tpu_interpret")
  traced = jax.jit(fn)(q, seg)  # Builds and caches the kernel inside a trace.
  np.testing.assert_allclose(np.asarray(fn(q, seg)), np.asarray(traced), **TOL)


def test_splash_refuses_extra_mask():
  q, k, v, q_seg, kv_seg = _cross(np.random.default_rng(10), lq=32, lk=16)
  with pytest.raises(attention.AttentionUnsupported, match="extra attention mask"):
    attention.attention(
      q, k, v, q_seg, kv_seg, mask=jnp.ones((2, 32, 16), bool), backend="splash_tpu_interpret"
    )


# cudnn -----------------------------------------------------------------------


def test_cudnn_dense_mask_matches_reference_with_xla_standing_in():
  from sora_jax.models.attention_cudnn import dense_mask_attention

  rng = np.random.default_rng(11)
  q, k, v, q_seg, kv_seg = _cross(rng, lq=41, lk=39, h=4, hkv=2)  # Odd lengths: padded.
  mask = jnp.asarray(rng.random((2, 41, 39)) < 0.8)
  qs, ks, vs, seg = _packed(rng, h=4, hkv=1)
  for args, extra in [
    ((q, k, v, q_seg, kv_seg), None),
    ((q, k, v, q_seg, kv_seg), mask),
    ((qs, ks, vs, seg, seg), None),
  ]:
    want = attention.attention(*args, mask=extra, backend="xla")
    got = dense_mask_attention(
      *args, mask=extra, scale=args[0].shape[-1] ** -0.5, implementation="xla"
    )
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), **TOL)
    allowed = attention.segment_mask(args[3], args[4])
    allowed = allowed if extra is None else allowed & extra
    np.testing.assert_array_equal(np.asarray(got)[~np.asarray(jnp.any(allowed, -1))], 0.0)


def test_cudnn_refuses_float32():
  q, k, v, seg = _packed(np.random.default_rng(12), length=32)
  with pytest.raises(attention.AttentionUnsupported, match="bfloat16 or float16"):
    attention.attention(q, k, v, seg, seg, backend="cudnn")


def test_cudnn_refuses_head_dim():
  q, k, v, seg = _packed(np.random.default_rng(13), length=32, d=12, dtype=jnp.bfloat16)
  with pytest.raises(attention.AttentionUnsupported, match="multiple of 8"):
    attention.attention(q, k, v, seg, seg, backend="cudnn")


@pytest.mark.skipif(jax.default_backend() == "gpu", reason="checks the refusal off GPU")
def test_cudnn_refuses_without_gpu():
  q, k, v, seg = _packed(np.random.default_rng(14), length=32, dtype=jnp.bfloat16)
  with pytest.raises(attention.AttentionUnsupported, match="needs an NVIDIA GPU"):
    attention.attention(q, k, v, seg, seg, backend="cudnn")


# Registry --------------------------------------------------------------------


def test_auto_picks_the_platform_kernel():
  assert attention.resolve_backend("auto", platform="tpu") == "splash_tpu"
  assert attention.resolve_backend("auto", platform="gpu") == "pallas_gpu"
  # On CPUs: segments for calls that say how their rows are packed, else the reference.
  assert attention.resolve_backend("auto", platform="cpu") == "segments"
  assert attention.resolve_backend("auto", platform="cpu", packed=False) == "xla"
  if jax.default_backend() == "cpu":  # ...where the slots hold most of the row, the reference.
    assert attention.chosen_backend("auto", 256, 256, attention.Packing(64, 12)) == "xla"
    assert attention.chosen_backend("auto", 256, 256, attention.Packing(40, 12)) == "segments"
    # The demo's cross-attention to its captions: 12 slots of 40 x 16 of 256 x 192.
    cross = attention.Packing(40, 12, kv_max_len=16)
    assert attention.chosen_backend("auto", 256, 192, cross) == "segments"
    assert attention.chosen_backend("auto", 256, 192, attention.Packing(40, 12)) == "xla"
    long_rows = attention.Packing(96, 256)
    assert attention.chosen_backend("auto", 16384, 16384, long_rows) == "segments"
    assert attention.chosen_backend("xla", 16384, 16384, long_rows) == "xla"
  assert {"xla", "segments", "block_sparse", "pallas_gpu", "splash_tpu", "cudnn"} <= set(
    attention.backends()
  )


def test_auto_falls_back_to_xla_for_what_the_kernel_refuses(monkeypatch):
  monkeypatch.setitem(attention._AUTO_BACKENDS, jax.default_backend(), "pallas_gpu_interpret")
  rng = np.random.default_rng(15)
  q, k, v, q_seg, kv_seg = _cross(rng, lq=32, lk=16)  # Cross-attention: refused, falls back.
  np.testing.assert_array_equal(
    np.asarray(attention.attention(q, k, v, q_seg, kv_seg)),
    np.asarray(attention.attention(q, k, v, q_seg, kv_seg, backend="xla")),
  )
  # Naming the kernel explicitly never falls back.
  with pytest.raises(attention.AttentionUnsupported):
    attention.attention(q, k, v, q_seg, kv_seg, backend="pallas_gpu_interpret")
