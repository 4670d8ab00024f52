#!/usr/bin/env bash
# Follow the training log of worker 0 (process 0 writes metrics and the progress bar): launch/logs.sh --name artv
set -euo pipefail
source "$(dirname "$0")/lib.sh"
usage() { echo "usage: $0 [options]"; usage_common; }
parse_common "$@"
tpu_ssh 0 "tail -n 100 -f ~/train.log"
