"""Patchify, sizing, packing invariants and determinism of the grain pipeline."""

import dataclasses
import itertools

import grain
import numpy as np
import pytest

from data_pipelines import media, patchify, pipeline, schema, sizing, tokenizer

ODD_SIZES = [(1, 8, 8), (1, 24, 40), (5, 16, 24), (7, 32, 8), (2, 40, 56), (9, 24, 24)]
PATCHES = [(1, 8, 8), (2, 8, 8), (3, 4, 8), (1, 2, 4)]


@pytest.mark.parametrize("patch", PATCHES)
@pytest.mark.parametrize("size", ODD_SIZES)
def test_patchify_round_trip_is_exact(size, patch):
  t, h, w = size
  if h % patch[1] or w % patch[2]:
    pytest.skip("side not a multiple of the patch")
  video = np.random.default_rng(0).random((t, h, w, 3)).astype(np.float32)
  tokens = patchify.patchify(video, patch)
  grid = patchify.grid_shape((t, h, w), patch)
  assert tokens.shape == (int(np.prod(grid)), int(np.prod(patch)) * 3)
  np.testing.assert_array_equal(patchify.unpatchify(tokens, grid, patch, frames=t), video)
  coords = patchify.coordinates(grid)
  assert coords.dtype == np.int32 and coords.shape == (len(tokens), 3)
  assert patchify.grid_from_coordinates(coords) == grid
  # Token k holds the patch at its coordinates.
  k = len(tokens) // 2
  ct, ch, cw = coords[k]
  pt, ph, pw = patch
  want = video[ct * pt : (ct + 1) * pt, ch * ph : (ch + 1) * ph, cw * pw : (cw + 1) * pw]
  if want.shape[0] == pt:
    np.testing.assert_array_equal(tokens[k], want.reshape(-1))


def test_patchify_works_on_jax_arrays():
  import jax.numpy as jnp

  video = np.arange(3 * 16 * 8 * 2, dtype=np.float32).reshape(3, 16, 8, 2)
  np.testing.assert_array_equal(
    np.asarray(patchify.patchify(jnp.asarray(video), (2, 8, 4))),
    patchify.patchify(video, (2, 8, 4)),
  )


@pytest.mark.parametrize(
  "size", [(1, 72, 128), (32, 128, 72), (32, 96, 128), (16, 16, 16), (300, 1080, 1920)]
)
@pytest.mark.parametrize("compression", [(1, 1, 1), (4, 8, 8)])
def test_target_size_fits_budget_and_keeps_aspect(size, compression):
  geom = sizing.Geometry(
    patch=(1, 2, 2) if compression[1] > 1 else (1, 8, 8), compression=compression
  )
  frames, height, width = sizing.target_size(geom, *size, max_tokens=256, max_frames=33)
  assert geom.size_error(frames, height, width) is None
  assert geom.num_tokens(frames, height, width) <= 256
  assert frames <= min(size[0], 33)
  ah, aw = geom.align
  if size[1] >= 4 * ah and size[2] >= 4 * aw:  # Aspect kept to within one multiple.
    assert abs(width / height - size[2] / size[1]) <= (aw / height + ah * width / height**2) * 1.5


def test_random_resolution_varies_the_budget():
  geom = sizing.Geometry(patch=(1, 8, 8))
  rng = np.random.default_rng(0)
  sizes = {
    sizing.target_size(
      geom, 1, 256, 256, max_tokens=256, max_frames=1, rng=rng, min_token_fraction=0.25
    )
    for _ in range(50)
  }
  assert len(sizes) > 3
  assert all(geom.num_tokens(*s) <= 256 for s in sizes)


# ------------------------------------------------------------------------------
# Packing.
# ------------------------------------------------------------------------------


def _opts(**kw):
  base = dict(
    seq_len=256,
    max_examples_per_row=4,
    max_tokens_per_example=128,
    max_frames=9,
    max_text_len=8,
    caption_dropout=0.0,
    num_packing_bins=4,
  )
  base.update(kw)
  return pipeline.Options(**base)


