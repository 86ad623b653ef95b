"""DiT-XL: 28 layers x 1152 wide, 16 heads.

609M DiT parameters plus a 67M text encoder (at a 32k vocabulary); measured by
tests/test_configs.py.

python -m sora_jax.train --config=experiments/dit_xl.py --workdir=DIR --config.data.data_dir=DATA
"""

from experiments import base


def get_config(arg=None):
  del arg
  c = base.get_config()
  c.model.update(depth=28, width=1152, heads=16, remat="dots")
  c.model.text.update(width=768, depth=6, heads=12)
  return c
