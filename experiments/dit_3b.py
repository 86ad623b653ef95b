"""DiT-3B: 32 layers x 2560 wide, 20 heads.

3.42B DiT parameters plus a 134M text encoder (at a 32k vocabulary); measured by
tests/test_configs.py.

python -m sora_jax.train --config=experiments/dit_3b.py --workdir=DIR --config.data.data_dir=DATA
"""

from experiments import base


def get_config(arg=None):
  del arg
  c = base.get_config()
  c.model.update(depth=32, width=2560, heads=20, remat="full")
  c.model.text.update(width=1024, depth=8, heads=16)
  return c
