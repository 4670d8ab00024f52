#!/usr/bin/env bash
# Build the webvid TFDS data set on the workers of a TPU VM, one shard per worker, then merge on worker 0:
#   launch/build_webvid.sh --name artv --data_dir gs://B/tfds -- MANUAL_DIR NUM_WORKERS [256|512]
# MANUAL_DIR (the WebVid CSVs and mp4s) must be readable from every worker (a mounted disk or gcsfuse).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
usage() { echo "usage: $0 --data_dir DIR [options] -- MANUAL_DIR NUM_WORKERS [CONFIG]"; usage_common; }
parse_common "$@"
require DATA_DIR --data_dir
if [[ ${#EXTRA[@]} -lt 2 ]]; then
  echo "$(basename "$0"): give MANUAL_DIR and NUM_WORKERS after --" >&2
  exit 2
fi
manual="${EXTRA[0]}"
workers="${EXTRA[1]}"
config="${EXTRA[2]:-256}"
if ! [[ "$workers" =~ ^[1-9][0-9]*$ ]]; then
  echo "$(basename "$0"): NUM_WORKERS must be a positive integer, got $workers" >&2
  exit 2
fi
pids=()
for ((i = 0; i < workers; i++)); do  # the shards build in parallel, one per worker
  tpu_ssh "$i" "cd $REMOTE_DIR && python -m artv_jax.data.webvid build --manual_dir=$manual --data_dir=$DATA_DIR \
--config=$config --num_shards=$workers --shard_index=$i > ~/webvid_build_$i.log 2>&1" &
  pids+=($!)
done
for pid in "${pids[@]}"; do
  wait "$pid" || { echo "$(basename "$0"): a shard failed (see ~/webvid_build_*.log on the workers)" >&2; exit 1; }
done
tpu_ssh 0 "cd $REMOTE_DIR && python -m artv_jax.data.webvid merge --data_dir=$DATA_DIR --config=$config \
--num_shards=$workers"
