"""A style preset: a LoRA adapter trained on styled clips on top of the exported demo model.

  python -m sora_jax.export --workdir=out/demo/run --output=out/demo/model
  python -m data_pipelines.synthetic --output_dir=out/style/striped --num_examples=4000 \
      --seed=1 --min_object=0.35 --max_object=0.6 --style=striped --style_fraction=0.5
  python -m sora_jax.train --config=experiments/demo_style.py --workdir=out/style/run_striped \
      --config.data.data_dir=out/style/striped --config.init_from=out/demo/model
  python -m sora_jax.export --workdir=out/style/run_striped --output=out/style/striped_preset
  python -m sora_jax.sample --model=out/demo/model --preset=out/style/striped_preset \
      --prompt="a red circle moving left on a black background striped"

Only the adapters train (rank 8 on the blocks' self-attention, cross-attention and
MLP projections); the tokenizer and the base weights come from the export. Half
plain clips (--style_fraction=0.5) teach the adapter to draw the style only when
the prompt asks (docs/export.md: 100% of styled prompts, as few plain ones as the base).
"""

from experiments import demo


def get_config(arg=None):
  del arg
  c = demo.get_config()
  c.init_from = "out/demo/model"
  c.lora.update(rank=8, alpha=8.0)
  c.data.update(data_dir="out/style/striped", tokenizer="")
  # A short run: a higher rate than full training suits the zero-initialized factors.
  c.optim.update(lr=2e-3, warmup_steps=20, ema_decay=0.99)
  # 8 rows a step, as docs/export.md measured it (the demo itself now trains on 4).
  c.train.update(num_steps=400, global_batch_size=8, checkpoint_every=200, log_every=25)
  return c
