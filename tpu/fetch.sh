#!/usr/bin/env bash
# Copy an experiment workdir back from TPU VM workers.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<USAGE
Usage: $SCRIPT_NAME --name=NAME --zone=ZONE --workdir=REMOTE_PATH [options]

Copy REMOTE_PATH (relative to the remote home, or absolute) recursively from each chosen worker
into DEST/worker-<index>/ with gcloud compute tpus tpu-vm scp. Worker 0 (process 0) writes the
summaries and plots; per-process files of a multi-host run live on every worker (--worker=all).

Flags:
  --workdir=PATH     remote directory to copy, e.g. jaxvlm/workdirs/knockout_7b (required)
  --dest=DIR         local destination (default: tpu-results/NAME)
  --worker=SPEC      0 (default), 0,2, ... or all (needs --num-workers)
  --num-workers=N    hosts in the slice, for --worker=all (v5litepod-8: 1; v5p-32: 4), see
                     gcloud compute tpus tpu-vm describe NAME --zone=ZONE --format='value(networkEndpoints.len())'
$COMMON_HELP
USAGE
}

VALUE_FLAGS+=(workdir dest worker num-workers)
parse_flags "$@"
require_flags name zone workdir
((${#REST[@]} == 0)) || die "unexpected arguments after '--': ${REST[*]}"
: "${FLAG_DEST:=tpu-results/$FLAG_NAME}" "${FLAG_WORKER:=0}"
check_worker "$FLAG_WORKER"
if [[ $FLAG_WORKER == all ]]; then
  [[ $FLAG_NUM_WORKERS =~ ^[1-9][0-9]*$ ]] || die "--worker=all needs --num-workers=N (hosts in the slice)"
  mapfile -t workers < <(seq 0 $((FLAG_NUM_WORKERS - 1)))
else
  IFS=, read -ra workers <<<"$FLAG_WORKER"
fi

scope_flags
for i in "${workers[@]}"; do
  run mkdir -p "$FLAG_DEST/worker-$i"
  run gcloud compute tpus tpu-vm scp --recurse "$FLAG_NAME:$FLAG_WORKDIR" "$FLAG_DEST/worker-$i/" \
    "${SCOPE[@]}" --worker="$i"
done
