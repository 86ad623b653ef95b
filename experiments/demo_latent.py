"""The demo in latent space: the DiT on the latents of a trained video autoencoder.

  python -m sora_jax.train_autoencoder --config=experiments/autoencoder_demo.py --workdir=out/ae \
      --config.data.data_dir=out/demo/data
  python -m sora_jax.cache_latents --autoencoder_workdir=out/ae --data_dir=out/demo/data \
      --output_dir=out/demo/latents --config=experiments/demo_latent.py
  python -m sora_jax.train --config=experiments/demo_latent.py --workdir=out/demo_latent \
      --config.data.data_dir=out/demo/latents --config.latent.stats_file=out/demo/latents/latent_stats.json

Reading pixels instead of the cache (--config.data.data_dir=out/demo/data) encodes on the fly.
"""

from experiments import demo


def get_config(arg=None):
  del arg
  c = demo.get_config()
  c.latent.update(kind="autoencoder", autoencoder="out/ae")
  c.data.update(
    data_dir="out/demo/latents",
    seq_len=256,
    max_tokens_per_example=96,  # 16-channel latents, 4x8x8: a 9-frame 32x48 clip is 72 tokens.
    max_frames=9,
    frame_stride=2,
    min_frame_tokens=8,
    max_examples_per_row=8,
  )
  c.model.update(patch=(1, 1, 1))
  c.flow.update(shift_base_tokens=16, prediction="velocity", min_t=0.05)
  # ~1.2 s per step on 2 cores (~61 examples per step): the pixel demo's ~20 minutes.
  c.train.update(
    time_limit_minutes=0.0, num_steps=1000, global_batch_size=16, log_every=25, checkpoint_every=250
  )
  c.sample.update(cfg_scale=3.0)
  return c
