"""The demo in a linear latent space: the demo's DiT on a PCA of 8x8 pixel blocks.

python -m sora_jax.fit_pca --config=experiments/demo_pca.py --output_dir=out/demo/pca
python -m sora_jax.train --config=experiments/demo_pca.py --workdir=out/demo_pca
"""

from experiments import demo


def get_config(arg=None):
  del arg
  c = demo.get_config()
  c.latent.update(kind="pca", pca="out/demo/pca", pca_block=8, pca_channels=48)
  # 4 frames x one 8x8 block per token, as the pixel demo's 4x8x8 patches, but 48
  # channels per block: 192 values per token (the model's width) instead of 768.
  c.model.update(patch=(4, 1, 1))
  c.train.update(time_limit_minutes=0.0, num_steps=900, checkpoint_every=300)
  return c
