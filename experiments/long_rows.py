"""Long packed rows of many short examples: where attention is most of a step.

16,384-token rows holding up to 256 examples of at most 96 tokens (the demo's
4x8x8 pixel patches), one 128-wide head (head dim 128) per layer. Dense
attention computes 16,384^2 logits per row, of which ~1% pair tokens of the same
example; "segments" and "block_sparse" compute only within (or near) each example.

python -m sora_jax.benchmark --config=experiments/long_rows.py \\
    --config.data.data_dir=DATA --attention_backends=segments,block_sparse,xla
"""

from experiments import demo


def get_config(arg=None):
  del arg
  c = demo.get_config()
  c.data.update(
    data_dir="",
    seq_len=16384,
    max_examples_per_row=256,
    max_tokens_per_example=96,
    num_packing_bins=2,
    text_tokens_per_row=0,  # Room for 256 captions (the demo's budget holds ~13).
  )
  c.model.update(depth=2, width=128, heads=1)
  c.model.text.update(width=64, depth=1, heads=1)
  c.train.update(global_batch_size=1, num_steps=10, log_every=1, checkpoint_every=10)
  return c
