"""A small video autoencoder for the built-in synthetic dataset, trained on CPU.

  python -m sora_jax.train_autoencoder --config=experiments/autoencoder_demo.py \
      --workdir=out/ae --config.data.data_dir=out/demo/data
"""

from experiments import autoencoder_base


def get_config(arg=None):
  del arg
  c = autoencoder_base.get_config()
  c.data.update(
    data_dir="out/demo/data",
    buckets=((1, 32, 32), (9, 32, 32), (9, 32, 48), (9, 48, 32), (17, 32, 32)),
  )
  c.model.update(
    latent_channels=16,
    base_channels=16,
    channel_mults=(1, 2, 4, 4),
    num_res_blocks=1,
    norm_groups=4,
    dtype="float32",  # bfloat16 convolutions are slow on CPUs.
  )
  c.optim.update(lr=1e-3, warmup_steps=50, ema_decay=0.995)
  c.train.update(
    num_steps=2000,  # ~36 min on 2 cores (docs/performance.md).
    global_batch_size=8,
    log_every=25,
    eval_every=500,
    eval_batches=4,
    checkpoint_every=500,
    keep_checkpoints=2,
    stats_batches=8,
  )
  c.mesh.update(data=1, fsdp=-1)
  return c
