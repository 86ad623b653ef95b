"""Scaling-law fits over a sweep's result.json files (numpy and scipy; no jax).

Three fits, each with bootstrap intervals (resampling the runs with replacement):

  compute frontier   L(C) = E + A C^-alpha, fitted to the lower envelope of every run's
                     held-out loss against the FLOPs spent so far (Kaplan et al.'s frontier;
                     points before a run's end saw a learning rate not yet decayed, so the
                     envelope errs high, never low), from the smallest run's compute up.
  isoFLOP profiles   per budget, L against log N fitted by a parabola; its vertex is N_opt(C)
                     and, interpolated in log N, D_opt(C); then N_opt = k C^a, D_opt = k C^b.
                     A vertex outside the widths tried is flagged (the parabola method is
                     biased when the samples sit off-centre).
  parametric law     L(N, D) = E + A / N^alpha + B / D^beta, fitted as Hoffmann et al. and
                     Besiroglu et al. (2024) do: the Huber loss (delta 1e-3) of
                     log L_hat - log L, with L_hat = exp(LSE(a - alpha log N, b - beta log D, e)),
                     minimized by L-BFGS-B from a grid of starting points.

N is the DiT block stack's parameter count ("non-embedding"), D the video tokens trained
on, C the training FLOPs as the trainer counts them; all three come from result.json.
"""

from __future__ import annotations

import glob
import itertools
import json
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from scipy import optimize, special

HUBER_DELTA = 1e-3
PARAM_NAMES = ("E", "A", "B", "alpha", "beta")


class FitError(ValueError):
  """Too few or unusable results to fit; the message says what is missing."""


# ------------------------------------------------------------------------------
# Results.
# ------------------------------------------------------------------------------


def load_results(root: str) -> list[dict[str, Any]]:
  """Every ROOT/*/result.json, in manifest order."""
  out = []
  for path in sorted(glob.glob(os.path.join(root, "*", "result.json"))):
    with open(path) as f:
      out.append(json.load(f))
  if not out:
    raise FitError(f"--root={root}: no */result.json; run python -m sora_jax.sweep first")
  return sorted(out, key=lambda r: r.get("index", 0))


def columns(results: Sequence[dict], n_key: str = "non_embedding") -> dict[str, np.ndarray]:
  """N, D, C, L (final held-out loss) and budget arrays of the results."""
  return {
    "N": np.array([r["params"][n_key] for r in results], np.float64),
    "D": np.array([r["tokens"]["video"] for r in results], np.float64),
    "C": np.array([r["flops"] for r in results], np.float64),
    "L": np.array([r["heldout_loss"] for r in results], np.float64),
    "budget": np.array([r.get("budget", 0.0) for r in results], np.float64),
  }


# ------------------------------------------------------------------------------
# The parametric law L(N, D).
# ------------------------------------------------------------------------------


def huber(r: np.ndarray, delta: float = HUBER_DELTA) -> np.ndarray:
  a = np.abs(r)
  return np.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta))


def _log_pred(theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray) -> np.ndarray:
  a, b, e, alpha, beta = theta
  return special.logsumexp(
    np.stack([a - alpha * log_n, b - beta * log_d, np.full_like(log_n, e)]), axis=0
  )


def _objective(theta, log_n, log_d, log_l):
  """The Huber objective and its gradient in (a, b, e, alpha, beta)."""
  a, b, e, alpha, beta = theta
  u = np.stack([a - alpha * log_n, b - beta * log_d, np.full_like(log_n, e)])
  lp = special.logsumexp(u, axis=0)
  w = np.exp(u - lp)  # Softmax weights of the three terms.
  r = lp - log_l
  g = np.clip(r, -HUBER_DELTA, HUBER_DELTA)
  grad = np.array(
    [
      np.sum(g * w[0]),
      np.sum(g * w[1]),
      np.sum(g * w[2]),
      -np.sum(g * w[0] * log_n),
      -np.sum(g * w[1] * log_d),
    ]
  )
  return float(np.sum(huber(r))), grad


def default_grid() -> np.ndarray:
  """Starting points (a, b, e, alpha, beta) as in Hoffmann et al. (2022), Appendix D.2."""
  return np.array(
    list(
      itertools.product(
        (0.0, 5.0, 10.0, 15.0, 20.0, 25.0),
        (0.0, 5.0, 10.0, 15.0, 20.0, 25.0),
        (-2.0, -1.0, -0.5, 0.0, 0.5, 1.0),
        (0.0, 0.5, 1.0, 1.5, 2.0),
        (0.0, 0.5, 1.0, 1.5, 2.0),
      )
    )
  )