@pytest.mark.parametrize("text_budget", [0, 6])
def test_packing_invariants(text_budget):
  """Each example lands whole in exactly one row, with its own coordinates and text;
  with a caption budget (`text_tokens_per_row`) no row's captions exceed it."""
  rng = np.random.default_rng(0)
  opts = _opts(seq_len=64, max_examples_per_row=3, max_text_len=4, text_tokens_per_row=text_budget)
  examples = []
  for i in range(40):
    grid = (int(rng.integers(1, 3)), int(rng.integers(1, 5)), int(rng.integers(1, 6)))
    n = int(np.prod(grid))
    examples.append(
      {
        "tokens": np.full((n, 2), i + 1, np.float32),
        "coords": patchify.coordinates(grid),
        "text_ids": np.full((int(rng.integers(1, 5)),), 100 + i, np.int32),
      }
    )
  rows = list(pipeline.pack(grain.MapDataset.source(examples).to_iter_dataset(), opts, seed=0))
  seen = []
  for row in rows:
    seg, tseg = row["segment_ids"], row["text_segment_ids"]
    assert seg.shape == (64,) and row["tokens"].shape == (64, 2) and row["coords"].shape == (64, 3)
    assert tseg.shape == (opts.text_len,) == ((text_budget or 12),)
    assert seg.max() <= opts.max_examples_per_row
    np.testing.assert_array_equal(row["tokens"][seg == 0], 0)  # Padding is marked 0.
    for s in range(1, seg.max() + 1):
      idx = np.flatnonzero(seg == s)
      assert np.all(np.diff(idx) == 1), "a segment is contiguous"
      ids = np.unique(row["tokens"][idx, 0])
      assert len(ids) == 1, "a segment holds one example"
      i = int(ids[0]) - 1
      want = examples[i]
      assert len(idx) == len(want["tokens"]), "no example is split across rows"
      np.testing.assert_array_equal(row["coords"][idx], want["coords"])
      np.testing.assert_array_equal(row["text_ids"][tseg == s], want["text_ids"])
      seen.append(i)
  assert sorted(seen) == list(range(40)), "each example is packed exactly once"
  # The budget binds: without it rows carry up to 10 caption tokens (14 rows); with 6,
  # rows close when their captions fill them, so the same examples take more rows.
  captions = [int((r["text_segment_ids"] > 0).sum()) for r in rows]
  assert max(captions) <= (text_budget or 12)
  assert (max(captions) > 6 and len(rows) == 14) if not text_budget else len(rows) > 14


def _dataset(data_dir, opts, seed=0, **kw):
  geom = sizing.Geometry(patch=(1, 8, 8))
  source, _ = pipeline.open_source("array_record", data_dir, "train")
  tok = pipeline.Tokenize(opts, geom, tokenizer.load(data_dir))
  return pipeline.make_dataset(source, tok, batch_size=2, seed=seed, **kw)


def test_pipeline_batches_have_static_shapes(tiny_data_dir):
  opts = _opts()
  spec = pipeline.batch_spec(opts, sizing.Geometry(patch=(1, 8, 8)), batch_size=2)
  for batch in itertools.islice(iter(_dataset(tiny_data_dir, opts)), 6):
    assert set(batch) == set(spec)
    for k, (shape, dtype) in spec.items():
      assert batch[k].shape == shape and batch[k].dtype == dtype, k
    assert np.all(np.abs(batch["tokens"]) <= 1.0)
    # Text segments and token segments describe the same examples.
    for b in range(2):
      assert set(np.unique(batch["segment_ids"][b])) - {0} == set(
        np.unique(batch["text_segment_ids"][b])
      ) - {0}


def test_one_epoch_covers_each_example_once(tiny_data_dir):
  opts = _opts(seq_len=512, max_examples_per_row=8)
  batches = list(_dataset(tiny_data_dir, opts, num_epochs=1, shuffle=False))
  total = sum(int(b["segment_ids"][r].max()) for b in batches for r in range(2))
  # drop_remainder may drop the last rows; everything else is present exactly once.
  assert 24 - 2 * 8 < total <= 24


