"""Training FLOPs from the real segment lengths of a packed batch, and MFU.

For one training step (forward + backward = 3x forward), counting a multiply-add
as 2 FLOPs:

  6 * P_video * N_video          dense layers applied to each real video token
  + 6 * P_text * N_text          the text encoder and cross-attention K/V on caption tokens
  + 12 * depth * width * sum_i n_i^2           self-attention scores and values
  + 12 * depth * width * sum_i n_i m_i         cross-attention to the example's caption
  + 12 * depth_t * width_t * sum_i m_i^2       text-encoder self-attention

where n_i and m_i are the video and caption token counts of example i. Padding
is never counted, so packed and padded runs of the same data report the same
useful FLOPs and differ in time.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jax_core

# Dense bf16 peak per chip, TFLOP/s (vendor figures, without sparsity).
PEAK_TFLOPS = {
  "H100": 989.0,
  "H200": 989.0,
  "B200": 2250.0,
  "A100": 312.0,
  "L4": 121.0,
  "TPU v4": 275.0,
  "TPU v5 lite": 197.0,
  "TPU v5e": 197.0,
  "TPU v5p": 459.0,
  "TPU v5": 459.0,
  "TPU v6 lite": 918.0,
  "TPU v6e": 918.0,
}

# Memory per device, GiB (vendor figures: a TPU v4/v5p device is a megacore chip).
# Somewhat less is usable: nvidia-smi shows 79.6 GiB on an H100 and 140.4 GiB on
# an H200, the TPU compiler allows 15.75 GiB on a v5e, and jax on GPU takes
# XLA_PYTHON_CLIENT_MEM_FRACTION (default 0.75) of it.
HBM_GIB = {
  "H100": 80.0,
  "H200": 141.0,
  "A100": 80.0,
  "A100-SXM4-40GB": 40.0,
  "A100-PCIE-40GB": 40.0,
  "TPU v4": 32.0,
  "TPU v5 lite": 16.0,
  "TPU v5e": 16.0,
  "TPU v5p": 95.0,
  "TPU v5": 95.0,
  "TPU v6 lite": 32.0,
  "TPU v6e": 32.0,
}


def by_device_kind(table: Mapping[str, float], kind: str) -> float | None:
  """The entry of `table` whose (longest) key occurs in a device kind, e.g. "TPU v5 lite"."""
  for name, value in sorted(table.items(), key=lambda kv: -len(kv[0])):
    if name.lower() in kind.lower():
      return value
  return None


def param_counts(params: Any) -> dict[str, int]:
  """Parameters applied per video token, per caption token, and in total."""
  total = video = text = 0
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    n = int(np.prod(leaf.shape))
    keys = [str(getattr(k, "key", getattr(k, "idx", k))) for k in path]
    total += n
    if keys[-1] == "embedding":  # A gather, not a matmul.
      continue
    if keys[0] in ("text_encoder", "context_proj") or ("cross" in keys and keys[-2] in ("k", "v")):
      text += n
    else:
      video += n
  return {"total": total, "video": video, "text": text}


# What a batch contributes to the FLOP count, whatever the model: sums over its examples.
STAT_NAMES = ("n", "m", "n2", "nm", "m2")


def batch_stats(batch: Mapping[str, np.ndarray]) -> np.ndarray:
  """[sum n, sum m, sum n^2, sum n m, sum m^2] over a packed batch's examples (host arrays):
  n_i video and m_i caption tokens of example i. `step_flops` is linear in these."""
  seg = np.asarray(batch["segment_ids"])
  tseg = np.asarray(batch["text_segment_ids"])
  b = seg.shape[0]
  k = int(max(seg.max(), tseg.max())) + 1
  n = np.stack([np.bincount(r, minlength=k)[1:] for r in seg.reshape(b, -1)]).astype(np.float64)
  m = np.stack([np.bincount(r, minlength=k)[1:] for r in tseg.reshape(b, -1)]).astype(np.float64)
  return np.array([n.sum(), m.sum(), (n * n).sum(), (n * m).sum(), (m * m).sum()])


def flops_per_stat(counts: Mapping[str, int], model_cfg) -> np.ndarray:
  """Training FLOPs per unit of each `batch_stats` entry, so a step costs coef . stats."""
  d, depth = model_cfg.width, model_cfg.depth
  dt, depth_t = model_cfg.text.width, model_cfg.text.depth
  attn, attn_t = 12.0 * depth * d, 12.0 * depth_t * dt
  return np.array([6.0 * counts["video"], 6.0 * counts["text"], attn, attn, attn_t])


def step_flops(batch: Mapping[str, np.ndarray], counts: Mapping[str, int], model_cfg) -> float:
  """Training FLOPs of one step on `batch` (host arrays; see module docstring)."""
  return float(flops_per_stat(counts, model_cfg) @ batch_stats(batch))


def traced_matmul_flops(jaxpr) -> float:
  """FLOPs of the matrix products in a (closed) jaxpr, each loop body times its trip count.

  A cross-check on XLA's cost analysis, which counts a while loop's body once
  (a scanned layer stack, a chunked attention). Shapes are the jaxpr's: global
  under jit; a shard_map body's local shapes count once per shard. A while loop
  (unknown trip count) counts once; a conditional counts its costliest branch;
  a Pallas kernel counts its cost estimate, else its body once per grid point
  (masked blocks included). Elementwise work is not counted.
  """
  jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
  total = 0.0
  for eqn in jaxpr.eqns:
    params = eqn.params
    if eqn.primitive.name == "dot_general":
      (contract, _), _ = params["dimension_numbers"]
      lhs = eqn.invars[0].aval.shape
      total += 2.0 * np.prod(eqn.outvars[0].aval.shape) * np.prod([lhs[d] for d in contract])
      continue
    subs = []
    for v in params.values():
      for x in v if isinstance(v, (tuple, list)) else (v,):
        if isinstance(x, (jax_core.Jaxpr, jax_core.ClosedJaxpr)):
          subs.append(traced_matmul_flops(x))
    if not subs:
      continue
    if eqn.primitive.name == "cond":
      total += max(subs)
      continue
    times = 1
    if eqn.primitive.name == "scan":
      times = params["length"]
    elif eqn.primitive.name == "shard_map":
      times = int(np.prod([params["mesh"].shape[a] for a in params["newly_manual_axes"]]))
    elif eqn.primitive.name == "pallas_call":  # The kernel body runs once per grid point.
      estimate = getattr(params.get("cost_estimate"), "flops", None)
      if estimate:
        total += estimate
        continue
      grid = getattr(params.get("grid_mapping"), "grid", ())
      times = int(np.prod([g for g in grid if isinstance(g, int)]))
    total += times * sum(subs)
  return float(total)


def device_peak_flops(device: jax.Device | None = None, dtype=jnp.bfloat16) -> tuple[float, str]:
  """Peak FLOP/s of one device and where the figure came from.

  Accelerators use the vendor table; a CPU (or an unknown kind) is measured
  with a large matmul in this process, in the compute dtype.
  """
  device = device or jax.devices()[0]
  kind = getattr(device, "device_kind", "")
  tflops = by_device_kind(PEAK_TFLOPS, kind)
  if tflops is not None:
    return tflops * 1e12, f"table ({kind})"
  return measure_matmul_flops(device, dtype), f"measured matmul ({kind or device.platform})"


def measure_matmul_flops(
  device: jax.Device, dtype=jnp.float32, n: int = 1024, reps: int = 5
) -> float:
  """Best-of FLOP/s of an n x n x n matmul on `device`."""
  x = jax.device_put(jnp.ones((n, n), dtype), device)
  f = jax.jit(lambda a: a @ a)
  f(x).block_until_ready()
  best = float("inf")
  for _ in range(reps):
    t0 = time.perf_counter()
    f(x).block_until_ready()
    best = min(best, time.perf_counter() - t0)
  return 2.0 * n**3 / best
