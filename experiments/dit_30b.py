"""DiT-30B: 48 layers x 6144 wide, 48 heads.

29.4B DiT parameters plus a 3.35B text encoder (at a 32k vocabulary); measured by
tests/test_configs.py.

python -m sora_jax.train --config=experiments/dit_30b.py --workdir=DIR --config.data.data_dir=DATA
"""

from experiments import base


def get_config(arg=None):
  del arg
  c = base.get_config()
  c.model.update(depth=48, width=6144, heads=48, remat="full")
  c.model.text.update(width=4096, depth=16, heads=32)
  c.mesh.update(fsdp=-1, tensor=8)  # Heads and MLP split over groups of 8 devices.
  return c
