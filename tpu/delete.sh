#!/usr/bin/env bash
# Delete a Cloud TPU VM (or its queued resource together with the VM).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<USAGE
Usage: $SCRIPT_NAME --name=NAME --zone=ZONE [--queued] [options]

Delete the TPU VM NAME without prompting. With --queued, delete the queued resource NAME made by
'create.sh --queued' (--force also deletes its TPU VM). Data on the VM's disks is lost: fetch first.

Flags:
  --queued           NAME is a queued resource
$COMMON_HELP
USAGE
}

BOOL_FLAGS+=(queued)
parse_flags "$@"
require_flags name zone
((${#REST[@]} == 0)) || die "unexpected arguments after '--': ${REST[*]}"

scope_flags
if ((FLAG_QUEUED)); then
  run gcloud compute tpus queued-resources delete "$FLAG_NAME" "${SCOPE[@]}" --force --quiet
else
  run gcloud compute tpus tpu-vm delete "$FLAG_NAME" "${SCOPE[@]}" --quiet
fi
