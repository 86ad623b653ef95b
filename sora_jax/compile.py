r"""Ahead-of-time compile of the train step for a target topology, without its hardware.

  python -m sora_jax.compile --config=experiments/dit_1b.py --topology=v5p:2x2x2 \
      [--config.mesh.fsdp=8 ...] [--hbm_gb=GIB] [--vocab_size=32000] [--output_json=F]

Builds the train state and a full batch abstractly (shapes and shardings only:
no parameter is allocated, so a 30B preset compiles on a laptop), compiles the
real step of sora_jax.training.trainer for the target mesh and prints per-device memory
and FLOPs per step. It exits non-zero with one `error: ...` line when the
config does not compile for the target (a mesh that does not divide the
devices, a batch that does not divide the batch axes, a sharding mistake) and
with `error: out of memory ...` when the step needs more than a device's HBM,
so both are caught before a pod is booked.

--topology:
  v4:2x2x1 v5e:2x2 v5p:2x2x2 v6e:4x4   a TPU slice (chips per dimension), compiled by
                                       the TPU compiler from libtpu (`make install
                                       ACCEL=tpu` or `pip install libtpu`; no TPU needed).
                                       Its memory figures are the TPU compiler's, and a
                                       step that does not fit fails to compile.
  cpu:8  cpu:2x4                       fake CPU devices (HOSTSxDEVICES_PER_HOST).
  h100:8 h100:2x8 h200:8 a100:8 a100-40gb:8
                                       fake CPU devices with that GPU's HBM and peak
                                       FLOP/s: an estimate, since the CPU compiler's
                                       fusion and buffer assignment differ from the GPU's.

Attention "auto" compiles the target's kernel on TPU (splash); GPU targets get
the XLA reference, since a GPU kernel cannot be compiled for CPU devices.

FLOPs per step per device, three ways:
  XLA       the compiled step's cost analysis. It counts a while loop's body
            once: with model.scan_layers a layer stack counts as one layer.
  traced    the matrix products of the traced step with every loop body times
            its trip count (sora_jax.core.flops.traced_matmul_flops), over the devices.
  analytic  sora_jax.core.flops.step_flops for rows that each hold one example
            filling the row (the dense attention the step computes), over the
            devices. remat="full" recomputes the forward, so traced/analytic is
            then about 4/3.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import re
import sys
import time
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import flags, logging
from ml_collections import config_flags

from data_pipelines import pipeline, shards, tokenizer
from sora_jax.core import cli, configs, distributed, flops, sharding
from sora_jax.diffusion import latent
from sora_jax.models import attention
from sora_jax.training import validation
from sora_jax.training.trainer import Trainer

FLAGS = flags.FLAGS

# TPU generations: libtpu's name, whether a device is a whole (megacore) chip,
# and the Cloud TPU accelerator-type name of a slice of n chips.
TPU_GENERATIONS = {
  "v4": ("v4", "megacore", lambda n: f"v4-{2 * n}"),
  "v5e": ("v5e", "default", lambda n: f"v5litepod-{n}"),
  "v5p": ("v5p", "megacore", lambda n: f"v5p-{2 * n}"),
  "v6e": ("v6e", "default", lambda n: f"v6e-{n}"),
}
CHIPS_PER_HOST = (2, 2, 1)  # libtpu's default host shape; smaller slices fit in one host.

# GPU names modelled by fake CPU devices: the device kind the HBM and peak tables know.
GPU_KINDS = {
  "h100": "NVIDIA H100 80GB HBM3",
  "h200": "NVIDIA H200",
  "a100": "NVIDIA A100-SXM4-80GB",
  "a100-40gb": "NVIDIA A100-SXM4-40GB",
}


def define_flags() -> None:
  config_flags.DEFINE_config_file("config", None, "Experiment config file.")
  flags.DEFINE_string(
    "topology",
    None,
    "Target: a TPU slice (v4:2x2x1, v5e:2x2, v5p:2x2x2, v6e:4x4), fake CPU devices "
    "(cpu:8, cpu:2x4 = 2 hosts x 4) or a GPU modelled by fake CPU devices (h100:8, h200:2x8, "
    "a100:8, a100-40gb:8).",
  )
  flags.DEFINE_float(
    "hbm_gb", None, "Memory per device in GiB (default: the device kind's, sora_jax.core.flops)."
  )
  flags.DEFINE_integer(
    "vocab_size", 32000, "Caption vocabulary when the config names no tokenizer or data_dir."
  )
  flags.DEFINE_string("output_json", None, "Also write the report here.")


# ------------------------------------------------------------------------------
# Targets.
# ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Target:
  """What --topology names."""

  name: str  # as given
  kind: str  # "tpu", "cpu" or "gpu" (modelled by fake CPU devices)
  num_devices: int
  hosts: int  # for fake devices; a TPU slice's hosts come from libtpu
  dims: tuple[int, ...] = ()  # TPU chips per dimension
  generation: str = ""  # TPU: a key of TPU_GENERATIONS; GPU: a key of GPU_KINDS

  @property
  def estimate(self) -> bool:
    """Memory figures from the CPU compiler standing in for a GPU's."""
    return self.kind == "gpu"


