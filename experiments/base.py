"""The one shared base config. Presets and experiments override a few fields.

Every field is read by exactly one library module; `sora_jax.training.validation`
validates the whole config before anything compiles.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  # An exported model directory (sora_jax.export) to start from: its weights, tokenizer and
  # autoencoder. With lora.rank > 0 only the adapters train on top of it.
  c.init_from = ""

  # Input pipeline (data_pipelines.pipeline.Options; see docs/data.md).
  c.data = dict(
    source="array_record",  # or "tfds"
    data_dir="",
    split="train",
    tfds_name="sora_jax",
    tokenizer="",  # sentencepiece model; "" = the one in data_dir's manifest.
    seq_len=4096,  # L: tokens per packed row.
    max_examples_per_row=16,  # K: cap on examples per row.
    max_tokens_per_example=4096,
    max_frames=33,
    frame_stride=1,
    min_frame_tokens=64,
    min_token_fraction=1.0,  # < 1: NaViT random resolution.
    token_drop_rate=0.0,
    max_text_len=64,
    text_tokens_per_row=0,  # Caption tokens per row; 0: room for every caption (K x max_text_len).
    caption_dropout=0.1,
    word_dropout=0.0,  # Each caption word dropped independently (held-out compositions).
    # Time-stamped captions (e.g. synthetic --event_fraction): caption tokens seen only
    # from their window's frames (storyboards are then in distribution).
    caption_windows=False,
    # Probability of a descriptive caption (data_pipelines.recaption) over a short one.
    descriptive_captions=0.0,
    num_packing_bins=32,
    num_workers=0,
    num_shards=0,  # Virtual data shards (0: one per row of the global batch); see input_pipeline.py.
    worker_buffer_size=2,
    read_threads=16,  # Per pipeline, reading ahead of packing (0: in the consuming thread).
  )

  # Latent stage (sora_jax.diffusion.latent): "pixel" is the identity; "pca" a linear
  # latent fitted from the data (sora_jax.fit_pca) in `pca`; "autoencoder" a trained
  # video autoencoder (sora_jax.train_autoencoder) in `autoencoder`.
  c.latent = dict(
    kind="pixel",
    pca="",  # Its directory (python -m sora_jax.fit_pca writes it).
    pca_block=8,  # Its pixel block side (the spatial compression) ...
    pca_channels=16,  # ... and the principal components kept (the latent's channels).
    # False: coefficients in pixel units (diffusion in the PCA subspace of pixel space);
    # True: each channel scaled to unit variance (docs/performance.md compares them).
    pca_whiten=False,
    autoencoder="",  # Its workdir.
    step=-1,  # Its checkpoint (-1: the latest).
    stats_file="",  # Latent shift/scale; "": the autoencoder's latent_stats.json.
  )

  # Diffusion transformer (sora_jax.models.dit.DiTConfig).
  c.model = dict(
    patch=(1, 8, 8),  # (pt, ph, pw) in latent units.
    depth=12,
    width=768,
    heads=12,
    mlp_ratio=4.0,
    # "gelu", or "swiglu": a gated MLP (a third projection; mlp_ratio 8/3 keeps the
    # parameters and FLOPs of gelu at 4).
    mlp="gelu",
    adaln="single",
    qk_norm=True,
    rope_theta=10_000.0,
    attention="auto",
    context_parallel="all_gather",  # or "ulysses" (when mesh.context > 1)
    dtype="bfloat16",  # Compute dtype; params stay float32.
    param_dtype="float32",
    remat="none",  # none | full | dots | dots_all
    scan_layers=True,
    pooled_text=True,  # Mean caption embedding added to the timestep embedding (adaLN).
    # "standard", or "mup" (sora_jax.models.mup): per-parameter learning rates and
    # initialization so that optim.lr tuned at mup_base_width transfers to other widths.
    parametrization="standard",
    mup_base_width=0,  # 0: the model's own width.
    text=dict(width=512, depth=4, heads=8, mlp_ratio=4.0),
  )

  # Low-rank adapters (sora_jax.models.lora): rank 0 = none. With rank > 0 only the
  # adapters train; targets: self_attention, cross_attention, mlp.
  c.lora = dict(rank=0, alpha=8.0, targets=("self_attention", "cross_attention", "mlp"))

  # Rectified flow (sora_jax.diffusion.flow.FlowConfig).
  c.flow = dict(
    logit_mean=0.0,
    logit_std=1.0,
    shift_base_tokens=1024,
    shift_power=0.5,
    shift_min=0.5,
    shift_max=8.0,
    # or "data" (the network outputs x0) or "preconditioned" (EDM's skip and scale, with
    # sigma_data the data's standard deviation); see sora_jax/diffusion/flow.py.
    prediction="velocity",
    min_t=0.05,
    sigma_data=0.5,
    # Clean frames given as context in training (sora_jax/diffusion/conditioning.py): the
    # weight of each task in the mixture; all on "text" = plain text-to-video.
    # conditioning.MIXTURE is the editing mixture (experiments/demo_edit.py).
    conditioning=dict(
      text=1.0,
      first=0.0,
      last=0.0,
      ends=0.0,
      prefix=0.0,
      suffix=0.0,
      random=0.0,
      forcing=0.0,
      given_noise=0.05,
      random_fraction=0.5,
    ),
  )

  # Optimizer (sora_jax.training.optim).
  c.optim = dict(
    lr=1e-4,
    warmup_steps=1000,
    decay_steps=0,  # 0: decay over train.num_steps.
    min_lr_ratio=0.1,
    b1=0.9,
    b2=0.95,
    eps=1e-8,
    weight_decay=0.01,
    clip_norm=1.0,
    ema_decay=0.9999,
  )

  # Held-out loss (sora_jax.training.heldout): the flow loss on `rows` fixed rows of `split`
  # at `timesteps` stratified t with fixed noise, every `every` steps (0: at the end only)
  # and at the end. rows=0: off. Scaling-law sweeps fit it.
  c.heldout = dict(rows=0, every=0, split="eval", timesteps=8, seed=0)

  # Training loop (sora_jax.train).
  c.train = dict(
    num_steps=100_000,
    global_batch_size=256,  # Packed rows per step, over all processes.
    log_every=50,
    checkpoint_every=1000,
    keep_checkpoints=3,
    async_checkpointing=True,
    profile_steps=0,
    # Wall-clock cap: save and stop at the first log step past it (0: none). A safety
    # net for a fixed budget; the step reached is printed and logged (time_limit_step).
    time_limit_minutes=0.0,
  )

  # Parallelism: mesh axis sizes (-1: all remaining devices) and the rules that
  # map logical axis names to mesh axes. FSDP by default.
  c.mesh = dict(data=1, fsdp=-1, context=1, tensor=1)
  c.sharding = dict(
    rules=(
      ("batch", ("data", "fsdp")),
      ("length", "context"),  # Context parallelism shards video tokens (mesh.context > 1).
      ("text_length", None),
      ("embed", "fsdp"),
      ("mlp", "tensor"),
      ("heads", "tensor"),
      ("kv", None),
      ("vocab", None),
      ("patch", None),
      ("layers", None),
      ("act_embed", None),
      ("act_mlp", "tensor"),
      ("act_heads", "tensor"),
    )
  )

  # Sampling defaults (sora_jax.sample).
  # frames_cfg_scale: guidance over given frames when editing (1 = off; sampling/sampler.py).
  c.sample = dict(
    steps=50,
    cfg_scale=5.0,
    sampler="heun",  # or "euler", or "stochastic" (with eta; sora_jax/sampling/sampler.py)
    eta=0.25,
    fps=8,
    guidance_interval=(0.0, 1.0),
    frames_cfg_scale=1.0,
    # sample --expand_prompt's expander: a sora_jax.train_expander directory or
    # command:PROGRAM ("": none; pass --expander).
    expander="",
  )
  return c
