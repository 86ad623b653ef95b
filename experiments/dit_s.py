"""DiT-S: 12 layers x 384 wide, 6 heads.

30M DiT parameters plus a 10M text encoder (at a 32k vocabulary); measured by
tests/test_configs.py.

python -m sora_jax.train --config=experiments/dit_s.py --workdir=DIR --config.data.data_dir=DATA
"""

from experiments import base


def get_config(arg=None):
  del arg
  c = base.get_config()
  c.model.update(depth=12, width=384, heads=6, remat="none")
  c.model.text.update(width=256, depth=2, heads=4)
  return c
