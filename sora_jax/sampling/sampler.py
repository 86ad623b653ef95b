"""Sampling: requests of any size are packed into rows exactly as training packs, then denoised together.

Each request (prompt, frames, height, width, seed) becomes one segment of
Gaussian noise drawn from its own seed, so its result does not depend on what
else shares its row. Every segment follows its own shifted time grid (see
`sora_jax.diffusion.flow`). Classifier-free guidance runs the conditional rows and their
unconditional twins (the same noise with an empty caption) in one batched
forward pass: v = v_uncond + g * (v_cond - v_uncond).

Editing (sora_jax/sampling/plans.py) gives some frames as context: each token
has a keep value and a given value, and follows the noise level
`conditioning.token_times(t, keep)` (the function training uses): kept tokens
(keep = 1) stay at their given values, free ones (keep = 0) start from noise, and
those in between start from their given value noised to 1 - keep and move once
the schedule passes it. A request without context is plain text-to-video.

Solvers: "euler" and "heun" integrate the ODE. "stochastic" takes Euler-cost steps
that keep the step's clean estimate x0_hat and its noise estimate eps_hat but
replace a share eta^2 of the noise's variance with fresh noise (DDIM's eta for the
straight path):

  x_next = (1 - t_next) x0_hat + t_next (sqrt(1 - eta^2) eps_hat + eta z).

eta = 0 is Euler. The fresh noise z of step k is drawn from (the request's seed,
k), so a request's result still depends only on its own seed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import grain
import jax
import jax.numpy as jnp
import numpy as np

from data_pipelines import patchify, pipeline, sizing
from data_pipelines.tokenizer import EOS_ID, Tokenizer
from sora_jax.core import cli, sharding
from sora_jax.core.sharded_model import ShardedModel
from sora_jax.diffusion import conditioning, flow, latent
from sora_jax.sampling import plans

SAMPLERS = ("euler", "heun", "stochastic")
ETA = 0.25  # The stochastic solver's share of fresh noise, unless a config says (sample.eta).
# What the sampler reads from packed rows ("tokens": the noise it starts from; "keep" and
# "given": each token's keep value and given value, see sora_jax/diffusion/conditioning.py).
ROW_KEYS = ("tokens", "coords", "segment_ids", "text_ids", "text_segment_ids", "keep", "given")


@dataclasses.dataclass(frozen=True)
class Request:
  prompt: str
  num_frames: int
  height: int
  width: int
  seed: int = 0
  # Frames given as context (sora_jax.sampling.plans); empty: text-to-video.
  context: tuple[plans.Given, ...] = dataclasses.field(default=(), compare=False)
  # Without context: the output ends where it starts (a second pass holds the first
  # frame of the first at both ends).
  loop: bool = False
  # Storyboards: (text, start, end) captions restricted to output-frame windows; frames in
  # no window see the first. Empty: `prompt` sees every frame.
  prompts: tuple[tuple[str, int, int], ...] = ()


RequestError = plans.RequestError  # A request the model cannot serve; names the field.


def check_request(req: Request, geom: sizing.Geometry, opts: pipeline.Options) -> None:
  error = geom.size_error(req.num_frames, req.height, req.width)
  if error:
    raise RequestError(error)
  if req.prompts:
    plans.check_windows(req.prompts, req.num_frames)
  n = geom.num_tokens(req.num_frames, req.height, req.width)
  if n > opts.seq_len:
    raise RequestError(
      f"{req.num_frames}x{req.height}x{req.width} is {n} tokens; the model's rows hold "
      f"{opts.seq_len} (config.data.seq_len). Ask for fewer frames or a smaller size."
    )


def pack_requests(
  requests: Sequence[Request],
  geom: sizing.Geometry,
  tokenizer: Tokenizer,
  opts: pipeline.Options,
  stage: latent.LatentStage | None = None,
) -> dict[str, np.ndarray]:
  """Rows `[R, ...]` of packed noise with the batch keys, each token's `keep` and `given`
  values (`stage` encodes given frames), and `request` (index + 1, 0 = padding)."""
  examples = []
  for i, req in enumerate(requests):
    check_request(req, geom, opts)
    grid = geom.grid(req.num_frames, req.height, req.width)
    n = int(np.prod(grid))
    noise = np.random.default_rng(req.seed).standard_normal((n, geom.patch_dim), np.float32)
    if req.context and stage is None:
      raise RequestError("a request with given frames needs the latent stage to encode them")
    keep, given = plans.token_context(req, geom, stage)
    windows = plans.caption_windows(req, geom) or [(req.prompt, 0, ALL_FRAMES)]
    ids = [np.asarray(tokenizer.ids(text, opts.max_text_len), np.int32) for text, _, _ in windows]
    frames = [np.tile([[s, e]], (len(x), 1)).astype(np.int32) for x, (_, s, e) in zip(ids, windows)]
    if sum(map(len, ids)) > opts.text_len:
      raise RequestError(
        f"the storyboard's prompts take {sum(map(len, ids))} caption tokens; a row holds "
        f"{opts.text_len}"
      )
    examples.append(
      {
        "tokens": noise,
        "coords": patchify.coordinates(grid),
        "request": np.full((n,), i + 1, np.int32),
        "seed": np.full((n,), req.seed, np.int64),
        "keep": keep,
        "given": given,
        "text_ids": np.concatenate(ids),
        "text_frames": np.concatenate(frames),
      }
    )
  windowed = any(len(e["text_ids"]) and e["text_frames"][:, 1].min() < ALL_FRAMES for e in examples)
  if not windowed:
    for e in examples:
      del e["text_frames"]
  ds = grain.MapDataset.source(examples).to_iter_dataset()
  rows = list(
    pipeline.pack(
      ds,
      opts,
      seed=0,
      shuffle_bins=False,
      extra_token_keys=("request", "seed", "keep", "given"),
      extra_text_keys=("text_frames",) if windowed else (),
    )
  )
  return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def unconditional_text(segment_ids: np.ndarray, text_len: int) -> tuple[np.ndarray, np.ndarray]:
  """Empty captions (a lone eos) for every segment of each row."""
  r = segment_ids.shape[0]
  ids = np.zeros((r, text_len), np.int32)
  seg = np.zeros((r, text_len), np.int32)
  for i in range(r):
    for s in range(1, int(segment_ids[i].max()) + 1):
      ids[i, s - 1], seg[i, s - 1] = EOS_ID, s
  return ids, seg


MIN_T = 1e-6  # Below every noise level of the schedule but 0 (kept tokens).
ALL_FRAMES = sizing.ALL_FRAMES  # A caption window's end that no frame reaches.


def all_frames(shape: tuple[int, ...]) -> np.ndarray:
  """Caption windows `[R, Lt, 2]` open to every frame."""
  out = np.zeros(shape, np.int32)
  out[..., 1] = ALL_FRAMES
  return out


class Sampler:
  """Integrates the velocity field from noise (t = 1) to data (t = 0) for packed rows."""

  def __init__(
    self,
    model: ShardedModel,
    params,
    flow_cfg: flow.FlowConfig,
    num_segments: int,
    *,
    batch_guidance: bool = True,
  ):
    """`batch_guidance`: the conditional and unconditional passes run as one batched call
    (the default); False runs them one after the other (for measuring the difference)."""
    self.model = model
    self.params = params
    self.flow_cfg = flow_cfg
    self.num_segments = num_segments
    self.batch_guidance = batch_guidance
    self._step = jax.jit(self._step_impl, static_argnames=("method", "guided", "frames_guided"))

  def _run(self, net, rows, passes):
    """Velocities of several (x, t, text_ids, text_segment_ids, text_frames) passes over
    the same rows: one batched call (`batch_guidance`), or one call each."""
    coords, seg = rows["coords"], rows["segment_ids"]
    # Kept tokens sit at t = 0, where an x0-predicting network's velocity (x - x0) / t
    # divides by zero; MIN_T keeps it finite (its step is dt = 0), and a NaN there would
    # otherwise reach every token of the row through attention's masked products.
    velocity = lambda out, x, t: flow.velocity(out, x, t, self.flow_cfg, min_t=MIN_T)
    if not self.batch_guidance or len(passes) == 1:
      return [
        velocity(net(x, coords, seg, t, ids, tseg, tf), x, t) for x, t, ids, tseg, tf in passes
      ]
    n = len(passes)
    cat = lambda i: None if passes[0][i] is None else jnp.concatenate([p[i] for p in passes])
    x, t = cat(0), cat(1)
    rep = lambda a: jnp.concatenate([a] * n)
    out = net(x, rep(coords), rep(seg), t, cat(2), cat(3), cat(4))
    return jnp.split(velocity(out, x, t), n, axis=0)

  def _velocity(self, params, x, t, t_free, rows, cfg_scale, frames_scale, guided, frames_guided):
    """The guided velocity. Text guidance: v_u + g (v_c - v_u), the unconditional pass with
    empty captions. With guidance over given frames too (`frames_guided`), a third pass
    has neither: the given tokens join as free ones, their given values noised to the
    example's level `t_free` like everything else, and
    v = v_none + g_frames (v_frames - v_none) + g_text (v_text_and_frames - v_frames)."""
    net = self.model.merge(params)
    passes = [(x, t, rows["text_ids"], rows["text_segment_ids"], rows.get("text_frames"))]
    uncond = (rows.get("uncond_text_ids"), rows.get("uncond_text_segment_ids"))
    uncond += (rows.get("uncond_text_frames"),)
    if guided or frames_guided:
      passes.append((x, t, *uncond))
    if frames_guided:
      given = rows["keep"] > 0
      noised = flow.noised(rows["given"], rows["noise"], t_free, rows["segment_ids"])
      passes.append((jnp.where(given[..., None], noised, x), jnp.where(given, t_free, t), *uncond))
    vs = self._run(net, rows, passes)
    if len(vs) == 1:
      return vs[0]
    g_text = cfg_scale if guided else 1.0
    if len(vs) == 2:
      return vs[1] + g_text * (vs[0] - vs[1])
    v_all, v_frames, v_none = vs
    return v_none + frames_scale * (v_frames - v_none) + g_text * (v_all - v_frames)

  def _schedule(self, rows, t):
    """Each example's noise level at schedule time t, on its tokens `[R, L]` (shifted)."""
    seg = rows["segment_ids"]
    shift = flow.per_token(
      flow.shift_for(flow.segment_counts(seg, self.num_segments), self.flow_cfg), seg
    )
    return flow.shifted(jnp.full(seg.shape, t), shift)

  def _times(self, rows, t):
    """Each token's noise level `[R, L]` at schedule time t (shifted per example, keep applied)."""
    return conditioning.token_times(self._schedule(rows, t), rows["keep"])

  def _start(self, noise, rows):
    """The tokens at t = 1: noise, and given values noised to their joining level."""
    x = flow.noised(rows["given"], noise, self._times(rows, 1.0), rows["segment_ids"])
    return x

  def _finish(self, x, rows):
    """Kept tokens replaced by their given values (exact, whatever the arithmetic did)."""
    return jnp.where((rows["keep"] >= 1.0)[..., None], rows["given"], x)

  def _step_impl(
    self,
    params,
    x,
    rows,
    t_cur,
    t_next,
    cfg_scale,
    frames_scale,
    fresh,
    eta,
    *,
    method,
    guided,
    frames_guided,
  ):
    seg = rows["segment_ids"]
    tc, tn = self._times(rows, t_cur), self._times(rows, t_next)
    fc, fn = self._schedule(rows, t_cur), self._schedule(rows, t_next)
    real = (seg > 0)[..., None]
    dt = (tn - tc)[..., None]
    kw = dict(guided=guided, frames_guided=frames_guided)
    v = self._velocity(params, x, tc, fc, rows, cfg_scale, frames_scale, **kw)
    if method == "stochastic":
      tc, tn = tc[..., None], tn[..., None]
      x0, eps = x - tc * v, x + (1.0 - tc) * v  # x_t = (1 - t) x0 + t eps, v = eps - x0.
      eta = jnp.where(tn < tc, eta, 0.0)  # Tokens that do not move (kept ones) stay put.
      x_next = (1.0 - tn) * x0 + tn * (jnp.sqrt(1.0 - eta**2) * eps + eta * fresh)
      return jnp.where(real, x_next, 0.0)
    x_euler = x + dt * v
    if method == "heun":
      v2 = self._velocity(params, x_euler, tn, fn, rows, cfg_scale, frames_scale, **kw)
      x_heun = x + dt * 0.5 * (v + v2)
      x_euler = jnp.where(t_next > 0, x_heun, x_euler)  # The last step is Euler.
    return jnp.where(real, x_euler, 0.0)

  def __call__(
    self,
    rows: dict[str, np.ndarray],
    *,
    steps: int,
    cfg_scale: float,
    method: str = "heun",
    guidance_interval: tuple[float, float] = (0.0, 1.0),
    frames_scale: float = 1.0,
    eta: float = ETA,
    progress: bool = True,
    put: Callable[[dict], dict] | None = None,
  ) -> np.ndarray:
    """Denoised tokens `[R, L, patch_dim]` of packed `rows` (from `pack_requests`).

    Guidance applies only to steps starting at a time t in `guidance_interval`
    (Kynkaanniemi et al. 2024): at the highest noise levels it pushes every
    position towards the prompt's average look instead of one coherent layout.
    `frames_scale` != 1 also guides over the given frames, at every step, in the same
    batched call (see `_velocity`); rows with no given frames skip it. `eta` is the
    "stochastic" solver's share of fresh noise (module docstring).
    """
    lo, hi = guidance_interval
    if not 0.0 <= lo <= hi <= 1.0:
      raise RequestError(f"guidance_interval={guidance_interval}; need 0 <= lo <= hi <= 1")
    if method not in SAMPLERS:
      raise RequestError(f"--sampler={method!r}; allowed: {SAMPLERS}")
    if steps < 1:
      raise RequestError(f"--steps={steps}; must be at least 1")
    if method == "stochastic" and not 0.0 <= eta <= 1.0:
      raise RequestError(f"eta={eta}; the stochastic solver needs 0 <= eta <= 1")
    if method == "stochastic" and "seed" not in rows:
      raise RequestError("the stochastic solver draws from each request's seed: pack_requests rows")
    guided = cfg_scale != 1.0
    rows = dict(rows)  # Rows without context (e.g. training batches): every token free.
    rows.setdefault("keep", np.zeros(rows["segment_ids"].shape, np.float32))
    rows.setdefault("given", np.zeros(rows["tokens"].shape, np.float32))
    frames_guided = frames_scale != 1.0 and bool(np.any(rows["keep"] > 0))
    device_rows = {k: rows[k] for k in ROW_KEYS if k != "tokens"}
    if "text_frames" in rows:  # Caption windows (storyboards).
      device_rows["text_frames"] = rows["text_frames"]
    if guided or frames_guided:
      uids, useg = unconditional_text(rows["segment_ids"], rows["text_ids"].shape[1])
      device_rows.update(uncond_text_ids=uids, uncond_text_segment_ids=useg)
      if "text_frames" in rows:
        device_rows["uncond_text_frames"] = all_frames(rows["text_frames"].shape)
    if frames_guided:
      device_rows["noise"] = rows["tokens"]
    device_rows["tokens"] = rows["tokens"]
    device_rows = put(device_rows) if put else jax.tree.map(jnp.asarray, device_rows)
    x = jax.jit(self._start)(device_rows.pop("tokens"), device_rows)
    grid = np.linspace(1.0, 0.0, steps + 1)
    bar = cli.progress(steps, desc=f"sampling {len(rows['tokens'])} row(s)") if progress else None
    for i in range(steps):
      fresh = np.zeros((), np.float32)  # The stochastic solver's fresh noise, or nothing.
      if method == "stochastic":
        fresh = step_noise(rows, i + 1)
        fresh = put({"fresh": fresh})["fresh"] if put else jnp.asarray(fresh)
      x = self._step(
        self.params,
        x,
        device_rows,
        jnp.float32(grid[i]),
        jnp.float32(grid[i + 1]),
        jnp.float32(cfg_scale),
        jnp.float32(frames_scale),
        fresh,
        jnp.float32(eta),
        method=method,
        guided=guided and lo <= grid[i] <= hi,
        frames_guided=frames_guided,
      )
      if bar is not None:
        bar.update()
    x = np.asarray(jax.device_get(jax.jit(self._finish)(x, device_rows)))
    if bar is not None:
      bar.close()
    return x


