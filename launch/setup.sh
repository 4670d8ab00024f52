#!/usr/bin/env bash
# Copy this checkout to every worker and install it with JAX for TPU: launch/setup.sh --name artv [--dry-run]
set -euo pipefail
source "$(dirname "$0")/lib.sh"
usage() { echo "usage: $0 [options]"; usage_common; }
parse_common "$@"
repo="$(cd "$(dirname "$0")/.." && pwd)"
archive="/tmp/${NAME}-artv_jax.tar.gz"
project="$(project_flag)"
run git -C "$repo" archive --format=tar.gz -o "$archive" HEAD
run gcloud compute tpus tpu-vm scp "$archive" "$NAME:artv_jax.tar.gz" --zone="$ZONE" ${project:+"$project"} --worker=all
tpu_ssh all "mkdir -p $REMOTE_DIR && tar -xzf artv_jax.tar.gz -C $REMOTE_DIR && cd $REMOTE_DIR && \
pip install -q -r requirements.txt -e . && pip install -q 'jax[tpu]==0.10.2' \
-f https://storage.googleapis.com/jax-releases/libtpu_releases.html"
