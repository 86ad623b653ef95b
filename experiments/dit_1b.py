"""DiT-1B: 28 layers x 1536 wide, 12 heads.

1.08B DiT parameters plus a 134M text encoder (at a 32k vocabulary); measured by
tests/test_configs.py.

python -m sora_jax.train --config=experiments/dit_1b.py --workdir=DIR --config.data.data_dir=DATA
"""

from experiments import base


def get_config(arg=None):
  del arg
  c = base.get_config()
  c.model.update(depth=28, width=1536, heads=12, remat="full")
  c.model.text.update(width=1024, depth=8, heads=16)
  return c