def parse_topology(name: str) -> Target:
  """A Target from a --topology value; ValueError names what is allowed."""
  allowed = (
    "allowed: v4:2x2x1, v5e:2x2, v5p:2x2x2, v6e:4x4 (TPU slices), cpu:N or cpu:HOSTSxN, "
    f"{', '.join(f'{g}:N' for g in GPU_KINDS)} (fake CPU devices)"
  )
  m = re.fullmatch(r"([a-z0-9-]+):(\d+(?:x\d+)*)", (name or "").strip().lower())
  if not m:
    raise ValueError(f"--topology={name!r}: not NAME:SHAPE; {allowed}")
  family, dims = m.group(1), tuple(int(d) for d in m.group(2).split("x"))
  if any(d < 1 for d in dims):
    raise ValueError(f"--topology={name}: sizes must be positive")
  if family in TPU_GENERATIONS:
    want = 3 if family in ("v4", "v5p") else 2
    if len(dims) != want:
      example = "2x2x1" if want == 3 else "2x2"
      raise ValueError(
        f"--topology={name}: a {family} slice has {want} dimensions, e.g. {family}:{example}"
      )
    return Target(name, "tpu", math.prod(dims), 0, dims, family)
  if family == "cpu" or family in GPU_KINDS:
    if len(dims) > 2:
      raise ValueError(f"--topology={name}: give N devices or HOSTSxN, e.g. {family}:2x8")
    hosts, per_host = dims if len(dims) == 2 else (1, dims[0])
    kind = "cpu" if family == "cpu" else "gpu"
    return Target(name, kind, hosts * per_host, hosts, (), "" if kind == "cpu" else family)
  raise ValueError(f"--topology={name}: unknown device {family!r}; {allowed}")


def tpu_devices(target: Target) -> list[jax.Device]:
  """Compile-only devices of a TPU slice, from libtpu."""
  from jax.experimental import topologies

  libtpu_name, chip_config, accelerator_type = TPU_GENERATIONS[target.generation]
  if not distributed.on_cloud_tpu_vm({}):
    # Off a TPU VM, tell libtpu the slice instead of letting it query a metadata
    # server that is not there (which only prints warnings).
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", accelerator_type(target.num_devices))
  dims3 = (tuple(target.dims) + (1, 1))[:3]
  per_host = tuple(min(d, h) for d, h in zip(dims3, CHIPS_PER_HOST))
  try:
    topo = topologies.get_topology_desc(
      f"{libtpu_name}:{'x'.join(map(str, target.dims))}",
      "tpu",
      chip_config_name=chip_config,
      chips_per_host_bounds=per_host,
    )
  except Exception as e:  # libtpu missing, or a slice shape it rejects.
    if "not installed" in str(e):
      raise ValueError(
        f"--topology={target.name} needs the TPU compiler (libtpu), which is not installed: "
        "run `make install ACCEL=tpu` (or `pip install libtpu`); no TPU is needed"
      ) from None
    raise ValueError(f"--topology={target.name}: {_first_line(e)}") from None
  return list(topo.devices)


