"""The train state and the jitted update step, shared by the training and benchmark binaries.

The state is a plain dict of global arrays, sharded by the config's rules:

  step            int32 scalar
  params          the DiT's parameters (nested dict)
  opt_state       optax state; moments shard like their parameters
  nonfinite_step  the first step whose loss or gradient was not finite, or -1

The EMA of the parameters travels beside it. A step whose loss or gradient is
not finite leaves params, optimizer state and EMA untouched and records its
number, so the host can stop with the last good state intact.

With adapters (config.lora.rank > 0) only the LoRA factors are differentiated
and optimized; the base weights ride along in `params`, frozen.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from data_pipelines import pipeline
from sora_jax.core import flops, sharding
from sora_jax.core.sharded_model import ShardedModel
from sora_jax.diffusion import flow, latent
from sora_jax.models import attention, dit, lora, mup
from sora_jax.training import guard, optim


class Trainer:
  """Model, optimizer, shardings and the compiled step for one config and mesh."""

  def __init__(
    self,
    cfg: ml_collections.ConfigDict,
    mesh: jax.sharding.Mesh,
    vocab_size: int,
    packing: attention.Packing | None = None,
  ):
    """`packing`: how the rows are packed (default: the caps in `cfg.data`)."""
    self.cfg = cfg
    self.mesh = mesh
    self.rules = tuple(cfg.sharding.rules)
    self.dit_cfg = dit.DiTConfig.from_config(
      cfg.model,
      latent.geometry_for(cfg).patch_dim,
      vocab_size,
      packing or dit.packing_of(cfg.data),
      lora_cfg=cfg.get("lora"),
    )
    self.adapters_only = self.dit_cfg.lora is not None
    self.model = ShardedModel(self.dit_cfg, mesh, self.rules, dit.DiT)
    self.counts = flops.param_counts(self.model.abstract_params)
    # muP (config.model.parametrization): per-parameter learning rates and input-layer
    # initialization relative to the same model at config.model.mup_base_width.
    self.init_scales = multipliers = None
    if cfg.model.get("parametrization", "standard") == "mup":
      fans = mup.kernel_fans(dit.DiT, self.dit_cfg)
      base_width = int(cfg.model.get("mup_base_width") or self.dit_cfg.width)
      base = mup.kernel_fans(dit.DiT, mup.base_config(self.dit_cfg, base_width))
      multipliers = mup.lr_multipliers(fans, base)
      self.init_scales = mup.init_scales(fans)
    self.tx, self.lr_schedule = optim.make(cfg.optim, cfg.train.num_steps, multipliers)
    self.flow_cfg = flow.FlowConfig.from_config(cfg.flow)
    self.num_segments = pipeline.Options.from_config(cfg.data).num_segments
    self.ema_decay = float(cfg.optim.ema_decay)
    self.base_key = jax.random.key(cfg.seed)

    with jax.set_mesh(mesh):
      abstract = jax.eval_shape(self._init_state, self.model.abstract_params)
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    self.state_shardings = {
      "step": replicated,
      "params": self.model.param_shardings,
      "opt_state": sharding.like_params(
        abstract["opt_state"], self.model.param_shardings, replicated
      ),
      "nonfinite_step": replicated,
    }
    self.abstract_state = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      abstract,
      self.state_shardings,
    )
    self.batch_shardings = {
      k: sharding.named_sharding(("batch",), self.rules, mesh)
      for k in pipeline.batch_keys(pipeline.Options.from_config(cfg.data))
    }
    self._jitted_step = jax.jit(
      self._step,
      in_shardings=(self.state_shardings, self.model.param_shardings, self.batch_shardings),
      out_shardings=(self.state_shardings, self.model.param_shardings, None),
      donate_argnums=(0, 1),
    )

  # --------------------------------------------------------------------------
  # State.
  # --------------------------------------------------------------------------

  def trainable(self, params):
    """(trained, frozen) parts of the parameters: the adapters and the base, or all and none."""
    return lora.split(params)[::-1] if self.adapters_only else (params, {})

  def join(self, trained, frozen):
    return lora.combine(frozen, trained) if self.adapters_only else trained

  def _init_state(self, params):
    return {
      "step": jnp.zeros((), jnp.int32),
      "params": params,
      "opt_state": self.tx.init(self.trainable(params)[0]),
      "nonfinite_step": jnp.full((), -1, jnp.int32),
    }

  def init(self, seed: int, base: Any = None) -> tuple[dict[str, Any], Any]:
    """A fresh (state, ema), created directly in their shards; `base` (a parameter tree
    without adapters, e.g. from an export) replaces the initialized base weights."""
    params = self.model.init(seed)
    if self.init_scales is not None:
      with jax.set_mesh(self.mesh):
        params = jax.jit(
          lambda p: mup.scale_tree(p, self.init_scales), out_shardings=self.model.param_shardings
        )(params)
    if base is not None:
      params = lora.combine(base, lora.split(params)[1])
    with jax.set_mesh(self.mesh):
      state = jax.jit(self._init_state, out_shardings=self.state_shardings)(params)
    return state, jax.tree.map(jnp.copy, params)

  # --------------------------------------------------------------------------
  # The update step.
  # --------------------------------------------------------------------------

  def _step(self, state, ema, batch):
    step = state["step"] + 1
    rng = jax.random.fold_in(self.base_key, step)

    trained, frozen = self.trainable(state["params"])

    def loss_of(trained):
      net = self.model.merge(self.join(trained, frozen))
      return flow.loss_fn(net, batch, rng, self.flow_cfg, self.num_segments)

    (loss, aux), grads = jax.value_and_grad(loss_of, has_aux=True)(trained)
    grad_norm = optax.tree.norm(grads)
    updates, opt_state = self.tx.update(grads, state["opt_state"], trained)
    params = self.join(optax.apply_updates(trained, updates), frozen)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

    new_state = guard.guarded(state, step, finite, params=params, opt_state=opt_state)
    new_ema = guard.keep_if(finite, optim.ema_update(ema, params, step, self.ema_decay), ema)
    metrics = {
      "loss": loss,
      "grad_norm": grad_norm,
      "param_norm": optax.tree.norm(state["params"]),
      "update_norm": optax.tree.norm(updates),
      "lr": self.lr_schedule(state["step"]),
      "examples": aux["num_examples"],
    }
    if "conditioned_examples" in aux:  # Examples given clean frames (config.flow.conditioning).
      metrics["conditioned_examples"] = aux["conditioned_examples"]
    return new_state, new_ema, metrics

  def step(self, state, ema, batch):
    """One update: (state, ema, global batch) -> (state, ema, metrics). Donates state and ema."""
    with jax.set_mesh(self.mesh), sharding.axis_rules(self.rules):
      return self._jitted_step(state, ema, batch)

  def trace(self, batch_spec):
    """The step traced for the abstract state and a batch of ShapeDtypeStructs (`.jaxpr`).

    Traced under the abstract mesh only: the devices may be compile-only (an
    ahead-of-time target), on which nothing can run, not even a constant
    computed at trace time (e.g. a kernel's block-mask tables).
    """
    abstract_mesh = jax.sharding.use_abstract_mesh(self.mesh.abstract_mesh)
    with abstract_mesh, sharding.axis_rules(self.rules):
      return self._jitted_step.trace(self.abstract_state, self.model.abstract_params, batch_spec)

  def lower(self, batch_spec):
    """The step lowered for a batch of the given ShapeDtypeStructs (ahead-of-time compile)."""
    with jax.set_mesh(self.mesh), sharding.axis_rules(self.rules):
      return self.trace(batch_spec).lower()

  def step_flops(self, local_batch) -> float:
    """Useful training FLOPs of this process's rows (see sora_jax.core.flops)."""
    return flops.step_flops(local_batch, self.counts, self.dit_cfg)
