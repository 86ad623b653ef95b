"""The demo model trained for editing: the demo (experiments/demo.py) with half of its
examples given clean frames (sora_jax.diffusion.conditioning.MIXTURE).

python -m sora_jax.train --config=experiments/demo_edit.py --workdir=out/demo_edit/run
python -m sora_jax.sample --workdir=out/demo_edit/run --image=FRAME.png --prompt=...

Its clips are 8 frames in 4-frame patches: two token frames, so an image holds
frames 0-3 and extension adds whole 4-frame steps (docs/performance.md, "Editing").
"""

from experiments import demo
from sora_jax.diffusion import conditioning


def get_config(arg=None):
  c = demo.get_config(arg)
  c.flow.conditioning.update(conditioning.MIXTURE)
  return c