def target_devices(target: Target) -> list[jax.Device]:
  if target.kind == "tpu":
    return tpu_devices(target)
  devices = jax.devices("cpu")
  if len(devices) < target.num_devices:
    raise ValueError(
      f"--topology={target.name} needs {target.num_devices} CPU devices; this process has "
      f"{len(devices)} (run the binary, which sets jax_num_cpu_devices, or set XLA_FLAGS="
      f"--xla_force_host_platform_device_count={target.num_devices} before jax starts)"
    )
  return devices[: target.num_devices]


def device_kind(target: Target, devices: Sequence[jax.Device]) -> str:
  if target.kind == "gpu":
    return GPU_KINDS[target.generation]
  return devices[0].device_kind


# ------------------------------------------------------------------------------
# Compilation and the report.
# ------------------------------------------------------------------------------


class OutOfMemory(Exception):
  """The step does not fit in a device's memory."""


def vocab_size(cfg, default: int) -> int:
  """The caption vocabulary: the config's tokenizer or dataset, else `default`."""
  if cfg.data.tokenizer:
    return tokenizer.Tokenizer(cfg.data.tokenizer).vocab_size
  if cfg.data.data_dir:
    return tokenizer.load(cfg.data.data_dir).vocab_size
  return default


def abstract_batch(cfg, trainer: Trainer) -> dict[str, jax.ShapeDtypeStruct]:
  """The global batch of the config as ShapeDtypeStructs sharded like the step's input."""
  spec = pipeline.batch_spec(
    pipeline.Options.from_config(cfg.data), latent.geometry_for(cfg), cfg.train.global_batch_size
  )
  return {
    k: jax.ShapeDtypeStruct(shape, dtype, sharding=trainer.batch_shardings[k])
    for k, (shape, dtype) in spec.items()
  }


def full_row_flops(cfg, trainer: Trainer) -> float:
  """sora_jax.core.flops' count of a global batch whose rows each hold one row-filling example."""
  b = cfg.train.global_batch_size
  seg = np.ones((b, cfg.data.seq_len), np.int32)
  tseg = np.ones((b, pipeline.Options.from_config(cfg.data).text_len), np.int32)
  return trainer.step_flops({"segment_ids": seg, "text_segment_ids": tseg})


def _cost(analysis: Any) -> dict[str, float]:
  if isinstance(analysis, (list, tuple)):  # Older jax: one dict per program.
    analysis = analysis[0] if analysis else {}
  return dict(analysis or {})


def _first_line(e: BaseException) -> str:
  text = str(e).strip() or type(e).__name__
  return text.splitlines()[0][:500]


def _is_oom(e: BaseException) -> bool:
  text = str(e)
  return "RESOURCE_EXHAUSTED" in text or "Ran out of memory" in text


