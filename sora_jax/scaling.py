r"""Fits scaling laws to a sweep's results and plots them.

  python -m sora_jax.scaling --root=DIR --output=OUT [--bootstrap=200] [--seed=0]

Reads DIR/*/result.json (written by python -m sora_jax.sweep) and writes OUT/fit.json (every
constant with its bootstrap 95% interval, the isoFLOP vertices, N_opt(C) and D_opt(C), and the
prediction of each held-out run) and four PNGs: loss_vs_compute, isoflop, optimal_n_d,
predicted_vs_actual. The fits are in sora_jax.analysis.scaling; no jax is imported.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence

from absl import flags

from sora_jax.analysis import plots, scaling
from sora_jax.core import cli

FLAGS = flags.FLAGS


def define_flags() -> None:
  flags.DEFINE_string("root", None, "The sweep's root (python -m sora_jax.sweep --root).")
  flags.DEFINE_string("output", None, "Directory for fit.json and the PNGs (default ROOT/fit).")
  flags.DEFINE_integer("bootstrap", 200, "Bootstrap resamples for the intervals.")
  flags.DEFINE_integer("seed", 0, "Seed of the bootstrap.")


def summary(fit) -> list[str]:
  f = fit["frontier"]
  k, iv = f["constants"], f["interval_95"]
  lines = [
    f"frontier  L(C) = E + A C^-alpha: E={k['E']:.4f} alpha={k['alpha']:.3f} "
    f"(95%: {iv.get('alpha', ['?', '?'])[0]:.3f}..{iv.get('alpha', ['?', '?'])[1]:.3f}), "
    f"{f['points']} envelope points"
  ]
  for p in fit["isoflop"]:
    edge = "" if p["vertex_inside_sampled_range"] else "  (vertex outside the widths tried)"
    lines.append(
      f"isoFLOP   C={p['budget']:.2g}: N_opt={p['N_opt']:.3g} D_opt={p['D_opt']:.3g} "
      f"L_opt={p['L_opt']:.4f}{edge}"
    )
  for key, law in fit["optimal_scaling"].items():
    lines.append(f"          {key} ~ C^{law['exponent']:.3f} (se {law['exponent_se']:.3f})")
  par = fit["parametric"]
  c, iv = par["constants"], par["interval_95"]
  if par["underdetermined"]:
    lines.append("L(N,D)    fewer runs than its 5 constants: underdetermined, shown for form only")
  lines.append(
    "L(N,D)    "
    + " ".join(
      f"{n}={c[n]:.4g} [{iv[n][0]:.3g}, {iv[n][1]:.3g}]" if n in iv else f"{n}={c[n]:.4g}"
      for n in scaling.PARAM_NAMES
    )
  )
  for chk in fit["holdout_check"]:
    lo, hi = chk["interval_95"]
    lines.append(
      f"held out  {chk['name']}: actual {chk['actual']:.4f}, predicted {chk['predicted']:.4f} "
      f"[{lo:.4f}, {hi:.4f}] ({chk['relative_error']:+.2%}; "
      f"{'inside' if chk['actual_inside_interval'] else 'outside'} the interval)"
    )
  return lines


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments {argv[1:]}")
  if not FLAGS.root:
    sys.exit("error: --root is required")
  out = FLAGS.output or os.path.join(FLAGS.root, "fit")
  cli.quiet()
  try:
    results = scaling.load_results(FLAGS.root)
    # Only once there are results: a mistyped --root fails above without making a folder.
    cli.say(f"sora_jax.scaling: logs in {cli.log_to_file(os.path.join(out, 'logs'), 'scaling')}")
    print(f"{len(results)} runs from {FLAGS.root}", flush=True)
    fit = scaling.analyze(
      results,
      bootstrap=FLAGS.bootstrap,
      seed=FLAGS.seed,
      progress=lambda m: print(f"fitting {m}", flush=True),
    )
  except scaling.FitError as e:
    sys.exit(f"error: {e}")
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, "fit.json"), "w") as f:
    json.dump(fit, f, indent=2)
  pngs = plots.write_all(results, fit, out)
  print("\n".join(summary(fit)))
  print(f"wrote {out}/fit.json and {', '.join(os.path.basename(p) for p in pngs)}")


if __name__ == "__main__":
  define_flags()
  cli.run(main)
