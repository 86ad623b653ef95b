"""DiT-B: 12 layers x 768 wide, 12 heads.

120M DiT parameters plus a 29M text encoder (at a 32k vocabulary); measured by
tests/test_configs.py.

python -m sora_jax.train --config=experiments/dit_b.py --workdir=DIR --config.data.data_dir=DATA
"""

from experiments import base


def get_config(arg=None):
  del arg
  c = base.get_config()
  c.model.update(depth=12, width=768, heads=12, remat="none")
  c.model.text.update(width=512, depth=4, heads=8)
  return c