def test_state_restore_is_deterministic(tiny_data_dir):
  opts = _opts(token_drop_rate=0.3, min_token_fraction=0.5, caption_dropout=0.3)
  it = iter(_dataset(tiny_data_dir, opts, seed=3))
  for _ in range(3):
    next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(4)]
  it2 = iter(_dataset(tiny_data_dir, opts, seed=3))
  it2.set_state(state)
  for want in expected:
    got = next(it2)
    for k in want:
      np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def test_reader_threads_change_nothing_in_the_stream(tiny_data_dir):
  """Records read in the packing thread (read_threads=0) give the batches 16 threads give,
  and each resumes the other's state."""
  opts = _opts(token_drop_rate=0.3, caption_dropout=0.3)
  threaded = iter(_dataset(tiny_data_dir, dataclasses.replace(opts, read_threads=16), seed=5))
  inline = iter(_dataset(tiny_data_dir, dataclasses.replace(opts, read_threads=0), seed=5))
  for _ in range(3):
    want, got = next(threaded), next(inline)
    for k in want:
      np.testing.assert_array_equal(got[k], want[k], err_msg=k)
  resumed = iter(_dataset(tiny_data_dir, dataclasses.replace(opts, read_threads=0), seed=5))
  resumed.set_state(threaded.get_state())
  want, got = next(threaded), next(resumed)
  for k in want:
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def test_seed_changes_the_stream(tiny_data_dir):
  a = next(iter(_dataset(tiny_data_dir, _opts(), seed=0)))
  b = next(iter(_dataset(tiny_data_dir, _opts(), seed=1)))
  assert not np.array_equal(a["tokens"], b["tokens"])


class _MarkedTokenize(pipeline.Tokenize):
  """Writes each example's record number into its tokens, to see which records were read."""

  def __call__(self, record, rng):
    out = super().__call__(record, rng)
    out["tokens"][:] = int(pipeline.to_example(record).source_id.split("/")[-1])
    return out


def test_processes_read_disjoint_shards(tiny_data_dir):
  opts = _opts(seq_len=512, max_examples_per_row=8)
  geom = sizing.Geometry(patch=(1, 8, 8))
  tok = _MarkedTokenize(opts, geom, tokenizer.load(tiny_data_dir))
  seen = []
  for p in range(2):
    source, _ = pipeline.open_source("array_record", tiny_data_dir, "train")
    ds = pipeline.make_dataset(
      source, tok, batch_size=1, seed=0, process_index=p, process_count=2, num_epochs=1
    )
    ids = set()
    for batch in ds:
      seg, tokens = batch["segment_ids"][0], batch["tokens"][0]
      ids |= {int(tokens[seg == s][0, 0]) for s in range(1, seg.max() + 1)}
    seen.append(ids)
  assert seen[0] | seen[1] == set(range(24))
  assert not seen[0] & seen[1]


def test_worker_processes_resume_deterministically(tiny_data_dir):
  opts = _opts(num_workers=2)
  it = iter(_dataset(tiny_data_dir, opts, seed=5))
  next(it)
  state = it.get_state()
  want = [next(it) for _ in range(2)]
  it2 = iter(_dataset(tiny_data_dir, opts, seed=5))
  it2.set_state(state)
  for w in want:
    np.testing.assert_array_equal(next(it2)["tokens"], w["tokens"])


def test_bucketed_batches_pad_single_examples(tiny_data_dir):
  opts = _opts()
  geom = sizing.Geometry(patch=(1, 8, 8))
  source, _ = pipeline.open_source("array_record", tiny_data_dir, "train")
  tok = pipeline.Tokenize(opts, geom, tokenizer.load(tiny_data_dir))
  rng = np.random.default_rng(0)
  examples = (tok(source[i % len(source)], rng) for i in range(60))
  buckets = pipeline.bucket_lengths(opts.seq_len)
  for batch in pipeline.bucketed_batches(examples, opts, 2, buckets):
    assert batch["tokens"].shape[1] in buckets
    assert batch["segment_ids"].max() == 1


