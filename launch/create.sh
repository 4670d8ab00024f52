#!/usr/bin/env bash
# Create a TPU VM (or pod slice) for training: launch/create.sh --name artv --accelerator v4-32 [--spot] [--dry-run]
set -euo pipefail
source "$(dirname "$0")/lib.sh"
usage() { echo "usage: $0 [options]"; usage_common; }
parse_common "$@"
project="$(project_flag)"
spot=()
if [[ "$SPOT" -eq 1 ]]; then spot=(--spot); fi
run gcloud compute tpus tpu-vm create "$NAME" --zone="$ZONE" ${project:+"$project"} \
  --accelerator-type="$ACCELERATOR" --version="$VERSION" "${spot[@]}"
