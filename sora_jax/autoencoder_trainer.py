"""The video autoencoder's train state, update step, evaluation and latent statistics.

The state is a plain dict of global arrays, sharded by the config's rules, like
the diffusion trainer's (sora_jax.trainer):

  step            int32 scalar
  params          the autoencoder's parameters
  opt_state       optax state; moments shard like their parameters
  disc_params     the 3D patch discriminator's (only when loss.adv > 0)
  disc_opt_state
  nonfinite_step  the first step whose loss or gradient was not finite, or -1

The loss is l1 * |x - x_hat| + l2 * (x - x_hat)^2 + kl * KL(q(z|x) || N(0, I)), plus, from step
loss.adv_start on, adv * (-D(x_hat)) with the discriminator trained by the
hinge loss in the same step. Clip batches come one bucket (shape) at a time,
so the step compiles once per bucket.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from data_pipelines import clips
from sora_jax import factory, flops, guard, image_metrics, optim, sharding
from sora_jax.models import autoencoder, discriminator

SECTIONS = ("data", "model", "loss", "optim", "train", "mesh", "sharding")
STATS_FILE = "latent_stats.json"


class ConfigError(ValueError):
  """The autoencoder config is invalid; the message names the field."""


def model_config(cfg: ml_collections.ConfigDict) -> autoencoder.AutoencoderConfig:
  m = cfg.model.to_dict() if hasattr(cfg.model, "to_dict") else dict(cfg.model)
  m["channel_mults"] = tuple(m["channel_mults"])
  m["temporal_down"] = tuple(bool(t) for t in m["temporal_down"])
  # Every config from experiments/autoencoder_base.py names `shortcuts`; a saved config
  # without it predates them, and its checkpoint is a network without shortcuts.
  m.setdefault("shortcuts", False)
  return autoencoder.AutoencoderConfig(**m)


def validate(cfg: ml_collections.ConfigDict, *, for_training: bool = True) -> None:
  """Raises ConfigError naming the first invalid field."""
  missing = [s for s in SECTIONS if s not in cfg]
  if missing:
    raise ConfigError(
      f"config is missing section(s) {missing}; start from experiments/autoencoder_base.py"
    )
  try:
    m = model_config(cfg)
  except (TypeError, ValueError) as e:
    raise ConfigError(f"config.model: {e}") from None
  if m.base_channels <= 0 or m.num_res_blocks < 0:
    raise ConfigError("config.model.base_channels must be positive, num_res_blocks >= 0")
  try:
    clips.ClipOptions.from_config(cfg.data).validate(m.temporal_factor, m.spatial_factor)
  except (TypeError, ValueError) as e:
    raise ConfigError(f"config.{e}") from None
  lo = cfg.loss
  for name in ("l1", "l2", "kl", "adv"):
    if lo[name] < 0:
      raise ConfigError(f"config.loss.{name}={lo[name]}: must be >= 0")
  if lo.adv > 0 and (lo.disc_channels <= 0 or lo.disc_layers <= 0 or lo.disc_lr <= 0):
    raise ConfigError("config.loss.disc_channels, disc_layers and disc_lr must be positive")
  if cfg.optim.lr <= 0:
    raise ConfigError(f"config.optim.lr={cfg.optim.lr}: must be positive")
  if not 0.0 <= cfg.optim.ema_decay < 1.0:
    raise ConfigError(f"config.optim.ema_decay={cfg.optim.ema_decay}: allowed [0, 1)")
  t = cfg.train
  for name in ("num_steps", "global_batch_size", "log_every", "eval_every", "checkpoint_every"):
    if int(t[name]) <= 0:
      raise ConfigError(f"config.train.{name}={t[name]}: must be positive")
  for name in ("eval_batches", "keep_checkpoints", "stats_batches"):
    if int(t[name]) < 1:
      raise ConfigError(f"config.train.{name}={t[name]}: must be >= 1")
  unknown = set(cfg.mesh) - set(sharding.MESH_AXES)
  if unknown:
    raise ConfigError(f"config.mesh has unknown axes {sorted(unknown)}")
  if for_training and not cfg.data.data_dir:
    raise ConfigError("config.data.data_dir is empty; pass --config.data.data_dir=DIR")


def check_batch_layout(cfg, mesh, process_count: int) -> None:
  gb = int(cfg.train.global_batch_size)
  n = 1
  for a in sharding.batch_axes(cfg.sharding.rules):
    n *= mesh.shape.get(a, 1)
  if gb % process_count or gb % n:
    raise ConfigError(
      f"config.train.global_batch_size={gb}: must be divisible by the {process_count} "
      f"processes and by the batch mesh axes (size {n})"
    )


def _build_autoencoder(c, rngs):
  return autoencoder.VideoAutoencoder(c, rngs=rngs)


def _build_discriminator(c, rngs):
  return discriminator.Discriminator(c, rngs=rngs)


class AutoencoderTrainer:
  """Model, discriminator, optimizers, shardings and the compiled steps for one config."""

  def __init__(self, cfg: ml_collections.ConfigDict, mesh: jax.sharding.Mesh):
    self.cfg = cfg
    self.mesh = mesh
    self.rules = tuple(cfg.sharding.rules)
    self.ae_cfg = model_config(cfg)
    self.model = factory.Model(self.ae_cfg, mesh, self.rules, build=_build_autoencoder)
    self.loss = dict(cfg.loss)
    self.use_adv = float(cfg.loss.adv) > 0
    if self.use_adv:
      d_cfg = discriminator.DiscriminatorConfig(cfg.loss.disc_channels, cfg.loss.disc_layers)
      self.disc = factory.Model(d_cfg, mesh, self.rules, build=_build_discriminator)
      self.disc_tx = optax.adam(float(cfg.loss.disc_lr), b1=0.5, b2=0.9)
    self.num_params = flops.param_counts(self.model.abstract_params)["total"]
    self.tx, self.lr_schedule = optim.make(cfg.optim, cfg.train.num_steps)
    self.ema_decay = float(cfg.optim.ema_decay)
    self.base_key = jax.random.key(cfg.seed)

    with jax.set_mesh(mesh):
      abstract = jax.eval_shape(self._init_state, *self._abstract_params())
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    self.state_shardings = {
      "step": replicated,
      "params": self.model.param_shardings,
      "opt_state": sharding.like_params(
        abstract["opt_state"], self.model.param_shardings, replicated
      ),
      "nonfinite_step": replicated,
    }
    if self.use_adv:
      self.state_shardings["disc_params"] = self.disc.param_shardings
      self.state_shardings["disc_opt_state"] = sharding.like_params(
        abstract["disc_opt_state"], self.disc.param_shardings, replicated
      )
    self.abstract_state = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      abstract,
      self.state_shardings,
    )
    self.batch_sharding = sharding.named_sharding(("batch",), self.rules, mesh)
    self._steps = {
      adv: jax.jit(
        lambda s, e, v, adv=adv: self._step(s, e, v, adv),
        in_shardings=(self.state_shardings, self.model.param_shardings, self.batch_sharding),
        out_shardings=(self.state_shardings, self.model.param_shardings, None),
        donate_argnums=(0, 1),
      )
      for adv in ((False, True) if self.use_adv else (False,))
    }
    # Evaluation outputs are small and read on the host: replicate them (multi-host safe).
    self._eval = jax.jit(self._eval_step, out_shardings=replicated)
    self._moments = jax.jit(self._encode, out_shardings=replicated)

  def _abstract_params(self):
    out = [self.model.abstract_params]
    if self.use_adv:
      out.append(self.disc.abstract_params)
    return out

  # --------------------------------------------------------------------------
  # State.
  # --------------------------------------------------------------------------

  def _init_state(self, params, disc_params=None):
    state = {
      "step": jnp.zeros((), jnp.int32),
      "params": params,
      "opt_state": self.tx.init(params),
      "nonfinite_step": jnp.full((), -1, jnp.int32),
    }
    if disc_params is not None:
      state["disc_params"] = disc_params
      state["disc_opt_state"] = self.disc_tx.init(disc_params)
    return state

  def init(self, seed: int) -> tuple[dict[str, Any], Any]:
    """A fresh (state, ema), created directly in their shards."""
    params = [self.model.init(seed)]
    if self.use_adv:
      params.append(self.disc.init(seed + 1))
    with jax.set_mesh(self.mesh):
      state = jax.jit(self._init_state, out_shardings=self.state_shardings)(*params)
    return state, jax.tree.map(jnp.copy, params[0])

  # --------------------------------------------------------------------------
  # The update step.
  # --------------------------------------------------------------------------

  def _step(self, state, ema, video, adv: bool):
    step = state["step"] + 1
    rng = jax.random.fold_in(self.base_key, step)
    w = self.loss

    def loss_of(params):
      recon, mean, logvar = self.model.merge(params)(video, rng)
      l1 = jnp.mean(jnp.abs(recon - video))
      l2 = jnp.mean(jnp.square(recon - video))
      kl = autoencoder.kl_loss(mean, logvar)
      total = w["l1"] * l1 + w["l2"] * l2 + w["kl"] * kl
      g = jnp.zeros((), jnp.float32)
      if adv:
        g = discriminator.generator_loss(self.disc.merge(state["disc_params"])(recon))
        total = total + w["adv"] * g
      return total, {"l1": l1, "l2": l2, "kl": kl, "gen_loss": g, "recon": recon}

    (loss, aux), grads = jax.value_and_grad(loss_of, has_aux=True)(state["params"])
    grad_norm = optax.tree.norm(grads)
    updates, opt_state = self.tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

    new_state = guard.guarded(state, step, finite, params=params, opt_state=opt_state)
    recon = jax.lax.stop_gradient(aux.pop("recon"))
    metrics = {
      "loss": loss,
      **aux,
      "psnr": jnp.mean(image_metrics.psnr(recon, video)),
      "grad_norm": grad_norm,
      "lr": self.lr_schedule(state["step"]),
    }
    if self.use_adv:
      d_loss = jnp.zeros((), jnp.float32)
      disc_params, disc_opt = state["disc_params"], state["disc_opt_state"]
      if adv:

        def d_loss_of(p):
          net = self.disc.merge(p)
          return discriminator.hinge_d_loss(net(video), net(recon))

        d_loss, d_grads = jax.value_and_grad(d_loss_of)(disc_params)
        d_updates, disc_opt = self.disc_tx.update(d_grads, disc_opt, disc_params)
        disc_params = optax.apply_updates(disc_params, d_updates)
      new_state["disc_params"] = guard.keep_if(finite, disc_params, state["disc_params"])
      new_state["disc_opt_state"] = guard.keep_if(finite, disc_opt, state["disc_opt_state"])
      metrics["disc_loss"] = d_loss
    new_ema = guard.keep_if(finite, optim.ema_update(ema, params, step, self.ema_decay), ema)
    return new_state, new_ema, metrics

  def step(self, state, ema, video):
    """One update on a global video batch; the adversarial term from loss.adv_start on."""
    adv = self.use_adv and int(jax.device_get(state["step"])) + 1 >= int(self.loss["adv_start"])
    with jax.set_mesh(self.mesh), sharding.axis_rules(self.rules):
      return self._steps[adv](state, ema, video)

  # --------------------------------------------------------------------------
  # Evaluation and statistics (EMA parameters).
  # --------------------------------------------------------------------------

  def _eval_step(self, params, video):
    net = self.model.merge(params)
    mean, _ = net.encode(video)
    recon = jnp.clip(net.decode(mean), -1.0, 1.0)
    return recon, image_metrics.psnr(recon, video), image_metrics.ssim(recon, video)

  def evaluate(self, params, video) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(reconstruction from the posterior mean, PSNR [B], SSIM [B]) of a global batch."""
    with jax.set_mesh(self.mesh), sharding.axis_rules(self.rules):
      return jax.device_get(self._eval(params, video))

  def _encode(self, params, video):
    return self.model.merge(params).encode(video)

  def encode(self, params, video) -> tuple[np.ndarray, np.ndarray]:
    """Posterior (mean, logvar) of a global batch, on the host of every process."""
    with jax.set_mesh(self.mesh), sharding.axis_rules(self.rules):
      return jax.device_get(self._moments(params, video))


