#!/usr/bin/env bash
# The one-GPU check: on a machine with one H100 or H200, within about 10 minutes,
#   1. installs the CUDA build of the pinned jax (make install ACCEL=...), unless PYTHON
#      already sees a GPU;
#   2. runs the attention kernel parity tests on the device (tests/test_attention_kernels.py:
#      pallas_gpu, cudnn, segments and block_sparse against the XLA reference, values and
#      gradients);
#   3. measures training MFU of a ~1B-parameter config (experiments/dit_1b.py) at 16k and 64k
#      packed tokens per row with each attention backend, packed against padded buckets for
#      the first backend;
#   4. times a guided sampling step with the conditional and unconditional passes batched
#      into one call and as two calls;
# and writes everything into one JSON (default: gpu_check.json). Every item has its own time
# limit; an item that fails or runs out of time is recorded with its error, and items left
# when the overall budget is spent are recorded as skipped.
#
#   launch/gpu_check.sh [OUT_JSON]
#
# On CPU, the same script with a tiny config shows that it works (docs/performance.md):
#   GPU_CHECK_CONFIG=experiments/dit_tiny.py GPU_CHECK_LENGTHS=256,512 \
#     GPU_CHECK_BACKENDS=xla,segments launch/gpu_check.sh out/gpu_check_cpu.json
#
# Environment (defaults in brackets):
#   PYTHON               the interpreter [.venv/bin/python]
#   ACCEL                jax accelerator build for `make install` [cuda12]
#   GPU_CHECK_CONFIG     training config [experiments/dit_1b.py]
#   GPU_CHECK_LENGTHS    tokens per packed row, comma-separated [16384,65536]
#   GPU_CHECK_BACKENDS   attention backends, first one also runs padded [segments,pallas_gpu,cudnn,xla]
#   GPU_CHECK_STEPS      timed steps per run [3]
#   GPU_CHECK_EXAMPLES   size of the generated dataset [2000]
#   GPU_CHECK_BUDGET_S   overall budget in seconds [570]
#   GPU_CHECK_FLAGS      extra flags for every benchmark run []
set -uo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
out=${1:-gpu_check.json}
PYTHON=${PYTHON:-.venv/bin/python}
config=${GPU_CHECK_CONFIG:-experiments/dit_1b.py}
IFS=, read -r -a lengths <<<"${GPU_CHECK_LENGTHS:-16384,65536}"
IFS=, read -r -a backends <<<"${GPU_CHECK_BACKENDS:-segments,pallas_gpu,cudnn,xla}"
steps=${GPU_CHECK_STEPS:-3}
budget=${GPU_CHECK_BUDGET_S:-570}
start=$SECONDS
work=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
items="$work/items"
mkdir -p "$items"

left() { echo $((budget - (SECONDS - start))); }

# record NAME STATUS SECONDS [JSON_FILE] [LOG]: one item of the report.
record() {
  "$PYTHON" - "$items/$1.json" "$1" "$2" "$3" "${4:-}" "${5:-}" <<'EOF'
import json, os, sys
path, name, status, seconds, result, log = sys.argv[1:]
item = {"name": name, "status": status, "seconds": float(seconds)}
if result and os.path.exists(result):
  with open(result) as f:
    item["result"] = json.load(f)
if log and os.path.exists(log):
  with open(log, errors="replace") as f:
    lines = [ln.rstrip() for ln in f if ln.strip()]
  item["log_tail"] = lines[-5:]
with open(path, "w") as f:
  json.dump(item, f, indent=2)
EOF
}