def compile_step(
  cfg: ml_collections.ConfigDict,
  target: Target,
  *,
  vocab: int = 32000,
  hbm_gb: float | None = None,
) -> dict[str, Any]:
  """Compiles the config's train step for `target`; returns the report.

  Raises ConfigError or ValueError for a config that does not fit the
  target's devices, OutOfMemory when the step exceeds a device's memory, and
  RuntimeError (one line) when XLA rejects the program.
  """
  validation.validate(cfg, for_training=False)
  devices = target_devices(target)
  kind = device_kind(target, devices)
  hosts = target.hosts or len({d.process_index for d in devices})
  try:
    mesh = sharding.make_mesh(cfg.mesh, devices)
  except ValueError as e:
    raise configs.ConfigError(f"config.mesh: {e} (--topology={target.name})") from None
  validation.check_batch_layout(cfg, mesh, hosts)
  hbm = hbm_gb if hbm_gb is not None else flops.by_device_kind(flops.HBM_GIB, kind)
  peak = flops.by_device_kind(flops.PEAK_TFLOPS, kind)

  # "auto" attention means the target's kernel (splash on TPU). A GPU's kernels
  # cannot be compiled for the CPU devices that stand in for it: the reference.
  cfg = copy.deepcopy(cfg)
  backend = cfg.model.attention
  if target.kind == "tpu":
    backend = attention.resolve_backend(backend, "tpu")
  elif backend == "auto":
    backend = "xla"
  with cfg.unlocked():
    cfg.model.attention = backend

  trainer = Trainer(cfg, mesh, vocab)
  t0 = time.perf_counter()
  try:
    traced = trainer.trace(abstract_batch(cfg, trainer))
    with jax.set_mesh(mesh):
      compiled = traced.lower().compile()
  except Exception as e:
    logging.vlog(1, "compilation failed", exc_info=True)
    if _is_oom(e):
      raise OutOfMemory(_first_line(e)) from None
    raise RuntimeError(f"compiling the train step failed: {_first_line(e)}") from None
  compile_s = time.perf_counter() - t0

  n = len(devices)
  result: dict[str, Any] = {
    "topology": target.name,
    "devices": n,
    "hosts": hosts,
    "device_kind": kind,
    "memory_estimate": target.estimate,
    "attention": backend,
    "scan_layers": bool(cfg.model.scan_layers),
    "remat": cfg.model.remat,
    "mesh": {k: int(v) for k, v in mesh.shape.items()},
    "params": trainer.counts["total"],
    "global_batch_size": cfg.train.global_batch_size,
    "tokens_per_device": cfg.train.global_batch_size * cfg.data.seq_len / n,
    "compile_s": compile_s,
    "hbm_gb": hbm,
    "peak_tflops": peak,
  }

  mem = compiled.memory_analysis()
  if mem is not None:
    gib = 2.0**30
    result.update(
      arguments_gb=mem.argument_size_in_bytes / gib,
      outputs_gb=mem.output_size_in_bytes / gib,
      aliased_gb=mem.alias_size_in_bytes / gib,
      temporaries_gb=mem.temp_size_in_bytes / gib,
    )
    # Donated state is both an argument and an output: count it once.
    total = result["arguments_gb"] + result["outputs_gb"] - result["aliased_gb"]
    result["total_gb"] = total + result["temporaries_gb"]
    if hbm:
      result["hbm_fraction"] = result["total_gb"] / hbm
      result["fits"] = result["total_gb"] <= hbm

  result["xla_flops_per_device"] = _cost(compiled.cost_analysis()).get("flops")
  result["traced_flops_per_device"] = flops.traced_matmul_flops(traced.jaxpr) / n
  result["analytic_flops_per_device"] = full_row_flops(cfg, trainer) / n
  result["traced_over_analytic"] = (
    result["traced_flops_per_device"] / result["analytic_flops_per_device"]
  )
  if peak:
    result["step_s_at_peak"] = result["analytic_flops_per_device"] / (peak * 1e12)
  return result


def _count(n: float) -> str:
  return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.2f}M"


