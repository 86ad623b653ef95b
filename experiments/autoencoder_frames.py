"""A per-frame image autoencoder for the demo's synthetic data: 4x in space, none in time.

  python -m sora_jax.train_autoencoder --config=experiments/autoencoder_frames.py \
      --workdir=out/demo/ae --config.data.data_dir=out/demo/data

0.4M parameters; 400 steps take ~3 min on 2 CPU cores (28.3 dB on the eval split) and
1200 ~7 min (31.1 dB), but its reconstructions round the objects' corners: shape reads
back 31% either way (docs/performance.md, "Levers measured in the fifth session").
"""

from experiments import autoencoder_demo


def get_config(arg=None):
  del arg
  c = autoencoder_demo.get_config()  # Its data, width, norm, optimizer and batch.
  # Frames are independent (temporal_kernel=1): 4-frame crops are 4 images a clip.
  c.data.buckets = ((4, 32, 32), (4, 32, 40), (4, 40, 32), (4, 48, 48))
  c.model.update(
    latent_channels=4,
    channel_mults=(1, 2, 4),  # 4x in space.
    temporal_down=(False, False),
    temporal_kernel=1,
  )
  c.optim.ema_decay = 0.99
  c.train.update(num_steps=400, eval_every=200, checkpoint_every=200, keep_checkpoints=1)
  return c
