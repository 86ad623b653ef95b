"""The prompt expander of the descriptive-caption demo: a 0.6M-parameter caption language
model trained on the (short, descriptive) pairs of a recaptioned dataset.

python -m data_pipelines.recaption --data_dir=out/demo/data --output_dir=out/demo_long/data
python -m sora_jax.train_expander --config=experiments/expander.py --workdir=out/demo_long/expander
"""

import ml_collections


def get_config(arg=None):
  del arg
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.data = dict(data_dir="out/demo_long/data", split="train", eval_split="eval", max_len=64)
  c.model = dict(width=128, depth=3, heads=4, mlp_ratio=4.0)
  c.optim = dict(
    lr=3e-3,
    warmup_steps=50,
    decay_steps=0,
    min_lr_ratio=0.05,
    b1=0.9,
    b2=0.99,
    eps=1e-8,
    weight_decay=0.0,
    clip_norm=1.0,
  )
  c.train = dict(num_steps=800, batch_size=32, log_every=50, eval_every=200)
  # Sampling: temperature 0 takes the likeliest token; above, the expansions vary by seed.
  c.sample = dict(temperature=0.7)
  return c
