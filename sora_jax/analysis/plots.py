"""Figures (matplotlib, Agg; no jax): what `python -m sora_jax.scaling` writes, the remix
curve of `python -m sora_jax.evaluate --evals=editing` and the summary chart of
`--evals=families`."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from sora_jax.analysis import scaling  # noqa: E402


def _save(fig, path: str) -> str:
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path


def _widths(results):
  widths = sorted({r["overrides"].get("model.width", 0) for r in results})
  cmap = plt.get_cmap("viridis")
  return {w: cmap(i / max(1, len(widths) - 1)) for i, w in enumerate(widths)}


def loss_vs_compute(results: Sequence[dict], fit: dict[str, Any], path: str) -> str:
  """Every run's held-out loss curve against FLOPs, the envelope and the frontier fit."""
  fig, ax = plt.subplots(figsize=(7, 4.5))
  colors = _widths(results)
  seen = set()
  for r in results:
    w = r["overrides"].get("model.width", 0)
    c = [p["flops"] for p in r["heldout_curve"]]
    loss = [p["heldout_loss"] for p in r["heldout_curve"]]
    label = f"width {w}" if w not in seen else None
    seen.add(w)
    ax.plot(c, loss, "-", color=colors[w], alpha=0.5, lw=1, label=label)
    marker = "*" if r.get("role") == "holdout" else "o"
    ax.plot(c[-1], loss[-1], marker, color=colors[w], ms=12 if marker == "*" else 5)
  front = fit["frontier"]
  env = np.array(front["envelope"])
  ax.plot(env[:, 0], env[:, 1], "k.", ms=4, label="envelope (fitted)")
  xs = np.geomspace(env[:, 0].min(), max(r["flops"] for r in results) * 1.5, 100)
  k = front["constants"]
  ax.plot(
    xs,
    scaling.frontier_value(k, xs),
    "k--",
    label=f"L = {k['E']:.3f} + {k['A']:.3g} C^-{k['alpha']:.3f}",
  )
  ax.set(xscale="log", yscale="log", xlabel="training FLOPs C", ylabel="held-out loss")
  ax.set_title("Loss against compute (star: held-out run)")
  ax.legend(fontsize=8)
  return _save(fig, path)


def isoflop(fit: dict[str, Any], path: str) -> str:
  """Loss against N at each budget, with the parabola in log N and its vertex."""
  fig, ax = plt.subplots(figsize=(7, 4.5))
  profiles = fit["isoflop"]
  cmap = plt.get_cmap("plasma")
  for i, p in enumerate(profiles):
    color = cmap(i / max(1, len(profiles)))
    n = np.array(p["N"])
    ax.plot(n, p["L"], "o", color=color, label=f"C = {p['budget']:.2g}")
    if p["parabola"] is not None:
      xs = np.geomspace(n.min() / 1.3, n.max() * 1.3, 100)
      ax.plot(xs, np.polyval(p["parabola"], np.log(xs)), "-", color=color, alpha=0.6)
    ax.plot(p["N_opt"], p["L_opt"], "x", color=color, ms=10, mew=2)
  ax.set(xscale="log", xlabel="N (DiT block parameters)", ylabel="held-out loss")
  ax.set_title("isoFLOP profiles (x: parabola vertex)")
  ax.legend(fontsize=8)
  return _save(fig, path)


def optimal_n_d(fit: dict[str, Any], path: str) -> str:
  """N_opt and D_opt against compute: isoFLOP vertices, their power laws, the parametric law."""
  fig, axes = plt.subplots(1, 2, figsize=(10, 4))
  profiles = fit["isoflop"]
  laws = fit["optimal_scaling"]
  par = fit["parametric"]
  c = np.array([p["flops"] for p in profiles])
  if len(c):
    xs = np.geomspace(c.min() / 2, c.max() * 4, 100)
    n_par, d_par = scaling.optimal_allocation(par["constants"], par["flops_per_ND"], xs)
    for ax, key, par_curve in ((axes[0], "N_opt", n_par), (axes[1], "D_opt", d_par)):
      ax.plot(c, [p[key] for p in profiles], "o", label="isoFLOP vertices")
      if key in laws:
        law = laws[key]
        ax.plot(xs, law["k"] * xs ** law["exponent"], "--", label=f"~ C^{law['exponent']:.2f}")
      ax.plot(xs, par_curve, ":", label="from L(N, D)")
      ax.set(xscale="log", yscale="log", xlabel="training FLOPs C", ylabel=key)
      ax.legend(fontsize=8)
  axes[0].set_title("Compute-optimal parameters")
  axes[1].set_title("Compute-optimal tokens")
  return _save(fig, path)


def predicted_vs_actual(results: Sequence[dict], fit: dict[str, Any], path: str) -> str:
  """L(N, D) fitted without the held-out runs, against every run's loss."""
  fig, ax = plt.subplots(figsize=(5, 5))
  k = fit["parametric"]["constants"]
  fit_runs = [r for r in results if r.get("role", "fit") == "fit"]
  cols = scaling.columns(fit_runs)
  ax.plot(cols["L"], scaling.predict(k, cols["N"], cols["D"]), "o", label="fitted runs")
  for chk in fit["holdout_check"]:
    lo, hi = chk["interval_95"]
    ax.errorbar(
      [chk["actual"]],
      [chk["predicted"]],
      yerr=[[chk["predicted"] - lo], [hi - chk["predicted"]]],
      fmt="*",
      ms=14,
      color="C3",
      label=f"held out ({chk['relative_error']:+.1%})",
    )
  values = list(cols["L"]) + [c["actual"] for c in fit["holdout_check"]]
  lim = [min(values) * 0.95, max(values) * 1.05]
  ax.plot(lim, lim, "k:", lw=1)
  ax.set(xlim=lim, ylim=lim, xlabel="actual held-out loss", ylabel="predicted by L(N, D)")
  ax.set_title("Prediction check")
  ax.legend(fontsize=8)
  return _save(fig, path)


