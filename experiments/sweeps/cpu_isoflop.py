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

from experiments import base
from sora_jax.training import sweeps

BUDGETS = (8e11, 2.4e12, 7.2e12)  # Training FLOPs per run (as the trainer counts them).
WIDTHS = (32, 64, 96, 128)
HOLDOUT = ((9.6e12, 96),)  # (budget, width): 1.33x the largest budget, left out of the fit.
# Width 128 at the top budget would cost ~10 more CPU minutes; it was the worst width at both
# lower budgets by a wide margin (docs/scaling.md), so the top budget's profile is 32-96.
TOP_WIDTHS = WIDTHS[:3]


def get_config(arg=None):
  del arg
  c = base.get_config()
  c.data.update(
    data_dir="out/sweep_data",
    seq_len=256,
    max_examples_per_row=12,
    max_tokens_per_example=40,
    max_frames=8,
    min_frame_tokens=16,
    max_text_len=16,
    caption_dropout=0.1,
    num_packing_bins=16,
    frame_stride=3,
  )
  c.model.update(
    patch=(4, 8, 8),
    width=64,
    depth=2,
    heads=2,
    dtype="float32",
    remat="none",
    parametrization="mup",
    mup_base_width=64,
  )
  c.model.text.update(width=64, depth=1, heads=2)
  c.flow.update(shift_base_tokens=32, prediction="data", min_t=0.5)
  c.optim.update(lr=2e-3, warmup_steps=20, weight_decay=0.0, ema_decay=0.99)
  c.train.update(
    num_steps=100, global_batch_size=4, log_every=25, checkpoint_every=500, keep_checkpoints=1
  )
  c.heldout.update(rows=16, split="eval", timesteps=8, seed=0)
  c.mesh.update(data=1, fsdp=-1, tensor=1)
  return c


def get_sweep():
  return sweeps.Sweep(
    base=get_config(),
    points=sweeps.isoflop_grid(BUDGETS[:-1], WIDTHS)
    + sweeps.isoflop_grid(BUDGETS[-1:], TOP_WIDTHS, holdout=HOLDOUT),
    synthetic_data={"num_examples": 10000, "seed": 0},
  )
