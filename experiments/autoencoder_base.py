"""The shared base of video autoencoder configs (`python -m sora_jax.train_autoencoder`).

Presets override a few fields. `sora_jax.training.validation.validate_autoencoder` checks
the whole config before anything compiles.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0

  # Clip batches (data_pipelines.clips): each global batch is one bucket
  # (frames, height, width); buckets mix resolutions and durations over steps.
  c.data = dict(
    source="array_record",  # or "tfds"
    data_dir="",
    split="train",
    eval_split="eval",
    tfds_name="sora_jax",
    buckets=((1, 256, 256), (17, 128, 128), (9, 128, 224), (9, 224, 128)),
    bucket_weights=(),  # Empty: uniform.
    frame_stride=1,
    num_workers=0,
    worker_buffer_size=2,
  )

  # sora_jax.models.autoencoder.AutoencoderConfig: 4x in time, 8x in space.
  c.model = dict(
    latent_channels=16,
    base_channels=128,
    channel_mults=(1, 2, 4, 4),
    num_res_blocks=2,
    temporal_down=(False, True, True),
    # Group norm per frame. Keep >= 4 channels per group: with 1 it is an instance
    # norm, which erases each channel's per-frame mean (a plain background's colour).
    norm_groups=32,
    # Parameter-free shortcuts around resampling and the bottleneck (DC-AE's residual
    # autoencoding); with L1 + L2 they took a demo-sized model from 20.7 to 28.2 dB.
    shortcuts=True,
    dtype="bfloat16",
    param_dtype="float32",
  )

  # Loss weights. The adversarial term (a 3D patch discriminator) switches on
  # at `adv_start`; adv = 0 builds no discriminator at all.
  c.loss = dict(
    l1=1.0,
    l2=1.0,  # Squared error: pulls harder on large errors (object edges) than L1 does.
    kl=1e-6,
    adv=0.0,
    adv_start=20_000,
    disc_channels=64,
    disc_layers=3,
    disc_lr=1e-4,
  )

  c.optim = dict(
    lr=1e-4,
    warmup_steps=1000,
    decay_steps=0,  # 0: decay over train.num_steps.
    min_lr_ratio=0.1,
    b1=0.9,
    b2=0.99,
    eps=1e-8,
    weight_decay=0.0,
    clip_norm=1.0,
    ema_decay=0.999,
  )

  c.train = dict(
    num_steps=100_000,
    global_batch_size=32,  # Clips per step, over all processes.
    log_every=50,
    eval_every=1000,  # PSNR/SSIM of the EMA on the eval split, and reconstructions to TensorBoard.
    eval_batches=4,
    checkpoint_every=1000,
    keep_checkpoints=3,
    async_checkpointing=True,
    stats_batches=16,  # Training batches the final latent scale/shift estimate reads.
  )

  c.mesh = dict(data=1, fsdp=-1, context=1, tensor=1)
  c.sharding = dict(
    rules=(
      ("batch", ("data", "fsdp")),
      ("conv_in", None),
      ("conv_out", "fsdp"),
    )
  )
  return c