def coord_check(records: dict[str, Any], path: str) -> str:
  """Activation scale against width after each step, one panel per parametrization x site."""
  params = sorted(records)
  sites = sorted(next(iter(records.values()))["sites"])
  fig, axes = plt.subplots(
    len(params), len(sites), figsize=(3.4 * len(sites), 3 * len(params)), squeeze=False
  )
  for i, p in enumerate(params):
    widths = records[p]["widths"]
    for j, site in enumerate(sites):
      ax = axes[i][j]
      steps = np.array(records[p]["sites"][site])  # [widths, steps + 1]
      cmap = plt.get_cmap("coolwarm")
      for s in range(steps.shape[1]):
        ax.plot(
          widths, steps[:, s], "o-", color=cmap(s / max(1, steps.shape[1] - 1)), label=f"step {s}"
        )
      ax.set(xscale="log", yscale="log", xlabel="width", title=f"{p}: {site}")
      ax.set_xticks(widths, [str(w) for w in widths], minor=False)
      ax.set_xticks([], minor=True)
      if j == 0:
        ax.set_ylabel("mean |activation|")
  axes[0][0].legend(fontsize=7)
  return _save(fig, path)


def remix_curve(remix: dict[str, dict[str, Any]], path: str) -> str:
  """Remix against keep: how often the colour follows the new prompt, and how far the
  object's path is from the source's (sora_jax.evaluators.editing)."""
  keeps = sorted(remix, key=float)
  x = [float(k) for k in keeps]
  fig, ax = plt.subplots(figsize=(5.5, 3.6))
  ax.plot(x, [remix[k]["color"] for k in keeps], "o-", label="colour follows the new prompt")
  ax.set_xlabel("keep (0 = prompt only, 1 = the source clip)")
  ax.set_ylabel("fraction of clips")
  ax.set_ylim(-0.05, 1.05)
  err = [remix[k]["path_error"] for k in keeps]
  ax2 = ax.twinx()
  ax2.plot(x, [np.nan if e is None else e for e in err], "s--", color="C1", label="path error")
  ax2.set_ylabel("path error (of the frame diagonal)")
  ax2.set_ylim(bottom=0)
  lines = ax.get_lines() + ax2.get_lines()
  ax.legend(lines, [ln.get_label() for ln in lines], loc="center left", fontsize=8)
  ax.set_title("Remix: the new prompt against the source")
  return _save(fig, path)


# (family, measure, label, the better direction) of the families chart.
FAMILY_PANELS = (
  ("alignment", "readback_color", "colour read (readback)", "higher"),
  ("alignment", "readback_shape", "shape read (readback)", "higher"),
  ("alignment", "readback_motion", "motion read (readback)", "higher"),
  ("alignment", "probe_shape", "shape read (probe)", "higher"),
  ("alignment", "probe_motion", "motion read (probe)", "higher"),
  ("frechet", None, "Fréchet distance (probe features)", "lower"),
  ("motion", "moving_fraction", "clips that move", "like real"),
  ("motion", "flow", "flow (frame sides / s)", "like real"),
  ("consistency", "warping_error", "warping error", "lower"),
  ("consistency", "flicker", "flicker of still clips", "lower"),
  ("visual", "grid_ratio", "patch grid (1 = none)", "like real"),
  ("visual", "sharpness", "sharpness", "like real"),
)


def families_chart(result: dict[str, Any], path: str) -> str:
  """One panel per measure: generated clips beside real clips of the dataset and real
  footage (sora_jax.evaluators.families)."""
  sets = [s for s in ("generated", "real", "footage") if s in result]
  names = {"generated": "generated", "real": "real (dataset)", "footage": "real footage"}
  panels = [p for p in FAMILY_PANELS if family_value(result["generated"], p) is not None]
  cols = 4
  rows = -(-len(panels) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols, 2.4 * rows), squeeze=False)
  for ax, panel in zip(axes.ravel(), panels, strict=False):
    values = [family_value(result[s], panel) for s in sets]
    ax.bar(
      range(len(sets)),
      [np.nan if v is None else v for v in values],
      color=[f"C{i}" for i in range(len(sets))],
    )
    for i, v in enumerate(values):
      ax.text(
        i,
        0 if v is None else v,
        "n/a" if v is None else f"{v:.3g}",
        ha="center",
        va="bottom",
        fontsize=7,
      )
    ax.set_xticks(range(len(sets)), [names[s] for s in sets], fontsize=7)
    ax.set_title(f"{panel[2]}\n({panel[3]} is better)", fontsize=8)
  for ax in axes.ravel()[len(panels) :]:
    ax.axis("off")
  fig.suptitle("Video evaluation: generated against real", fontsize=10)
  return _save(fig, path)


def family_value(measures: dict[str, Any], panel) -> float | None:
  family, key, _, _ = panel
  value = measures.get(family)
  if key is not None:
    value = value.get(key) if isinstance(value, dict) else None
  return None if value is None else float(value)


def write_all(results: Sequence[dict], fit: dict[str, Any], out: str) -> list[str]:
  os.makedirs(out, exist_ok=True)
  return [
    loss_vs_compute(results, fit, os.path.join(out, "loss_vs_compute.png")),
    isoflop(fit, os.path.join(out, "isoflop.png")),
    optimal_n_d(fit, os.path.join(out, "optimal_n_d.png")),
    predicted_vs_actual(results, fit, os.path.join(out, "predicted_vs_actual.png")),
  ]
