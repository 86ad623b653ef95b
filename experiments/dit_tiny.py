"""DiT-tiny: 2 layers x 64 wide (~0.1M parameters), for smoke tests and CI.

python -m sora_jax.train --config=experiments/dit_tiny.py --workdir=DIR --config.data.data_dir=DATA
"""

from experiments import base


def get_config(arg=None):
  del arg
  c = base.get_config()
  c.data.update(
    seq_len=128,
    max_examples_per_row=4,
    max_tokens_per_example=64,
    max_frames=4,
    min_frame_tokens=4,
    max_text_len=8,
    num_packing_bins=4,
  )
  c.model.update(patch=(1, 4, 4), depth=2, width=64, heads=2, dtype="float32", remat="none")
  c.model.text.update(width=32, depth=1, heads=1)
  c.optim.update(lr=3e-3, warmup_steps=2, weight_decay=0.0, ema_decay=0.9)
  c.train.update(
    num_steps=20, global_batch_size=8, log_every=1, checkpoint_every=10, keep_checkpoints=2
  )
  c.sample.update(steps=4, cfg_scale=2.0)
  return c
