"""DiT-L: 24 layers x 1024 wide, 16 heads.

414M DiT parameters plus a 29M text encoder (at a 32k vocabulary); measured by
tests/test_configs.py.

python -m sora_jax.train --config=experiments/dit_l.py --workdir=DIR --config.data.data_dir=DATA
"""

from experiments import base


def get_config(arg=None):
  del arg
  c = base.get_config()
  c.model.update(depth=24, width=1024, heads=16, remat="dots")
  c.model.text.update(width=512, depth=4, heads=8)
  return c
