"""DiT-1B: 28 layers x 1536 wide, 12 heads (~1.1B parameters with its text encoder).

python -m sora_jax.train --config=experiments/dit_1b.py --workdir=DIR --config.data.data_dir=DATA
"""

from experiments import base


def get_config(arg=None):
  del arg
  c = base.get_config()
  c.model.update(depth=28, width=1536, heads=12, remat="full")
  c.model.text.update(width=1024, depth=8, heads=16)
  return c
