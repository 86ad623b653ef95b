#!/usr/bin/env bash
# Runs N processes of a command on this machine: a stand-in pod on fake CPU devices.
#
#   launch/local.sh N COMMAND [ARGS...]
#   launch/local.sh 2 .venv/bin/python -m sora_jax.train --config=experiments/demo.py --workdir=out/pod
#
# Process i runs `COMMAND ARGS... --coordinator_address=localhost:PORT --num_processes=N
# --process_id=i` with JAX_PLATFORMS=cpu and DEVICES_PER_PROCESS fake CPU devices, its output
# prefixed with "[i] ". SIGINT/SIGTERM are forwarded to every process. When one process fails
# the others are stopped, and the script exits with the first failure's status.
#
# Environment:
#   DEVICES_PER_PROCESS  fake CPU devices per process (default 4)
#   COORDINATOR_PORT     coordinator port (default: a free one)
#   KILL_AFTER           seconds between SIGTERM and SIGKILL when stopping processes (default 10)
set -euo pipefail

if [[ $# -lt 2 || ! $1 =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: $0 N COMMAND [ARGS...]   (N >= 1 processes)" >&2
  exit 2
fi
num_processes=$1
shift

devices=${DEVICES_PER_PROCESS:-4}
kill_after=${KILL_AFTER:-10}
port=${COORDINATOR_PORT:-$(python3 -c 'import socket; s = socket.socket(); s.bind(("localhost", 0)); print(s.getsockname()[1])')}

# Keep the caller's XLA flags except a device count, which is ours to set.
xla_flags=()
read -ra caller_flags <<<"${XLA_FLAGS:-}"
for flag in ${caller_flags[@]+"${caller_flags[@]}"}; do
  [[ $flag == --xla_force_host_platform_device_count=* ]] || xla_flags+=("$flag")
done
xla_flags+=("--xla_force_host_platform_device_count=$devices")

pids=()
stop_all() {  # SIGNAL: signal every process group still running, then SIGKILL after KILL_AFTER s.
  local pid deadline=$((SECONDS + kill_after))
  for pid in "${pids[@]}"; do kill "-$1" -- "-$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do
    while kill -0 -- "-$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
    kill -KILL -- "-$pid" 2>/dev/null || true
  done
  wait || true
}
on_signal() {  # SIGNAL EXIT_STATUS
  trap - INT TERM
  echo "local.sh: got SIG$1, stopping $num_processes process(es)" >&2
  stop_all "$1"
  exit "$2"
}
trap 'on_signal INT 130' INT
trap 'on_signal TERM 143' TERM
trap 'stop_all TERM' EXIT  # Never leave processes behind, e.g. when this script fails.

# Each process runs in its own process group (job control), so a signal reaches the whole
# pipeline (the process and its output prefixer) and nothing else.
set -m
for ((i = 0; i < num_processes; i++)); do
  (
    set +e
    trap 'true' INT TERM  # Outlive the process group's signal to reap the process and report it.
    XLA_FLAGS="${xla_flags[*]}" JAX_PLATFORMS=cpu PYTHONUNBUFFERED=1 "$@" \
      --coordinator_address="localhost:$port" --num_processes="$num_processes" --process_id="$i" \
      </dev/null 2>&1 | (trap '' INT TERM && exec sed -u "s/^/[$i] /")  # sed reads to the end
    exit "${PIPESTATUS[0]}"
  ) 2>/dev/null &  # (bash would print "Terminated" for a stopped process)
  pids+=("$!")
done
set +m

# Wait for all; on the first failure stop the others. (Polling rather than `wait -n` keeps
# this working with older bash, e.g. macOS's.)
running=("${pids[@]}")
while ((${#running[@]} > 0)); do
  still=()
  for pid in "${running[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then
      still+=("$pid")
      continue
    fi
    status=0
    wait "$pid" || status=$?
    if ((status != 0)); then
      for ((i = 0; i < num_processes; i++)); do [[ ${pids[i]} == "$pid" ]] && break; done
      echo "local.sh: process $i exited with status $status; stopping the others" >&2
      stop_all TERM
      exit "$status"
    fi
  done
  running=("${still[@]+"${still[@]}"}")
  ((${#running[@]} == 0)) || sleep 0.2
done