class LatentStats:
  """Running per-channel mean and variance of latent samples (Chan et al.'s parallel update)."""

  def __init__(self, channels: int):
    self.n = 0
    self.mean = np.zeros(channels, np.float64)
    self.m2 = np.zeros(channels, np.float64)

  def merge(self, n: int, mean: np.ndarray, m2: np.ndarray) -> None:
    """Adds another accumulator's (count, mean, sum of squared deviations)."""
    total = self.n + n
    if total == 0:
      return
    delta = np.asarray(mean, np.float64) - self.mean
    self.mean = self.mean + delta * n / total
    self.m2 = self.m2 + np.asarray(m2, np.float64) + delta**2 * self.n * n / total
    self.n = total

  def add(self, z: np.ndarray) -> None:
    """Adds latents `[..., C]`."""
    x = np.asarray(z, np.float64).reshape(-1, self.mean.size)
    mean = x.mean(0)
    self.merge(x.shape[0], mean, ((x - mean) ** 2).sum(0))

  def add_moments(self, mean: np.ndarray, logvar: np.ndarray) -> None:
    """Adds the posterior q(z|x) = N(mean, exp(logvar)): its mean plus its spread."""
    self.add(mean)
    # Var[z] = Var[mean] + E[exp(logvar)]; the second term enters as extra spread.
    extra = np.exp(np.asarray(logvar, np.float64)).reshape(-1, self.mean.size).mean(0)
    n = np.asarray(mean).reshape(-1, self.mean.size).shape[0]
    self.m2 = self.m2 + extra * n

  def to_json(self) -> dict[str, Any]:
    std = np.sqrt(self.m2 / max(self.n, 1))
    return {
      "shift": [float(v) for v in self.mean],
      "scale": [float(1.0 / max(s, 1e-6)) for s in std],
      "count": int(self.n),
    }


def write_stats(path: str, stats: Mapping[str, Any], **extra: Any) -> None:
  from data_pipelines import shards

  shards.atomic_write_json(path, {**stats, **extra})


def read_stats(path: str) -> dict[str, Any]:
  with open(path) as f:
    d = json.load(f)
  if "shift" not in d or "scale" not in d:
    raise ValueError(f"{path}: not a latent statistics file (needs 'shift' and 'scale')")
  return d
