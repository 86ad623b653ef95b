"""The video autoencoder's train state, update step and evaluation.

The state is a plain dict of global arrays, sharded by the config's rules, like
the diffusion trainer's (sora_jax.training.trainer):

  step            int32 scalar
  params          the autoencoder's parameters
  opt_state       optax state; moments shard like their parameters
  disc_params     the 3D patch discriminator's (only when loss.adv > 0)
  disc_opt_state
  nonfinite_step  the first step whose loss or gradient was not finite, or -1

The loss is l1 * |x - x_hat| + l2 * (x - x_hat)^2 + kl * KL(q(z|x) || N(0, I)), plus, from step
loss.adv_start on, adv * (-D(x_hat)) with the discriminator trained by the
hinge loss in the same step. Clip batches come one bucket (shape) at a time,
so the step compiles once per bucket. The config is checked by
`sora_jax.training.validation.validate_autoencoder`; the latent statistics written at
the end of training are `sora_jax.diffusion.latent.LatentStats`.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from sora_jax.core import flops, image_metrics, sharding
from sora_jax.core.sharded_model import ShardedModel
from sora_jax.models import autoencoder, discriminator
from sora_jax.training import guard, optim


class AutoencoderTrainer:
  """Model, discriminator, optimizers, shardings and the compiled steps for one config."""

  def __init__(self, cfg: ml_collections.ConfigDict, mesh: jax.sharding.Mesh):
    self.cfg = cfg
    self.mesh = mesh
    self.rules = tuple(cfg.sharding.rules)
    self.ae_cfg = autoencoder.AutoencoderConfig.from_config(cfg.model)
    self.model = ShardedModel(self.ae_cfg, mesh, self.rules, autoencoder.VideoAutoencoder)
    self.loss = dict(cfg.loss)
    self.use_adv = float(cfg.loss.adv) > 0
    if self.use_adv:
      d_cfg = discriminator.DiscriminatorConfig(cfg.loss.disc_channels, cfg.loss.disc_layers)
      self.disc = ShardedModel(d_cfg, mesh, self.rules, discriminator.Discriminator)
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
