"""Config validation: every mistake is named by its field, value and what is allowed,
before anything is compiled or any data is read.

  validate(cfg)                  a diffusion (DiT) config, experiments/base.py's shape
  validate_autoencoder(cfg)      a video autoencoder config, experiments/autoencoder_base.py's
  check_batch_layout(cfg, mesh)  either: the global batch against processes and the mesh

All raise `sora_jax.core.configs.ConfigError`.
"""

from __future__ import annotations

import os

import ml_collections

from data_pipelines import clips, pipeline, shards
from sora_jax.core import sharding
from sora_jax.core.configs import ConfigError
from sora_jax.core.configs import require as _require
from sora_jax.diffusion import conditioning, latent
from sora_jax.models import (
  attention,
  autoencoder,
  context_parallel,
  dit,
  layers,
  lora,
  mup,
  stack,
)
from sora_jax.training import input_pipeline

SECTIONS = ("data", "latent", "model", "flow", "optim", "train", "mesh", "sharding", "sample")
AUTOENCODER_SECTIONS = ("data", "model", "loss", "optim", "train", "mesh", "sharding")


def validate(cfg: ml_collections.ConfigDict, *, for_training: bool = True) -> None:
  """Raises ConfigError on the first invalid field."""
  missing = [s for s in SECTIONS if s not in cfg]
  _require(not missing, f"config is missing section(s) {missing}; start from experiments/base.py")
  m, d, t, o = cfg.model, cfg.data, cfg.train, cfg.optim

  # Adapters and the starting point.
  adapters = None
  if "lora" in cfg:
    rank = int(cfg.lora.get("rank", 0))
    _require(rank >= 0, f"config.lora.rank={rank}: must be >= 0 (0 = no adapters)")
    adapters = lora.LoraConfig.from_config(cfg.lora)
    problems = adapters.validate() if adapters else []
    _require(not problems, problems[0] if problems else "")
    _require(
      adapters is None or bool(cfg.get("init_from")),
      f"config.lora.rank={rank}: adapters train on a base model; set config.init_from=EXPORT_DIR",
    )
  init_from = cfg.get("init_from") or ""
  _require(
    not init_from or os.path.isfile(os.path.join(init_from, "config.json")),
    f"config.init_from={init_from}: not an exported model directory (no config.json); "
    "make one with python -m sora_jax.export",
  )

  # Model.
  for name in ("depth", "width", "heads"):
    _require(int(m[name]) > 0, f"config.model.{name}={m[name]}: must be positive")
  _require(
    m.width % m.heads == 0,
    f"config.model.width={m.width}: must be divisible by config.model.heads={m.heads}",
  )
  head_dim = m.width // m.heads
  _require(
    head_dim % 2 == 0 and head_dim >= 8,
    f"config.model.width/heads = {head_dim}: head dim must be even and >= 8 (3D RoPE)",
  )
  patch = tuple(m.patch)
  _require(
    len(patch) == 3 and all(isinstance(p, int) and p > 0 for p in patch),
    f"config.model.patch={patch}: must be three positive ints (pt, ph, pw)",
  )
  for name in ("dtype", "param_dtype"):
    _require(
      m[name] in dit.DTYPES, f"config.model.{name}={m[name]!r}; allowed: {sorted(dit.DTYPES)}"
    )
  _require(
    m.remat in stack.REMAT_POLICIES,
    f"config.model.remat={m.remat!r}; allowed: {sorted(stack.REMAT_POLICIES)}",
  )
  _require(
    m.adaln in ("single", "block"), f"config.model.adaln={m.adaln!r}; allowed: single, block"
  )
  _require(
    m.get("mlp", "gelu") in layers.MLP_KINDS,
    f"config.model.mlp={m.get('mlp')!r}; allowed: {', '.join(layers.MLP_KINDS)}",
  )
  _require(m.mlp_ratio > 0, f"config.model.mlp_ratio={m.mlp_ratio}: must be positive")
  parametrization = m.get("parametrization", "standard")
  _require(
    parametrization in mup.PARAMETRIZATIONS,
    f"config.model.parametrization={parametrization!r}; allowed: {', '.join(mup.PARAMETRIZATIONS)}",
  )
  base_width = int(m.get("mup_base_width") or 0)
  _require(
    base_width >= 0 and base_width % head_dim == 0,
    f"config.model.mup_base_width={base_width}: must be a multiple of the head dim {head_dim} "
    "(0: the model's own width)",
  )
  _require(
    parametrization != "mup" or adapters is None,
    "config.model.parametrization='mup' with config.lora.rank > 0: adapters fine-tune a "
    "fixed-width model; use parametrization='standard'",
  )
  _require(
    m.context_parallel in context_parallel.SCHEMES,
    f"config.model.context_parallel={m.context_parallel!r}; allowed: {context_parallel.SCHEMES}",
  )
  try:
    if m.attention != "auto":  # "auto" is always valid; resolving it would start jax.
      attention.resolve_backend(m.attention)
  except ValueError as e:
    raise ConfigError(f"config.{e}") from None
  tw, th = m.text.width, m.text.heads
  _require(
    tw > 0 and th > 0 and tw % th == 0 and (tw // th) % 2 == 0,
    f"config.model.text.width={tw}, heads={th}: width must divide into heads of even size",
  )
  _require(
    m.text.depth >= 0,
    f"config.model.text.depth={m.text.depth}: must be >= 0 (0: each caption token its "
    "own embedding, no mixing)",
  )

  # Held-out loss.
  if "heldout" in cfg:
    h = cfg.heldout
    for name in ("rows", "every"):
      _require(int(h[name]) >= 0, f"config.heldout.{name}={h[name]}: must be >= 0")
    _require(int(h.timesteps) >= 1, f"config.heldout.timesteps={h.timesteps}: must be >= 1")

  # Data.
  try:
    opts = pipeline.Options.from_config(d)
    opts.validate()
  except (TypeError, ValueError) as e:
    raise ConfigError(f"config.{e}") from None
  _require(
    d.source in ("array_record", "tfds"),
    f"config.data.source={d.source!r}; allowed: array_record, tfds",
  )
  if for_training:
    _require(bool(d.data_dir), "config.data.data_dir is empty; pass --config.data.data_dir=DIR")
    if d.source == "array_record":
      try:
        manifest = shards.read_manifest(d.data_dir)
      except shards.DatasetError as e:
        raise ConfigError(str(e).replace("--data_dir", "config.data.data_dir")) from None
      _require(
        d.split in manifest["splits"],
        f"config.data.split={d.split!r}: not in {d.data_dir}; available: {sorted(manifest['splits'])}",
      )
      held = cfg.get("heldout")
      _require(
        not held or not int(held.rows) or held.split in manifest["splits"],
        f"config.heldout.split={held.split if held else ''!r}: not in {d.data_dir}; "
        f"available: {sorted(manifest['splits'])}",
      )
      _require(
        bool(manifest.get("tokenizer") or d.tokenizer),
        f"config.data.data_dir={d.data_dir} has no tokenizer (and config.data.tokenizer is "
        "unset); run "
        f"`python -m data_pipelines.tokenizer --data_dir={d.data_dir}`",
      )
    else:
      _require(os.path.isdir(d.data_dir), f"config.data.data_dir={d.data_dir}: no such directory")

  # Latent stage.
  lat = cfg.latent
  _require(
    lat.kind in latent.KINDS,
    f"config.latent.kind={lat.kind!r}; allowed: {', '.join(map(repr, latent.KINDS))}",
  )
  if lat.kind == "pca":
    _require(
      lat.pca_block >= 1 and 1 <= lat.pca_channels <= 3 * lat.pca_block**2,
      f"config.latent.pca_block={lat.pca_block}, pca_channels={lat.pca_channels}: need a "
      f"block >= 1 and 1..{3 * max(lat.pca_block, 1) ** 2} channels",
    )
  if lat.kind == "pca" and for_training:
    _require(
      bool(lat.get("pca")) and os.path.exists(os.path.join(lat.pca, latent.PCA_FILE)),
      f"config.latent.pca={lat.get('pca', '')!r}: no fitted PCA stage there; fit one with "
      "python -m sora_jax.fit_pca --data_dir=DATA --output_dir=DIR",
    )
  if lat.kind == "autoencoder":
    _require(
      bool(lat.autoencoder),
      "config.latent.autoencoder is empty; pass the workdir of a trained autoencoder "
      "(python -m sora_jax.train_autoencoder)",
    )
    if for_training:
      _require(
        os.path.isdir(os.path.join(lat.autoencoder, "checkpoints")),
        f"config.latent.autoencoder={lat.autoencoder}: no checkpoints there",
      )
  if for_training and d.source == "array_record":
    cached = manifest.get("latent")
    if cached:
      _require(
        lat.kind == "autoencoder",
        f"config.data.data_dir={d.data_dir} holds cached latents; set config.latent.kind="
        "'autoencoder' and config.latent.autoencoder to the autoencoder that made them",
      )
      for k, v in cached["data_options"].items():
        _require(
          d[k] == v,
          f"config.data.{k}={d[k]}: the latents in {d.data_dir} were cached with {v}; "
          "use that, or cache again with this config",
        )
      _require(
        tuple(m.patch) == tuple(cached["patch"]),
        f"config.model.patch={tuple(m.patch)}: the latents were cached for {tuple(cached['patch'])}",
      )

  # Flow, optimizer, loop.
  _require(cfg.flow.logit_std > 0, f"config.flow.logit_std={cfg.flow.logit_std}: must be positive")
  _require(
    0 < cfg.flow.shift_min <= cfg.flow.shift_max,
    f"config.flow.shift_min={cfg.flow.shift_min}, shift_max={cfg.flow.shift_max}: need 0 < min <= max",
  )
  _require(
    cfg.flow.prediction in ("velocity", "data", "preconditioned"),
    f"config.flow.prediction={cfg.flow.prediction!r}; allowed: 'velocity', 'data', "
    "'preconditioned'",
  )
  _require(
    cfg.flow.get("sigma_data", 0.5) > 0,
    f"config.flow.sigma_data={cfg.flow.get('sigma_data')}: must be positive",
  )
  _require(0 < cfg.flow.min_t <= 1, f"config.flow.min_t={cfg.flow.min_t}: allowed (0, 1]")
  cond_error = conditioning.validate(cfg.flow.get("conditioning", {}))
  _require(cond_error is None, cond_error)
  _require(o.lr > 0, f"config.optim.lr={o.lr}: must be positive")
  _require(o.warmup_steps >= 0, f"config.optim.warmup_steps={o.warmup_steps}: must be >= 0")
  _require(o.clip_norm > 0, f"config.optim.clip_norm={o.clip_norm}: must be positive")
  _require(0.0 <= o.ema_decay < 1.0, f"config.optim.ema_decay={o.ema_decay}: allowed [0, 1)")
  _require(
    0.0 <= o.min_lr_ratio <= 1.0, f"config.optim.min_lr_ratio={o.min_lr_ratio}: allowed [0, 1]"
  )
  for name in (
    "num_steps",
    "global_batch_size",
    "log_every",
    "checkpoint_every",
    "keep_checkpoints",
  ):
    _require(int(t[name]) > 0, f"config.train.{name}={t[name]}: must be positive")
  _require(t.profile_steps >= 0, f"config.train.profile_steps={t.profile_steps}: must be >= 0")
  _require(
    t.get("time_limit_minutes", 0) >= 0,
    f"config.train.time_limit_minutes={t.get('time_limit_minutes')}: must be >= 0 (0: none)",
  )

  # Parallelism.
  _check_mesh(cfg)


def check_batch_layout(cfg: ml_collections.ConfigDict, mesh, process_count: int) -> None:
  """The global batch must split evenly over processes, batch mesh axes and, for a diffusion
  config (one with config.data.num_shards), its virtual data shards."""
  gb = cfg.train.global_batch_size
  axes = sharding.batch_axes(cfg.sharding.rules)
  shards_ = 1
  for a in axes:
    shards_ *= mesh.shape.get(a, 1)
  _require(
    gb % process_count == 0,
    f"config.train.global_batch_size={gb}: must be divisible by the {process_count} processes",
  )
  _require(
    gb % shards_ == 0,
    f"config.train.global_batch_size={gb}: must be divisible by the batch mesh axes {axes} "
    f"(size {shards_})",
  )
  if "num_shards" in cfg.data:
    try:
      input_pipeline.check_shards(cfg, process_count)
    except ValueError as e:
      raise ConfigError(str(e)) from None


def validate_autoencoder(cfg: ml_collections.ConfigDict, *, for_training: bool = True) -> None:
  """Raises ConfigError naming the first invalid field of an autoencoder config."""
  missing = [s for s in AUTOENCODER_SECTIONS if s not in cfg]
  _require(
    not missing,
    f"config is missing section(s) {missing}; start from experiments/autoencoder_base.py",
  )
  try:
    m = autoencoder.AutoencoderConfig.from_config(cfg.model)
  except (TypeError, ValueError) as e:
    raise ConfigError(f"config.model: {e}") from None
  _require(
    m.base_channels > 0 and m.num_res_blocks >= 0,
    "config.model.base_channels must be positive, num_res_blocks >= 0",
  )
  try:
    clips.ClipOptions.from_config(cfg.data).validate(m.temporal_factor, m.spatial_factor)
  except (TypeError, ValueError) as e:
    raise ConfigError(f"config.{e}") from None
  lo = cfg.loss
  for name in ("l1", "l2", "kl", "adv"):
    _require(lo[name] >= 0, f"config.loss.{name}={lo[name]}: must be >= 0")
  _require(
    lo.adv <= 0 or (lo.disc_channels > 0 and lo.disc_layers > 0 and lo.disc_lr > 0),
    "config.loss.disc_channels, disc_layers and disc_lr must be positive",
  )
  _require(cfg.optim.lr > 0, f"config.optim.lr={cfg.optim.lr}: must be positive")
  _require(
    0.0 <= cfg.optim.ema_decay < 1.0,
    f"config.optim.ema_decay={cfg.optim.ema_decay}: allowed [0, 1)",
  )
  t = cfg.train
  for name in ("num_steps", "global_batch_size", "log_every", "eval_every", "checkpoint_every"):
    _require(int(t[name]) > 0, f"config.train.{name}={t[name]}: must be positive")
  for name in ("eval_batches", "keep_checkpoints", "stats_batches"):
    _require(int(t[name]) >= 1, f"config.train.{name}={t[name]}: must be >= 1")
  _check_mesh(cfg)
  if for_training:
    _require(
      bool(cfg.data.data_dir), "config.data.data_dir is empty; pass --config.data.data_dir=DIR"
    )


def _check_mesh(cfg: ml_collections.ConfigDict) -> None:
  unknown = set(cfg.mesh) - set(sharding.MESH_AXES)
  _require(
    not unknown, f"config.mesh has unknown axes {sorted(unknown)}; allowed: {sharding.MESH_AXES}"
  )
  sizes = [int(v) for v in cfg.mesh.values()]
  _require(
    all(s > 0 or s == -1 for s in sizes) and sizes.count(-1) <= 1,
    f"config.mesh={dict(cfg.mesh)}: sizes must be positive, with at most one -1",
  )
  for rule in cfg.sharding.rules:
    _require(
      len(rule) == 2 and isinstance(rule[0], str),
      f"config.sharding.rules entry {rule!r}: must be (logical_name, mesh_axes)",
    )
    axes = () if rule[1] is None else (rule[1],) if isinstance(rule[1], str) else tuple(rule[1])
    bad = [a for a in axes if a not in sharding.MESH_AXES]
    _require(not bad, f"config.sharding.rules[{rule[0]!r}] names unknown mesh axes {bad}")
