#!/usr/bin/env bash
# Shared by the launch/*.sh scripts: flags, defaults, and `run` (which prints instead of running under --dry-run).
# shellcheck disable=SC2034  # the variables set here are read by the scripts that source this file

NAME="${ARTV_TPU_NAME:-artv}"
ZONE="${ARTV_ZONE:-us-central2-b}"
PROJECT="${ARTV_PROJECT:-}"
ACCELERATOR="${ARTV_ACCELERATOR:-v4-32}"
VERSION="${ARTV_TPU_VERSION:-tpu-ubuntu2204-base}"
WORKDIR="${ARTV_WORKDIR:-}"
DATA_DIR="${ARTV_DATA_DIR:-}"
PRETRAINED="${ARTV_PRETRAINED:-}"
CONFIG="configs/webvid.py"
REMOTE_DIR="artv_jax"
SPOT=0
DRY_RUN=0
EXTRA=()

usage_common() {
  cat <<USAGE
common options (environment defaults in brackets):
  --name NAME            TPU VM name [ARTV_TPU_NAME, artv]
  --zone ZONE            [ARTV_ZONE, us-central2-b]
  --project PROJECT      [ARTV_PROJECT, gcloud's default]
  --accelerator TYPE     e.g. v4-32, v5litepod-32 [ARTV_ACCELERATOR, v4-32]
  --version RUNTIME      TPU VM software version [ARTV_TPU_VERSION, tpu-ubuntu2204-base]
  --workdir GCS_PATH     training workdir, gs://... [ARTV_WORKDIR]
  --data_dir GCS_PATH    TFDS data dir holding webvid/ [ARTV_DATA_DIR]
  --pretrained PATH      diffusers SD directory on the workers [ARTV_PRETRAINED]
  --config FILE          training config [configs/webvid.py]
  --spot                 create a Spot VM
  --dry-run              print the gcloud commands, run nothing
  --                     everything after goes to the command on the VM
USAGE
}

parse_common() {
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --name) NAME="$2"; shift 2 ;;
      --zone) ZONE="$2"; shift 2 ;;
      --project) PROJECT="$2"; shift 2 ;;
      --accelerator) ACCELERATOR="$2"; shift 2 ;;
      --version) VERSION="$2"; shift 2 ;;
      --workdir) WORKDIR="$2"; shift 2 ;;
      --data_dir) DATA_DIR="$2"; shift 2 ;;
      --pretrained) PRETRAINED="$2"; shift 2 ;;
      --config) CONFIG="$2"; shift 2 ;;
      --spot) SPOT=1; shift ;;
      --dry-run) DRY_RUN=1; shift ;;
      -h|--help) usage; exit 0 ;;
      --) shift; EXTRA=("$@"); break ;;
      *) echo "$(basename "$0"): unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
  done
}

require() {  # require VAR_NAME FLAG: fail with one line when a needed value is empty
  if [[ -z "${!1}" ]]; then
    echo "$(basename "$0"): $2 is required" >&2
    exit 2
  fi
}

project_flag() {
  if [[ -n "$PROJECT" ]]; then printf -- '--project=%s' "$PROJECT"; fi
}

run() {  # run CMD...: print it (shell-quoted, one write), and execute it unless --dry-run
  local line
  line="$(printf ' %q' "$@")"
  printf '+%s\n' "$line"
  if [[ "$DRY_RUN" -eq 0 ]]; then "$@"; fi
}

tpu_ssh() {  # tpu_ssh WORKER COMMAND: run COMMAND on WORKER (a number or "all")
  local worker="$1" command="$2" project
  project="$(project_flag)"
  run gcloud compute tpus tpu-vm ssh "$NAME" --zone="$ZONE" ${project:+"$project"} --worker="$worker" \
    --command="$command"
}