def _grid_values(grid: np.ndarray, log_n, log_d, log_l) -> np.ndarray:
  """The objective at every grid point at once: [G]."""
  a, b, e, alpha, beta = (grid[:, i : i + 1] for i in range(5))
  u = np.stack([a - alpha * log_n, b - beta * log_d, np.broadcast_to(e, (len(grid), len(log_n)))])
  return huber(special.logsumexp(u, axis=0) - log_l).sum(axis=1)


def _minimize(starts, log_n, log_d, log_l, keep: int = 24) -> np.ndarray:
  """L-BFGS-B from the `keep` best of `starts` (the whole grid is scored first, at once)."""
  starts = np.asarray(starts)
  if len(starts) > keep:
    starts = starts[np.argsort(_grid_values(starts, log_n, log_d, log_l))[:keep]]
  bounds = [(-10, 60), (-10, 60), (-10, 10), (0.0, 3.0), (0.0, 3.0)]
  best, best_val = None, np.inf
  for x0 in starts:
    res = optimize.minimize(
      _objective,
      x0,
      args=(log_n, log_d, log_l),
      jac=True,
      method="L-BFGS-B",
      bounds=bounds,
      # The Huber objective is tiny (residuals of ~1e-2 times delta): default tolerances
      # stop far from the optimum.
      options={"ftol": 1e-12, "gtol": 1e-10, "maxiter": 1000},
    )
    if res.fun < best_val:
      best, best_val = res.x, res.fun
  return best


def interval_95(samples: np.ndarray, names: Sequence[str]) -> dict[str, list[float]]:
  """Percentile 95% intervals of bootstrap samples `[S, len(names)]` (none without samples)."""
  if not len(samples):
    return {}
  return {
    k: [float(np.percentile(samples[:, i], 2.5)), float(np.percentile(samples[:, i], 97.5))]
    for i, k in enumerate(names)
  }


def to_constants(theta: np.ndarray) -> dict[str, float]:
  a, b, e, alpha, beta = theta
  return {"E": float(np.exp(e)), "A": float(np.exp(a)), "B": float(np.exp(b)),
          "alpha": float(alpha), "beta": float(beta)}  # fmt: skip


def predict(constants: dict[str, float], n, d) -> np.ndarray:
  c = constants
  return c["E"] + c["A"] / np.asarray(n) ** c["alpha"] + c["B"] / np.asarray(d) ** c["beta"]


def fit_parametric(
  n: np.ndarray,
  d: np.ndarray,
  loss: np.ndarray,
  *,
  bootstrap: int = 200,
  seed: int = 0,
  grid: np.ndarray | None = None,
  predict_at: Sequence[tuple[float, float]] = (),
) -> dict[str, Any]:
  """L(N, D) = E + A/N^alpha + B/D^beta with bootstrap 95% intervals of the constants and
  of the predictions at `predict_at` (N, D) pairs."""
  if len(loss) < 3:
    raise FitError(f"the parametric law has 5 constants; {len(loss)} runs are far too few")
  log_n, log_d, log_l = np.log(n), np.log(d), np.log(loss)
  grid = default_grid() if grid is None else np.asarray(grid)
  theta = _minimize(grid, log_n, log_d, log_l)
  best = to_constants(theta)
  rng = np.random.default_rng(seed)
  samples, preds = [], []
  for _ in range(bootstrap):
    idx = rng.integers(0, len(loss), len(loss))
    if len(np.unique(idx)) < 5:
      continue
    starts = np.concatenate([theta[None], grid])  # The full fit, then the grid's best.
    t = _minimize(starts, log_n[idx], log_d[idx], log_l[idx], keep=6)
    c = to_constants(t)
    samples.append([c[k] for k in PARAM_NAMES])
    preds.append([float(predict(c, pn, pd)) for pn, pd in predict_at])
  samples = np.array(samples)
  out = {
    "constants": best,
    "interval_95": interval_95(samples, PARAM_NAMES),
    "bootstrap_samples": len(samples),
    # Fewer runs than constants: a minimum, not a determined fit.
    "underdetermined": bool(len(loss) < 5),
    "residual_rms_log": float(np.sqrt(np.mean((np.log(predict(best, n, d)) - log_l) ** 2))),
  }
  if predict_at:
    p = np.array(preds).reshape(len(preds), len(predict_at))
    out["predictions"] = [
      {
        "N": float(pn),
        "D": float(pd),
        "L": float(predict(best, pn, pd)),
        "interval_95": [float(np.percentile(p[:, i], 2.5)), float(np.percentile(p[:, i], 97.5))]
        if len(p)
        else [float("nan")] * 2,
      }
      for i, (pn, pd) in enumerate(predict_at)
    ]
  return out


