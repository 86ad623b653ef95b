"""A tiny video autoencoder for tests and smoke runs (seconds on a CPU)."""

from experiments import autoencoder_base


def get_config(arg=None):
  del arg
  c = autoencoder_base.get_config()
  c.data.update(buckets=((1, 16, 16), (5, 16, 24)), eval_split="train")
  c.model.update(
    latent_channels=4,
    base_channels=8,
    channel_mults=(1, 1, 1, 1),
    num_res_blocks=1,
    norm_groups=2,
    conv_impl="3d",  # Compiles faster than "frames"; tiny shapes gain nothing from it.
    dtype="float32",
  )
  c.loss.update(disc_channels=4, disc_layers=2, disc_lr=1e-3)
  c.optim.update(lr=3e-3, warmup_steps=5, ema_decay=0.9)
  c.train.update(
    num_steps=20,
    global_batch_size=8,
    log_every=5,
    eval_every=10,
    eval_batches=1,
    checkpoint_every=10,
    keep_checkpoints=2,
    async_checkpointing=False,
    stats_batches=2,
  )
  return c