def step_noise(rows: dict[str, np.ndarray], step: int) -> np.ndarray:
  """Fresh noise `[R, L, D]` for the stochastic solver's step `step` (>= 1): each
  request's from its own (seed, step), laid out like its tokens; 0 on padding."""
  tokens = rows["tokens"]
  out = np.zeros(tokens.shape, np.float32)
  for i in np.unique(rows["request"][rows["request"] > 0]):
    r, pos = np.nonzero(rows["request"] == i)
    seed = int(rows["seed"][r[0], pos[0]])
    rng = np.random.default_rng([seed, step])
    out[r, pos] = rng.standard_normal((len(r), tokens.shape[-1]), np.float32)
  return out


def unpack(
  rows: dict[str, np.ndarray],
  tokens: np.ndarray,
  requests: Sequence[Request],
  geom: sizing.Geometry,
  stage: latent.LatentStage,
) -> list[np.ndarray]:
  """Each request's video, uint8 `[T, H, W, 3]`, from denoised packed tokens."""
  out = []
  for i, req in enumerate(requests):
    r, pos = np.nonzero(rows["request"] == i + 1)
    grid = geom.grid(req.num_frames, req.height, req.width)
    lt = geom.latent_frames(req.num_frames)
    z = patchify.unpatchify(tokens[r, pos], grid, geom.patch, frames=lt)
    out.append(latent.to_uint8(stage.decode(z))[: req.num_frames])
  return out


def batch_put(mesh, rules) -> Callable[[dict], dict]:
  """Places host rows on the mesh, sharded over the batch axes."""

  def put(d):
    return {
      k: jax.device_put(v, sharding.named_sharding(("batch",), rules, mesh, v.shape))
      for k, v in d.items()
    }

  return put
