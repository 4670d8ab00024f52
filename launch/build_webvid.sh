#!/usr/bin/env bash
# Build the webvid TFDS data set on Google Cloud Dataflow (Apache Beam), launched from this checkout:
#   launch/build_webvid.sh --project P --data_dir gs://B/tfds -- gs://B/webvid [CONFIG [BEAM_FLAG ...]]
# The WebVid download (CSVs and mp4s) and the data dir must be on GCS. The workers install this checkout
# (--setup_file=pyproject.toml); launching needs `pip install -e '.[beam]' 'apache-beam[gcp]' build` and
# gcloud application-default credentials here. BEAM_FLAGs (e.g. --max_num_workers=100) go to Beam as given.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
usage() {
  echo "usage: $0 --project P --data_dir gs://B/tfds [options] -- gs://B/webvid [CONFIG [BEAM_FLAG ...]]"
  echo "  Dataflow region: \$ARTV_DATAFLOW_REGION [us-central1]; CONFIG: 256 (default) or tiny"
  usage_common
}
parse_common "$@"
require PROJECT --project
require DATA_DIR --data_dir
if [[ ${#EXTRA[@]} -lt 1 ]]; then
  echo "$(basename "$0"): give MANUAL_DIR (gs://...) after --" >&2
  exit 2
fi
manual="${EXTRA[0]}"
config="${EXTRA[1]:-256}"
beam_flags=("${EXTRA[@]:2}")
for dir in "$manual" "$DATA_DIR"; do  # Dataflow workers see neither this machine's disks nor gcsfuse mounts
  if [[ "$dir" != gs://* ]]; then
    echo "$(basename "$0"): Dataflow reads and writes gs:// paths only, got $dir" >&2
    exit 2
  fi
done
bucket="${DATA_DIR#gs://}"
bucket="${bucket%%/*}"
repo="$(cd "$(dirname "$0")/.." && pwd)"
run python -m artv_jax.data.webvid build --manual_dir="$manual" --data_dir="$DATA_DIR" --config="$config" \
  --runner=DataflowRunner --project="$PROJECT" --region="${ARTV_DATAFLOW_REGION:-us-central1}" \
  --temp_location="gs://$bucket/beam-tmp" --setup_file="$repo/pyproject.toml" \
  --job_name="webvid-$config-$(date -u +%Y%m%d-%H%M%S)" "${beam_flags[@]}"