def format_report(cfg_name: str, r: dict[str, Any]) -> str:
  """The report a person reads (see the module docstring)."""
  mesh = " ".join(f"{k}={v}" for k, v in r["mesh"].items())
  hbm = f"{r['hbm_gb']:g} GiB HBM each" if r["hbm_gb"] else "no HBM limit"
  lines = [
    f"{cfg_name} on {r['topology']}: {r['devices']} x {r['device_kind']} "
    f"({r['hosts']} host(s), {hbm}), mesh {mesh}",
    f"  {_count(r['params'])} parameters, {r['global_batch_size']} rows per step, "
    f"{r['tokens_per_device']:,.0f} tokens per device; compiled in {r['compile_s']:.1f} s",
  ]
  if "total_gb" in r:
    note = " (estimate: CPU compiler standing in for the GPU's)" if r["memory_estimate"] else ""
    lines.append(f"memory per device, GiB{note}:")
    lines += [
      f"  arguments    {r['arguments_gb']:10.3f}   state, EMA and batch",
      f"  outputs      {r['outputs_gb']:10.3f}",
      f"  aliased      {-r['aliased_gb']:10.3f}   donated arguments reused as outputs",
      f"  temporaries  {r['temporaries_gb']:10.3f}",
    ]
    frac = f"   {100 * r['hbm_fraction']:.1f}% of {r['hbm_gb']:g} GiB" if r["hbm_gb"] else ""
    lines.append(f"  total        {r['total_gb']:10.3f}{frac}")
  else:
    lines.append("memory per device: not reported by this backend")

  def f(x):
    return "n/a" if x is None else f"{x:.4g}"

  lines += [
    "FLOPs per step per device:",
    f"  XLA cost analysis      {f(r['xla_flops_per_device'])}"
    + ("   (a scanned layer stack counts once)" if r["scan_layers"] else ""),
    f"  traced matmuls         {f(r['traced_flops_per_device'])}   (loops x trip count)",
    f"  analytic, full rows    {f(r['analytic_flops_per_device'])}"
    f"   (traced / analytic = {r['traced_over_analytic']:.3f})",
  ]
  if "step_s_at_peak" in r:
    lines.append(
      f"  step time at 100% MFU  {r['step_s_at_peak']:.4g} s "
      f"({r['peak_tflops']:g} TFLOP/s peak per device)"
    )
  return "\n".join(lines)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments {argv[1:]}")
  if FLAGS.config is None:
    sys.exit("error: --config is required, e.g. --config=experiments/dit_1b.py")
  if not FLAGS.topology:
    sys.exit("error: --topology is required, e.g. --topology=v5p:2x2x2 or --topology=cpu:8")
  if FLAGS.hbm_gb is not None and FLAGS.hbm_gb <= 0:
    sys.exit(f"error: --hbm_gb={FLAGS.hbm_gb}: must be positive")
  try:
    target = parse_topology(FLAGS.topology)
  except ValueError as e:
    sys.exit(f"error: {e}")
  cli.quiet()  # log_to_file (below) starts jax: after the platform settings.
  # This process never runs the step: its own backend is the CPU, with as many
  # devices as a fake-device target needs (set before jax starts a backend).
  jax.config.update("jax_platforms", "cpu")
  if target.kind != "tpu":
    jax.config.update("jax_num_cpu_devices", target.num_devices)
  if FLAGS.output_json:  # The only output folder: the log goes beside the report.
    log_dir = os.path.join(os.path.dirname(FLAGS.output_json), "logs")
    cli.say(f"sora_jax.compile: logs in {cli.log_to_file(log_dir, 'compile')}")

  cfg = FLAGS.config
  try:
    result = compile_step(
      cfg,
      target,
      vocab=vocab_size(cfg, FLAGS.vocab_size),
      hbm_gb=FLAGS.hbm_gb,
    )
  except (configs.ConfigError, ValueError, shards.DatasetError, RuntimeError) as e:
    sys.exit(f"error: {e}")
  except OutOfMemory as e:
    sys.exit(f"error: out of memory on --topology={target.name}: {e}")
  print(format_report(config_flags.get_config_filename(FLAGS["config"]), result))
  if FLAGS.output_json:
    with open(FLAGS.output_json, "w") as fp:
      json.dump(result, fp, indent=2)
  if result.get("fits") is False:
    sys.exit(
      f"error: out of memory on --topology={target.name}: the step needs "
      f"{result['total_gb']:.2f} GiB per device, {result['device_kind']} has "
      f"{result['hbm_gb']:g} GiB" + (" (estimate)" if target.estimate else "")
    )


if __name__ == "__main__":
  define_flags()
  cli.run(main)
