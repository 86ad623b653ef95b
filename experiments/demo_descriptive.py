"""The demo trained on descriptive captions (Sora's recaptioning, in miniature): the demo's
model, data and compute, with 90% of captions the long descriptions
`data_pipelines.recaption` reads from the pixels, and prompts expanded at sampling by a
caption language model trained on the same pairs.

python -m data_pipelines.recaption --data_dir=out/demo/data --output_dir=out/demo_long/data
python -m sora_jax.train_expander --config=experiments/expander.py --workdir=out/demo_long/expander
python -m sora_jax.train --config=experiments/demo_descriptive.py --workdir=out/demo_long/run
python -m sora_jax.evaluate --workdir=out/demo_long/run --data_dir=out/demo/data \\
    --expand_prompt --evals=prompt_following,families --output=out/demo_long/eval

The evaluation prompts are the short held-out captions of out/demo/data, expanded; the
comparison with the demo itself is in docs/performance.md ("Descriptive captions").
"""

from experiments import demo


def get_config(arg=None):
  c = demo.get_config(arg)
  # Descriptions take ~35 tokens (p99 44) with the recaptioned data's 512-piece tokenizer.
  c.data.update(
    data_dir="out/demo_long/data", descriptive_captions=0.9, max_text_len=48, text_tokens_per_row=0
  )
  c.sample.update(expander="out/demo_long/expander")
  return c
