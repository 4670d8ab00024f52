#!/usr/bin/env bash
# Stop training on every worker with SIGTERM (a checkpoint is saved first); --delete also deletes the VM.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
DELETE=0
args=()
for arg in "$@"; do
  if [[ "$arg" == "--delete" ]]; then DELETE=1; else args+=("$arg"); fi
done
usage() { echo "usage: $0 [--delete] [options]"; usage_common; }
parse_common "${args[@]}"
# ([a]rtv: the pattern must not match this very command line, which contains it)
tpu_ssh all "pkill -TERM -f 'python -m [a]rtv_jax[.]train' || true; \
while pgrep -f 'python -m [a]rtv_jax[.]train' > /dev/null; do sleep 5; done"
if [[ "$DELETE" -eq 1 ]]; then
  project="$(project_flag)"
  run gcloud compute tpus tpu-vm delete "$NAME" --zone="$ZONE" ${project:+"$project"} --quiet
fi
