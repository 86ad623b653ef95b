"""The demo model trained for editing: the demo (experiments/demo.py) with a quarter of its
examples given clean frames (sora_jax.diffusion.conditioning.MIXTURE) and time-stamped
captions trained on their windows (storyboards), on data where 30% of the moving clips
change direction once.

python -m data_pipelines.synthetic --output_dir=out/demo_edit/data --num_examples=10000 \
    --seed=0 --min_object=0.35 --max_object=0.6 --event_fraction=0.3
python -m data_pipelines.tokenizer --data_dir=out/demo_edit/data --vocab_size=128
python -m sora_jax.train --config=experiments/demo_edit.py --workdir=out/demo_edit/run
python -m sora_jax.evaluate --workdir=out/demo_edit/run --data_dir=out/demo_edit/data \
    --evals=prompt_following,editing --output=out/demo_edit/eval
python -m sora_jax.sample --workdir=out/demo_edit/run --image=FRAME.png --prompt=...

Its clips are 8 frames in 4-frame patches: two token frames, so an image holds
frames 0-3, extension adds whole 4-frame steps and a storyboard has at most two
windows (docs/performance.md, "Editing").
"""

from experiments import demo
from sora_jax.diffusion import conditioning


def get_config(arg=None):
  c = demo.get_config(arg)
  c.data.update(data_dir="out/demo_edit/data", caption_windows=True, text_tokens_per_row=0)
  c.flow.conditioning.update(conditioning.MIXTURE)
  return c
