#!/usr/bin/env bash
# Start training on every worker, in the background, logging to ~/train.log:
#   launch/train.sh --name artv --workdir gs://B/artv --data_dir gs://B/tfds --pretrained /mnt/sd15 [-- --config.train.num_steps=50000]
# Workers find each other through the TPU metadata (jax.distributed.initialize() with no arguments).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
usage() { echo "usage: $0 --workdir gs://... --data_dir gs://... --pretrained DIR [options] [-- config overrides]"; usage_common; }
parse_common "$@"
require WORKDIR --workdir
require DATA_DIR --data_dir
require PRETRAINED --pretrained
overrides=""
for arg in "${EXTRA[@]}"; do overrides+=" $(printf '%q' "$arg")"; done
tpu_ssh all "cd $REMOTE_DIR && nohup python -m artv_jax.train --config=$CONFIG --workdir=$WORKDIR \
--config.data.data_dir=$DATA_DIR --config.model.pretrained=$PRETRAINED$overrides > ~/train.log 2>&1 &"
