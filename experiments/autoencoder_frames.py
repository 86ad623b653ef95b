"""A per-frame image autoencoder for the demo's synthetic data: 4x in space, none in time.

  python -m sora_jax.train_autoencoder --config=experiments/autoencoder_frames.py \
      --workdir=out/demo/ae --config.data.data_dir=out/demo/data

0.4M parameters; 400 steps take ~3 min on 2 CPU cores (28.3 dB on the eval split) and
1200 ~7 min (31.1 dB), but its reconstructions round the objects' corners: shape reads
back 31% either way (docs/performance.md, "Levers measured in the fifth session").
"""

from experiments import autoencoder_base


def get_config(arg=None):
  del arg
  c = autoencoder_base.get_config()
  c.data.update(
    data_dir="out/demo/data",
    # Frames are independent (temporal_kernel=1): 4-frame crops are 4 images a clip.
    buckets=((4, 32, 32), (4, 32, 40), (4, 40, 32), (4, 48, 48)),
  )
  c.model.update(
    latent_channels=4,
    base_channels=16,
    channel_mults=(1, 2, 4),
    num_res_blocks=1,
    temporal_down=(False, False),
    temporal_kernel=1,
    norm_groups=4,
    dtype="float32",  # bfloat16 convolutions are slow on CPUs.
  )
  c.optim.update(lr=1e-3, warmup_steps=50, ema_decay=0.99)
  c.train.update(
    num_steps=400,
    global_batch_size=8,
    log_every=25,
    eval_every=200,
    eval_batches=4,
    checkpoint_every=200,
    keep_checkpoints=1,
    stats_batches=8,
  )
  c.mesh.update(data=1, fsdp=-1)
  return c