def optimal_allocation(constants: dict[str, float], flops_per_nd: float, c: np.ndarray):
  """N_opt(C), D_opt(C) minimizing L(N, D) subject to C = flops_per_nd * N * D."""
  k = constants
  g = (k["alpha"] * k["A"] / (k["beta"] * k["B"])) ** (1.0 / (k["alpha"] + k["beta"]))
  share = k["beta"] / (k["alpha"] + k["beta"])
  n_opt = g * (np.asarray(c) / flops_per_nd) ** share
  return n_opt, np.asarray(c) / flops_per_nd / n_opt


# ------------------------------------------------------------------------------
# The compute frontier and power laws.
# ------------------------------------------------------------------------------


def envelope(curves: Sequence[Sequence[tuple[float, float]]]) -> np.ndarray:
  """The lower envelope of (compute, loss) points: each point no run beat with less compute."""
  pts = sorted((c, loss) for curve in curves for c, loss in curve)
  out, best = [], np.inf
  for c, loss in pts:
    if loss < best:
      out.append((c, loss))
      best = loss
  return np.array(out)


def fit_frontier(
  c: np.ndarray, loss: np.ndarray, *, bootstrap: int = 200, seed: int = 0
) -> dict[str, Any]:
  """L(C) = E + A C^-alpha, Huber on log residuals, with bootstrap 95% intervals."""
  if len(loss) < 3:
    raise FitError(f"the frontier has 3 constants; {len(loss)} envelope points are too few")
  log_c, log_l = np.log(c), np.log(loss)

  def objective(theta, lc, ll):
    a, e, alpha = theta
    pred = np.logaddexp(a - alpha * lc, e)
    return float(np.sum(huber(pred - ll)))

  def solve(lc, ll, starts):
    best, val = None, np.inf
    for x0 in starts:
      r = optimize.minimize(
        objective, x0, args=(lc, ll), method="L-BFGS-B", bounds=[(-20, 80), (-10, 10), (0, 3)]
      )
      if r.fun < val:
        best, val = r.x, r.fun
    return best

  grid = [
    np.array(x) for x in itertools.product((0, 5, 10, 20, 40), (-2, -1, 0, 1), (0.05, 0.2, 0.5, 1))
  ]
  theta = solve(log_c, log_l, grid)
  rng = np.random.default_rng(seed)
  samples = []
  for _ in range(bootstrap):
    idx = rng.integers(0, len(loss), len(loss))
    if len(np.unique(idx)) < min(3, len(loss) - 1):
      continue
    t = solve(log_c[idx], log_l[idx], [theta] + grid[::8])
    samples.append([np.exp(t[1]), np.exp(t[0]), t[2]])
  samples = np.array(samples)
  names = ("E", "A", "alpha")
  return {
    "constants": {
      "E": float(np.exp(theta[1])),
      "A": float(np.exp(theta[0])),
      "alpha": float(theta[2]),
    },
    "interval_95": interval_95(samples, names),
    "points": len(loss),
  }


def frontier_value(constants: dict[str, float], c) -> np.ndarray:
  return constants["E"] + constants["A"] * np.asarray(c, np.float64) ** -constants["alpha"]