def test_options_validation():
  with pytest.raises(ValueError, match="max_tokens_per_example"):
    _opts(max_tokens_per_example=1000, seq_len=256).validate()
  with pytest.raises(ValueError, match="caption_dropout"):
    _opts(caption_dropout=2.0).validate()
  with pytest.raises(ValueError, match="text_tokens_per_row=7: allowed 0"):
    _opts(max_text_len=8, text_tokens_per_row=7).validate()
  with pytest.raises(ValueError, match="caption_windows"):
    _opts(text_tokens_per_row=64, caption_windows=True).validate()
  with pytest.raises(ValueError, match="read_threads=-1"):
    _opts(read_threads=-1).validate()


def test_tfds_and_array_record_sources_give_identical_batches(tiny_data_dir, tmp_path):
  from data_pipelines import tfds_builder

  tfds_dir = str(tmp_path / "tfds")
  tfds_builder.build(tiny_data_dir, tfds_dir)
  opts = _opts(token_drop_rate=0.2, caption_dropout=0.2)
  geom = sizing.Geometry(patch=(1, 8, 8))
  tok = tokenizer.load(tiny_data_dir)
  streams = []
  for kind, data_dir in (("array_record", tiny_data_dir), ("tfds", tfds_dir)):
    source, decode = pipeline.open_source(kind, data_dir, "train")
    tokenize = pipeline.Tokenize(opts, geom, tok, decode_record=decode)
    ds = pipeline.make_dataset(source, tokenize, batch_size=2, seed=4)
    streams.append(list(itertools.islice(iter(ds), 5)))
  for a, b in zip(*streams, strict=True):
    for k in pipeline.BATCH_KEYS:
      np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_frame_stride_spans_the_clip_and_shrinks_for_short_clips():
  from data_pipelines import media, schema

  def clip(num_frames):
    frames = np.zeros((num_frames, 16, 16, 3), np.uint8)
    frames[:] = (np.arange(num_frames) * 8)[:, None, None, None]  # Frame i has value 8 i.
    data, fmt = media.encode_raw(frames, compress=False)
    return schema.serialize(
      schema.Example(data, fmt, 8.0, num_frames, 16, 16, ("a clip",), f"clip{num_frames}")
    )

  class Tok:
    def ids(self, caption, max_len):
      return [3]

  opts = _opts(max_frames=4, frame_stride=3, min_frame_tokens=1, max_tokens_per_example=64)
  tokenize = pipeline.Tokenize(opts, sizing.Geometry(patch=(1, 8, 8)), Tok())
  for num_frames, stride in ((30, 3), (7, 2), (4, 1)):
    out = tokenize(clip(num_frames), np.random.default_rng(0))
    # Token features are pixels in [-1, 1]; the first value of each frame's tokens gives its index.
    values = out["tokens"].reshape(4, -1)[:, 0]
    index = np.round((values + 1) * 127.5 / 8).astype(int)
    np.testing.assert_array_equal(np.diff(index), stride)


def test_word_dropout_keeps_the_other_words_in_order(tiny_data_dir):
  """Each word is dropped on its own, the rest keep their order; none at rate 0."""
  caption = "a red circle moving left on a gray background"
  frames = np.zeros((1, 8, 8, 3), np.uint8)
  data, fmt = media.encode_raw(frames)
  ex = schema.Example(
    media=data,
    media_format=fmt,
    fps=0.0,
    num_frames=1,
    height=8,
    width=8,
    captions=(caption,),
    source_id="x/0",
  )
  tok, geom = tokenizer.load(tiny_data_dir), sizing.Geometry(patch=(1, 8, 8))
  dropped = pipeline.Tokenize(_opts(word_dropout=0.3), geom, tok)
  rng = np.random.default_rng(0)
  seen = [dropped.caption(ex, rng) for _ in range(200)]
  words = caption.split()
  for s in seen:
    it = iter(words)
    assert all(w in it for w in s.split()), s  # An ordered subsequence of the words.
  kept = np.mean([len(s.split()) for s in seen]) / len(words)
  assert 0.6 < kept < 0.8, kept
  assert len(set(seen)) > 50
  plain = pipeline.Tokenize(_opts(), geom, tok)
  assert {plain.caption(ex, rng) for _ in range(20)} == {caption}
  with pytest.raises(ValueError, match="word_dropout"):
    _opts(word_dropout=1.0).validate()