# item NAME LIMIT_S RESULT_JSON COMMAND...: runs one item within its limit and the budget.
item() {
  local name=$1 limit=$2 result=$3
  shift 3
  local remaining
  remaining=$(left)
  if ((remaining < 20)); then
    echo "[gpu_check] $name: skipped (budget spent)"
    record "$name" skipped 0
    return
  fi
  ((limit > remaining)) && limit=$remaining
  echo "[gpu_check] $name (at most ${limit}s)"
  local t0=$SECONDS status=ok
  timeout --kill-after=10 "$limit" "$@" >"$work/$name.log" 2>&1
  case $? in
    0) ;;
    124 | 137) status=timeout ;;
    *) status=failed ;;
  esac
  echo "[gpu_check] $name: $status in $((SECONDS - t0))s"
  record "$name" "$status" $((SECONDS - t0)) "$result" "$work/$name.log"
}

# 1. The CUDA build.
if ! "$PYTHON" -c "import jax, sys; sys.exit(jax.default_backend() != 'gpu')" 2>/dev/null; then
  if [[ ${GPU_CHECK_CONFIG:-} == *tiny* ]]; then
    echo "[gpu_check] no GPU: running on $("$PYTHON" -c 'import jax; print(jax.default_backend())' 2>/dev/null) (tiny config)"
  else
    item install 300 "" make install ACCEL="${ACCEL:-cuda12}"
  fi
fi
"$PYTHON" - "$work/device.json" <<'EOF'
import json, sys, jax
d = jax.devices()[0]
json.dump({"platform": d.platform, "device_kind": d.device_kind, "devices": jax.device_count(),
           "jax": jax.__version__}, open(sys.argv[1], "w"))
EOF

# 2. Kernel parity on the device.
item parity 180 "" "$PYTHON" -m pytest -q -p no:cacheprovider tests/test_attention_kernels.py

# 3 and 4. A dataset, then MFU per row length and backend (and the sampler once).
item data 120 "" bash -c "'$PYTHON' -m data_pipelines.synthetic --output_dir='$work/data' \
  --num_examples=${GPU_CHECK_EXAMPLES:-2000} --seed=0 && \
  '$PYTHON' -m data_pipelines.tokenizer --data_dir='$work/data' --vocab_size=128"
for length in "${lengths[@]}"; do
  first=1
  for backend in "${backends[@]}"; do
    name="mfu_${length}_${backend}"
    extra=(--padded=false)
    if ((first)); then
      extra=(--padded=true)
      [[ $length == "${lengths[0]}" ]] && extra+=(--sampler_steps=3)
    fi
    first=0
    # shellcheck disable=SC2086
    item "$name" 240 "$work/$name.json" "$PYTHON" -m sora_jax.benchmark --config="$config" \
      --config.data.data_dir="$work/data" --config.data.seq_len="$length" \
      --config.data.max_examples_per_row=$((length / 64)) \
      --config.train.global_batch_size=1 --config.model.attention="$backend" \
      --steps="$steps" --warmup=1 "${extra[@]}" --output_json="$work/$name.json" \
      ${GPU_CHECK_FLAGS:-}
  done
done

# The report.
"$PYTHON" - "$out" "$work/device.json" "$items" $((SECONDS - start)) "$config" <<'EOF'
import glob, json, os, sys
out, device, items, seconds, config = sys.argv[1:]
report = {"device": json.load(open(device)) if os.path.exists(device) else None,
          "config": config, "seconds": int(seconds), "items": {}}
for path in sorted(glob.glob(os.path.join(items, "*.json")), key=os.path.getmtime):
  item = json.load(open(path))
  report["items"][item.pop("name")] = item
summary = {}
for name, item in report["items"].items():
  r = item.get("result") or {}
  if name.startswith("mfu_") and item["status"] == "ok":
    keep = ("mfu", "tokens_per_s", "packed_over_padded", "sample_batched_speedup",
            "sample_step_s_batched_guidance", "sample_step_s_two_passes")
    summary[name] = {k: r[k] for k in keep if k in r}
  else:
    summary[name] = item["status"]
report["summary"] = summary
os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
json.dump(report, open(out, "w"), indent=2)
print(json.dumps(summary, indent=2))
print(f"gpu_check: {out} ({seconds} s)")
EOF
rm -rf "$work"
