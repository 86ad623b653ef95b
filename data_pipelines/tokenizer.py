r"""Trains a sentencepiece tokenizer on a dataset's captions and stores it beside the data.

  python -m data_pipelines.tokenizer --data_dir=DIR --vocab_size=N

writes DIR/tokenizer.model and records it in DIR/manifest.json. Ids 0..3 are
reserved: pad 0, unk 1, bos 2, eos 3. Every encoded caption ends with eos, so an
empty (dropped) caption is a single eos token and attention over it stays
well-defined.
"""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import sentencepiece as spm
from absl import app, flags, logging

from data_pipelines import shards

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
MODEL_NAME = "tokenizer.model"


class Tokenizer:
  """Captions -> fixed-length int32 ids with a padding mask."""

  def __init__(self, model_path: str):
    if not os.path.exists(model_path):
      raise FileNotFoundError(
        f"tokenizer model {model_path} not found; train one with "
        "`python -m data_pipelines.tokenizer --data_dir=DIR`"
      )
    self.model_path = model_path
    self._sp = spm.SentencePieceProcessor(model_file=model_path)

  def __getstate__(self):  # Picklable for grain worker processes.
    return {"model_path": self.model_path}

  def __setstate__(self, state):
    self.__init__(state["model_path"])

  @property
  def vocab_size(self) -> int:
    return self._sp.get_piece_size()

  def ids(self, caption: str, max_len: int) -> list[int]:
    """Ids of one caption, eos-terminated and truncated to max_len (with a warning)."""
    ids = self._sp.encode(caption.strip()) if caption.strip() else []
    if len(ids) >= max_len:
      logging.log_every_n(
        logging.WARNING,
        "a caption of %d tokens is cut to max_text_len=%d (%r); raise data.max_text_len",
        1000,
        len(ids) + 1,
        max_len,
        caption,
      )
    return (ids[: max_len - 1] + [EOS_ID])[:max_len]

  def encode(self, captions: Sequence[str], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Returns ids int32 `[N, max_len]` (pad 0) and mask bool `[N, max_len]`."""
    out = np.full((len(captions), max_len), PAD_ID, np.int32)
    for i, c in enumerate(captions):
      ids = self.ids(c, max_len)
      out[i, : len(ids)] = ids
    return out, out != PAD_ID

  def decode(self, ids: Iterable[int]) -> str:
    return self._sp.decode([int(i) for i in ids if int(i) > EOS_ID])


def load(data_dir: str) -> Tokenizer:
  """The tokenizer recorded in a dataset's manifest."""
  manifest = shards.read_manifest(data_dir)
  name = manifest.get("tokenizer")
  if not name:
    raise shards.DatasetError(
      f"{data_dir} has no tokenizer; run `python -m data_pipelines.tokenizer --data_dir={data_dir}`"
    )
  return Tokenizer(os.path.join(data_dir, name))


def iter_captions(data_dir: str, split: str = "train") -> Iterator[str]:
  for path in shards.split_files(data_dir, split):
    for example in shards.read_shard(path):
      yield from example.captions
      yield from example.descriptive_captions


def train(data_dir: str, vocab_size: int, split: str = "train", model_type: str = "bpe") -> str:
  """Trains on every caption of `split`; returns the model path.

  BPE by default: on small or repetitive caption sets (the built-in dataset has
  a few hundred distinct captions) unigram training collapses to near
  character-level pieces, tripling caption lengths; BPE learns whole words.
  """
  captions = [c for c in iter_captions(data_dir, split) if c.strip()]
  if not captions:
    raise shards.DatasetError(f"split {split!r} of {data_dir} has no non-empty captions")
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
    sentence_iterator=iter(c.strip() for c in captions),
    model_writer=model,
    vocab_size=vocab_size,
    model_type=model_type,
    character_coverage=1.0,
    hard_vocab_limit=False,  # Small caption sets may have fewer pieces.
    pad_id=PAD_ID,
    unk_id=UNK_ID,
    bos_id=BOS_ID,
    eos_id=EOS_ID,
    input_sentence_size=2_000_000,
    shuffle_input_sentence=True,
    minloglevel=2,
  )
  path = os.path.join(data_dir, MODEL_NAME)
  shards.atomic_write_bytes(path, model.getvalue())
  shards.update_manifest(data_dir, tokenizer=MODEL_NAME)
  return path


def caption_lengths(tok: Tokenizer, captions: Iterable[str]) -> dict[str, int]:
  """Token counts (eos included) of captions: count, median, 99th percentile, max."""
  lengths = np.asarray([len(tok.ids(c, 1 << 30)) for c in captions])
  return {
    "count": int(lengths.size),
    "median": int(np.median(lengths)),
    "p99": int(np.percentile(lengths, 99)),
    "max": int(lengths.max()),
  }


def main(argv: Sequence[str]) -> None:
  del argv
  FLAGS = flags.FLAGS
  if not FLAGS.data_dir:
    sys.exit("error: --data_dir is required")
  if FLAGS.vocab_size < 8:
    sys.exit(f"error: --vocab_size={FLAGS.vocab_size}; must be at least 8")
  try:
    path = train(FLAGS.data_dir, FLAGS.vocab_size, FLAGS.split, FLAGS.model_type)
  except shards.DatasetError as e:
    sys.exit(f"error: {e}")
  tok = Tokenizer(path)
  stats = caption_lengths(tok, iter_captions(FLAGS.data_dir, FLAGS.split))
  print(f"tokenizer: {tok.vocab_size} pieces -> {path}")
  print(
    f"captions: {stats['count']} in {FLAGS.split!r}, tokens with eos: median {stats['median']}, "
    f"99th percentile {stats['p99']}, max {stats['max']}; "
    f"use data.max_text_len >= {stats['p99']}"
  )


if __name__ == "__main__":
  # Flags exist only when this file runs as a program, so importing the library
  # next to other binaries never clashes.
  flags.DEFINE_string("data_dir", None, "Dataset directory (with manifest.json).")
  flags.DEFINE_integer("vocab_size", 256, "Target vocabulary size (an upper bound).")
  flags.DEFINE_string("split", "train", "Split whose captions train the tokenizer.")
  flags.DEFINE_enum("model_type", "bpe", ["bpe", "unigram", "word", "char"], "Sentencepiece model.")
  app.run(main)
