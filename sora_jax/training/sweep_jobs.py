"""Pod jobs for a sweep: one job per point, each running `python -m sora_jax.sweep --point=K`.

Written into ROOT/launch/ from the launchers in the repository's launch/ folder, so a sweep
point starts exactly like any training run on that platform (BUILD.md, "Scaling-law sweeps"):

  slurm   submit_slurm.sh: one `sbatch --array` of launch/slurm_gpu.sbatch over the pending
          points; each array task runs `--point=array` (its SLURM_ARRAY_TASK_ID).
  jobset  jobset_K.yaml: launch/k8s_jobset.yaml with the sweep's command, one JobSet per point
          (apply them all at once, or as many as the cluster holds).
  tpu     submit_tpu.sh: launch/tpu_pod.sh once per point, each on its own slice
          ($TPU_PREFIX-K), in the background.

ROOT must be on storage every host of every job sees (a shared filesystem or a mounted
bucket): the jobs read the manifest there and write their results there.
"""

from __future__ import annotations

import os
import pathlib
import shlex
import stat
from collections.abc import Mapping
from typing import Any

from sora_jax.training import sweeps

ENV_POINT = "SORA_JAX_SWEEP_POINT"
LAUNCH = pathlib.Path(__file__).resolve().parents[2] / "launch"


def _pending(manifest: Mapping[str, Any]) -> list[Mapping[str, Any]]:
  return [e for e in manifest["points"] if sweeps.status(manifest["root"], e) != "done"]


def _args(manifest: Mapping[str, Any], sweep_file: str, point: str) -> list[str]:
  return [
    f"--sweep={os.path.abspath(sweep_file)}",
    f"--root={manifest['root']}",
    f"--point={point}",
  ]


def _write(path: pathlib.Path, text: str, executable: bool = False) -> None:
  path.write_text(text)
  if executable:
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def _replace_once(text: str, old: str, new: str, template: pathlib.Path) -> str:
  if text.count(old) != 1:
    raise sweeps.SweepError(f"{template}: expected one {old!r} to replace; was it edited?")
  return text.replace(old, new)


def write(launcher: str, manifest: Mapping[str, Any], sweep_file: str) -> list[str]:
  """Writes the job files of the pending points; returns lines telling how to submit them."""
  out = pathlib.Path(manifest["root"]) / "launch"
  out.mkdir(parents=True, exist_ok=True)
  pending = _pending(manifest)
  if not pending:
    return ["every point has a result; nothing to launch"]
  indices = ",".join(str(e["index"]) for e in pending)
  name = pathlib.Path(sweep_file).stem.replace("_", "-")
  if launcher == "slurm":
    args = " ".join(shlex.quote(a) for a in _args(manifest, sweep_file, "array"))
    script = out / "submit_slurm.sh"
    _write(
      script,
      "#!/usr/bin/env bash\n"
      f"# {len(pending)} sweep points as one SLURM array; run from the repository root.\n"
      "# Each task is a launch/slurm_gpu.sbatch job (its #SBATCH lines: nodes, GPUs, time).\n"
      "set -euo pipefail\n"
      f"MODULE=sora_jax.sweep sbatch --export=ALL,MODULE=sora_jax.sweep "
      f"--job-name=sweep-{name} --array={indices} launch/slurm_gpu.sbatch {args}\n",
      executable=True,
    )
    return [f"wrote {script}; submit with: bash {script}"]
  if launcher == "jobset":
    template = LAUNCH / "k8s_jobset.yaml"
    base = template.read_text()
    base = _replace_once(
      base,
      '[".venv/bin/python", "-m", "sora_jax.train"]',
      '[".venv/bin/python", "-m", "sora_jax.sweep"]',
      template,
    )
    files = []
    for e in pending:
      text = _replace_once(
        base, "  name: sora-train\n", f"  name: sweep-{name}-{e['index']}\n", template
      )
      args = "".join(
        f"                    - {a}\n" for a in _args(manifest, sweep_file, str(e["index"]))
      )
      text = _replace_once(
        text,
        "                    - --config=experiments/dit_b.py\n"
        "                    - --workdir=gs://BUCKET/runs/dit_b\n",
        args,
        template,
      )
      path = out / f"jobset_{e['index']}.yaml"
      _write(path, text)
      files.append(str(path))
    return [
      f"wrote {len(files)} JobSets in {out}; edit image and resources, then: kubectl apply -f {out}"
    ]
  if launcher == "tpu":
    lines = [
      "#!/usr/bin/env bash",
      f"# {len(pending)} sweep points, one TPU slice each ($TPU_PREFIX-INDEX); run from the",
      "# repository root. ZONE and the other launch/tpu_pod.sh variables apply to every slice.",
      "set -euo pipefail",
      ': "${TPU_PREFIX:?set TPU_PREFIX: slice K is named $TPU_PREFIX-K}"',
    ]
    for e in pending:
      args = " ".join(shlex.quote(a) for a in _args(manifest, sweep_file, str(e["index"])))
      lines.append(
        f'TPU_NAME="$TPU_PREFIX-{e["index"]}" launch/tpu_pod.sh sora_jax.sweep {args} '
        f'> "{manifest["root"]}/launch/tpu_{e["index"]}.log" 2>&1 &'
      )
    lines.append("wait")
    script = out / "submit_tpu.sh"
    _write(script, "\n".join(lines) + "\n", executable=True)
    return [f"wrote {script}; submit with: TPU_PREFIX=... ZONE=... bash {script}"]
  raise sweeps.SweepError(f"--launcher={launcher}: allowed: local, slurm, jobset, tpu")
