"""An isoFLOP sweep anyone can run on a CPU: 3 compute budgets x 4 widths (the widest left
out at the top budget), plus one larger held-out point the fit must predict, on the
built-in dataset (generated on first use).

  python -m sora_jax.sweep --sweep=experiments/sweeps/cpu_isoflop.py --root=out/sweep --dry_run
  python -m sora_jax.sweep --sweep=experiments/sweeps/cpu_isoflop.py --root=out/sweep
  python -m sora_jax.scaling --root=out/sweep --output=out/sweep/fit

Copy this file and change BUDGETS and WIDTHS for another sweep. The model is the demo's
pixel-space DiT recipe with muP (sora_jax.models.mup), so one learning rate serves every
width; depth and heads follow sora_jax.training.sweeps.shape_for_width (head dim 32, one
layer per 32 of width, at least 2). Results: docs/scaling.md.
"""

from experiments import demo
from sora_jax.training import sweeps

BUDGETS = (8e11, 2.4e12, 7.2e12)  # Training FLOPs per run (as the trainer counts them).
WIDTHS = (32, 64, 96, 128)
HOLDOUT = ((9.6e12, 96),)  # (budget, width): 1.33x the largest budget, left out of the fit.
# Width 128 at the top budget would cost ~10 more CPU minutes; it was the worst width at both
# lower budgets by a wide margin (docs/scaling.md), so the top budget's profile is 32-96.
TOP_WIDTHS = WIDTHS[:3]


def get_config(arg=None):
  """The demo's data and objective (experiments/demo.py); the model sized per point."""
  del arg
  c = demo.get_config()
  c.data.data_dir = "out/sweep_data"
  # 4x8x8 patches, as when docs/scaling.md's sweep ran (the demo moved to 4x4x4 since).
  c.model.update(
    patch=(4, 8, 8), width=64, depth=2, heads=2, parametrization="mup", mup_base_width=64
  )
  c.model.text.update(width=64, depth=1, heads=2)
  c.optim.update(lr=2e-3, warmup_steps=20, ema_decay=0.99)
  c.train.update(
    num_steps=100, global_batch_size=4, log_every=25, checkpoint_every=500, keep_checkpoints=1
  )
  c.heldout.update(rows=16, split="eval", timesteps=8, seed=0)
  return c


def get_sweep():
  return sweeps.Sweep(
    base=get_config(),
    points=sweeps.isoflop_grid(BUDGETS[:-1], WIDTHS)
    + sweeps.isoflop_grid(BUDGETS[-1:], TOP_WIDTHS, holdout=HOLDOUT),
    synthetic_data={"num_examples": 10000, "seed": 0},
  )