def power_law(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
  """y = k x^a by least squares in log space (with the slope's standard error)."""
  lx, ly = np.log(x), np.log(y)
  if len(lx) < 2:
    raise FitError("a power law needs at least 2 points")
  a, logk = np.polyfit(lx, ly, 1)
  se = float("nan")
  if len(lx) > 2:
    resid = ly - (a * lx + logk)
    se = float(np.sqrt(np.sum(resid**2) / (len(lx) - 2) / np.sum((lx - lx.mean()) ** 2)))
  return {"k": float(np.exp(logk)), "exponent": float(a), "exponent_se": se}


def isoflop_profiles(cols: dict[str, np.ndarray]) -> list[dict[str, Any]]:
  """Per budget: the parabola of L in log N (3 or more runs) and its vertex N_opt, D_opt,
  L_opt; with 2 runs, or a parabola without a minimum, the best run stands in."""
  out = []
  for budget in sorted(set(cols["budget"][cols["budget"] > 0])):
    sel = cols["budget"] == budget
    if sel.sum() < 2:
      continue
    ln, loss, ld = np.log(cols["N"][sel]), cols["L"][sel], np.log(cols["D"][sel])
    coef = np.polyfit(ln, loss, 2) if sel.sum() >= 3 else None
    if coef is not None and coef[0] > 0:
      v = -coef[1] / (2 * coef[0])
      l_opt = float(np.polyval(coef, v))
    else:
      v, l_opt = ln[np.argmin(loss)], float(loss.min())
    inside = coef is not None and coef[0] > 0 and ln.min() <= v <= ln.max()
    out.append(
      {
        "budget": float(budget),
        "flops": float(np.mean(cols["C"][sel])),
        "parabola": None if coef is None else coef.tolist(),
        "N_opt": float(np.exp(v)),
        # D along the budget is ~C / N: log D is linear in log N, read at the vertex.
        "D_opt": float(np.exp(np.polyval(np.polyfit(ln, ld, 1), v))),
        "L_opt": l_opt,
        "vertex_inside_sampled_range": bool(inside),
        "N": cols["N"][sel].tolist(),
        "L": loss.tolist(),
      }
    )
  return out


# ------------------------------------------------------------------------------
# Everything together.
# ------------------------------------------------------------------------------


def analyze(
  results: Sequence[dict], *, bootstrap: int = 200, seed: int = 0, progress: Callable | None = None
) -> dict[str, Any]:
  """fit.json's content: the three fits on the "fit" runs and the check on the held-out ones."""
  say = progress or (lambda msg: None)
  fit_runs = [r for r in results if r.get("role", "fit") == "fit"]
  held = [r for r in results if r.get("role") == "holdout"]
  cols, hcols = columns(fit_runs), columns(held) if held else None

  say("compute frontier")
  env = envelope([[(p["flops"], p["heldout_loss"]) for p in r["heldout_curve"]] for r in fit_runs])
  # Over the compute the sweep spans: below its smallest run's only the first evaluations
  # of runs lie, early in their learning-rate schedules.
  floor = 0.99 * float(cols["C"].min())
  if (env[:, 0] >= floor).sum() >= 3:
    env = env[env[:, 0] >= floor]
  frontier = fit_frontier(env[:, 0], env[:, 1], bootstrap=bootstrap, seed=seed)
  frontier["envelope"] = env.tolist()

  say("isoFLOP profiles")
  profiles = isoflop_profiles(cols)
  laws = {}
  if len(profiles) >= 2:
    c = np.array([p["flops"] for p in profiles])
    laws = {
      "N_opt": power_law(c, np.array([p["N_opt"] for p in profiles])),
      "D_opt": power_law(c, np.array([p["D_opt"] for p in profiles])),
    }

  say(f"parametric law ({bootstrap} bootstrap refits)")
  predict_at = [(n, d) for n, d in zip(hcols["N"], hcols["D"])] if held else []
  parametric = fit_parametric(
    cols["N"], cols["D"], cols["L"], bootstrap=bootstrap, seed=seed, predict_at=predict_at
  )
  flops_per_nd = float(np.median(cols["C"] / (cols["N"] * cols["D"])))
  parametric["flops_per_ND"] = flops_per_nd
  check = []
  for r, p in zip(held, parametric.get("predictions", [])):
    lo, hi = p["interval_95"]
    check.append(
      {
        "name": r["name"],
        "flops": r["flops"],
        "N": p["N"],
        "D": p["D"],
        "actual": r["heldout_loss"],
        "predicted": p["L"],
        "interval_95": [lo, hi],
        "relative_error": p["L"] / r["heldout_loss"] - 1.0,
        "actual_inside_interval": bool(lo <= r["heldout_loss"] <= hi),
        "frontier_prediction": float(frontier_value(frontier["constants"], r["flops"])),
      }
    )
  return {
    "runs": {"fit": len(fit_runs), "holdout": len(held)},
    "quantities": {
      "N": "DiT block parameters (non-embedding)",
      "D": "video tokens trained on",
      "C": "training FLOPs (sora_jax.core.flops)",
      "L": "held-out loss (sora_jax.training.heldout)",
    },
    "frontier": frontier,
    "isoflop": profiles,
    "optimal_scaling": laws,
    "parametric": parametric,
    "holdout_check": check,
  }
