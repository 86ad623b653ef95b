#!/usr/bin/env bash
# Runs a sora_jax binary on every host of a Cloud TPU VM pod slice, one process per host.
#
#   TPU_NAME=my-v5p-32 ZONE=us-east5-a launch/tpu_pod.sh sora_jax.train \
#       --config=experiments/dit_xl.py --workdir=gs://BUCKET/runs/xl
#
# The first argument is the module to run (`python -m MODULE`); every other argument is passed
# to it unchanged. jax finds the pod's hosts itself (sora_jax.core.distributed source "tpu"), so no
# coordinator flags are needed. The workdir must be visible to every host: a gs:// bucket or a
# shared filesystem, not a local path.
#
# On each host: put the repository at REPO_DIR (see SYNC), `make install ACCEL=tpu`, run the
# module. Output lines are prefixed with the host name.
#
# Variables:
#   TPU_NAME   (required) the TPU VM pod slice
#   ZONE       (required) its zone
#   PROJECT    GCP project (default: gcloud's configured project)
#   REPO_DIR   the repository on each host, relative to the remote home or absolute (default: sora_jax)
#   SYNC       how the repository gets there:
#                copy  (default) this checkout's files (tracked and untracked, not ignored) are
#                      copied to every host, over any older copy
#                git   clone REPO_URL into REPO_DIR where missing, then check out REF
#                none  it is already there
#   REPO_URL   git remote for SYNC=git
#   REF        commit, tag or branch for SYNC=git (default: main)
#   PYTHON     interpreter on the hosts that builds the venv (default: python3.11; the pinned
#              dependency set needs CPython 3.11, which some TPU VM images lack)
#   REMOTE_ENV extra assignments for the remote command, e.g. REMOTE_ENV="LIBTPU_INIT_ARGS=--xla_tpu_x=1"
set -euo pipefail

if [[ $# -lt 1 || $1 == -* ]]; then
  echo "usage: TPU_NAME=... ZONE=... $0 MODULE [FLAGS...]   e.g. $0 sora_jax.train --config=..." >&2
  exit 2
fi
: "${TPU_NAME:?set TPU_NAME to the TPU VM pod slice name}"
: "${ZONE:?set ZONE to the zone of the TPU}"
repo_dir=${REPO_DIR:-sora_jax}
sync=${SYNC:-copy}
python=${PYTHON:-python3.11}

q() { printf '%q' "$1"; }  # Quotes one word for the remote bash.

gcloud_args=(--zone="$ZONE")
[[ -n ${PROJECT:-} ]] && gcloud_args+=(--project="$PROJECT")

on_all_hosts() {  # COMMAND: runs a bash command on every host, in parallel.
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${gcloud_args[@]}" --worker=all \
    --command="bash -c $(q "$1")"
}

# ----------------------------------------------------------------------------
# Put the repository on every host.
# ----------------------------------------------------------------------------
case $sync in
  copy)
    root=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    git -C "$root" ls-files -z --cached --others --exclude-standard |
      while IFS= read -r -d '' f; do if [[ -e $root/$f ]]; then printf '%s\0' "$f"; fi; done \
        >"$tmp/files"  # (files deleted in the working tree are left out)
    tar -czf "$tmp/sora_jax.tar.gz" -C "$root" --null -T "$tmp/files"
    gcloud compute tpus tpu-vm scp "$tmp/sora_jax.tar.gz" "$TPU_NAME:sora_jax.tar.gz" \
      "${gcloud_args[@]}" --worker=all
    on_all_hosts "set -euo pipefail; mkdir -p $(q "$repo_dir")
      tar -xzf sora_jax.tar.gz -C $(q "$repo_dir") && rm sora_jax.tar.gz"
    ;;
  git)
    : "${REPO_URL:?set REPO_URL for SYNC=git}"
    on_all_hosts "set -euo pipefail; cd; d=$(q "$repo_dir")
      [[ -d \$d/.git ]] || git clone -q $(q "$REPO_URL") \"\$d\"
      git -C \"\$d\" fetch -q origin $(q "${REF:-main}") && git -C \"\$d\" checkout -q --detach FETCH_HEAD"
    ;;
  none) ;;
  *)
    echo "error: SYNC=$sync; allowed: copy, git, none" >&2
    exit 2
    ;;
esac

# ----------------------------------------------------------------------------
# Install and run. `make install` is a no-op when the lock file has not changed.
# ----------------------------------------------------------------------------
module=$1
shift
flags=""
for arg in "$@"; do flags+=" $(q "$arg")"; done
run="set -euo pipefail; cd $(q "$repo_dir")
make install ACCEL=tpu PYTHON=$(q "$python") >/dev/null
env ${REMOTE_ENV:-} .venv/bin/python -m $(q "$module")$flags 2>&1 |
  sed -u \"s/^/[\$(hostname)] /\""
on_all_hosts "$run"
