#!/usr/bin/env bash
# Create a Cloud TPU VM, directly or as a queued resource.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<USAGE
Usage: $SCRIPT_NAME --name=NAME --zone=ZONE --accelerator-type=TYPE [options]

Create a Cloud TPU VM (gcloud compute tpus tpu-vm create), or with --queued a queued resource
(gcloud compute tpus queued-resources create) whose queued-resource id and node id are both NAME.

Flags:
  --accelerator-type=TYPE  e.g. v5litepod-8, v5p-32, v6e-8, v4-8 (required)
  --version=VERSION        TPU software (runtime) version; default from the accelerator type:
                           v6e -> v2-alpha-tpuv6e, v5p -> v2-alpha-tpuv5,
                           v5litepod/v5e -> v2-alpha-tpuv5-lite, v2/v3/v4 -> tpu-ubuntu2204-base
  --spot                   Spot VM (cheaper, may be preempted)
  --preemptible            preemptible VM (older pricing model; not with --queued)
  --queued                 request a queued resource; it is provisioned when capacity frees up
  --data-disk=SPEC         attach a persistent disk to every worker, e.g.
                           source=projects/P/zones/Z/disks/weights,mode=read-only
$COMMON_HELP
USAGE
}

# default_runtime TYPE: the TPU software version recommended for JAX on that TPU generation.
default_runtime() {
  case $1 in
    v6e-*) echo v2-alpha-tpuv6e ;;
    v5p-*) echo v2-alpha-tpuv5 ;;
    v5litepod-* | v5e-*) echo v2-alpha-tpuv5-lite ;;
    v2-* | v3-* | v4-*) echo tpu-ubuntu2204-base ;;
    *) die "no default --version for accelerator type '$1'; pass --version" ;;
  esac
}

VALUE_FLAGS+=(accelerator-type version data-disk)
BOOL_FLAGS+=(spot preemptible queued)
parse_flags "$@"
require_flags name zone accelerator-type
((${#REST[@]} == 0)) || die "unexpected arguments after '--': ${REST[*]}"
((FLAG_SPOT && FLAG_PREEMPTIBLE)) && die "--spot and --preemptible are exclusive"
((FLAG_QUEUED && FLAG_PREEMPTIBLE)) && die "--preemptible is not available for queued resources; use --spot"
version=${FLAG_VERSION:-$(default_runtime "$FLAG_ACCELERATOR_TYPE")}

scope_flags
capacity=()
((FLAG_SPOT)) && capacity=(--spot)
((FLAG_PREEMPTIBLE)) && capacity=(--preemptible)
disk=()
[[ -z $FLAG_DATA_DISK ]] || disk=(--data-disk="$FLAG_DATA_DISK")
if ((FLAG_QUEUED)); then
  run gcloud compute tpus queued-resources create "$FLAG_NAME" --node-id="$FLAG_NAME" "${SCOPE[@]}" \
    --accelerator-type="$FLAG_ACCELERATOR_TYPE" --runtime-version="$version" "${capacity[@]}" "${disk[@]}"
  ((FLAG_DRY_RUN)) || echo "Queued. Poll with: $(quote_words gcloud compute tpus queued-resources describe \
"$FLAG_NAME" "${SCOPE[@]}")" >&2
else
  run gcloud compute tpus tpu-vm create "$FLAG_NAME" "${SCOPE[@]}" \
    --accelerator-type="$FLAG_ACCELERATOR_TYPE" --version="$version" "${capacity[@]}" "${disk[@]}"
fi
