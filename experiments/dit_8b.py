"""DiT-8B: 30 layers x 4096 wide, 32 heads.

8.22B DiT parameters plus a 670M text encoder (at a 32k vocabulary); measured by
tests/test_configs.py.

python -m sora_jax.train --config=experiments/dit_8b.py --workdir=DIR --config.data.data_dir=DATA
"""

from experiments import base


def get_config(arg=None):
  del arg
  c = base.get_config()
  c.model.update(depth=30, width=4096, heads=32, remat="full")
  c.model.text.update(width=2048, depth=12, heads=16)
  c.mesh.update(fsdp=-1, tensor=4)  # Heads and MLP split over groups of 4 devices.
  return c
