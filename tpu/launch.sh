#!/usr/bin/env bash
# Launch an experiment of a large preset (default: LLaVA-OneVision 72B) on every host of a TPU slice,
# with the mesh experiments.plan recommends for the accelerator type: one global mesh across the hosts.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<USAGE
Usage: $SCRIPT_NAME --name=NAME --zone=ZONE --accelerator-type=TYPE [options] [-- CONFIG_FLAG...]

Plans PRESET on TYPE here (python -m experiments.plan, no TPU needed), then runs
  python -m experiments.EXPERIMENT --config=configs/EXPERIMENT.py:PRESET --workdir=WORKDIR \\
    --config.mesh.devices=global --config.mesh.data=D --config.mesh.fsdp=F --config.mesh.tensor=T [CONFIG_FLAG...]
(devices=local on a one-host slice: the same devices)
on every worker at once through run.sh (one process per host; jax.distributed initialises from the TPU
environment). Fails before touching the VM if the preset does not fit TYPE. Words after '--' are
extra --config.* flags for the experiment. Create and set up the VM first (create.sh, setup.sh).

Flags:
  --accelerator-type=TYPE  e.g. v5litepod-32, v5p-8, v5e-32 (required): what the plan is made for
  --experiment=NAME        experiments/NAME.py: knockout (default), keyframe_diagnosis, ...
  --preset=PRESET          config preset of the experiment and of configs/plan.py (default: llava_ov_72b)
  --num-frames=N           frames per video for the plan and the run (default: the presets')
  --mesh=D,F,T             use this data,fsdp,tensor mesh instead of the plan's
  --workdir=DIR            results directory on the workers (default: workdirs/EXPERIMENT_PRESET);
                           give one every worker sees (gcsfuse, NFS) to merge or resume across hosts
  --python=PATH            the local Python that runs the plan (default: .venv/bin/python or python3)
  --remote-dir, --log-name, --env, --background: as for run.sh
$COMMON_HELP
USAGE
}

VALUE_FLAGS+=(accelerator-type experiment preset num-frames mesh workdir python remote-dir log-name)
LIST_FLAGS+=(env)
BOOL_FLAGS+=(background)
parse_flags "$@"
require_flags name zone accelerator-type
: "${FLAG_EXPERIMENT:=knockout}" "${FLAG_PRESET:=llava_ov_72b}"
: "${FLAG_WORKDIR:=workdirs/${FLAG_EXPERIMENT}_${FLAG_PRESET}}" "${FLAG_LOG_NAME:=${FLAG_EXPERIMENT}_${FLAG_PRESET}}"
[[ $FLAG_EXPERIMENT =~ ^[a-z_]+$ && -f $REPO_ROOT/experiments/$FLAG_EXPERIMENT.py ]] ||
  die "--experiment: no experiments/$FLAG_EXPERIMENT.py"
[[ -z $FLAG_NUM_FRAMES || $FLAG_NUM_FRAMES =~ ^[0-9]+$ ]] || die "--num-frames must be a number"
for flag in "${REST[@]}"; do
  [[ $flag == --config.* ]] || die "words after '--' must be --config.* flags (got '$flag')"
done

frames=()
[[ -z $FLAG_NUM_FRAMES ]] || frames=(--config.num_frames="$FLAG_NUM_FRAMES")
if [[ -n $FLAG_MESH ]]; then
  [[ $FLAG_MESH =~ ^([0-9]+),([0-9]+),([0-9]+)$ ]] || die "--mesh must be D,F,T (got '$FLAG_MESH')"
  mesh_flags=(--config.mesh.devices=global --config.mesh.data="${BASH_REMATCH[1]}"
    --config.mesh.fsdp="${BASH_REMATCH[2]}" --config.mesh.tensor="${BASH_REMATCH[3]}")
else
  python=${FLAG_PYTHON:-}
  if [[ -z $python ]]; then
    if [[ -x $REPO_ROOT/.venv/bin/python ]]; then python=$REPO_ROOT/.venv/bin/python; else python=python3; fi
  fi
  # The plan runs even under --dry-run: it is local, reads nothing and writes nothing.
  plan_out=$(cd "$REPO_ROOT" && JAX_PLATFORMS=cpu "$python" -m experiments.plan \
    --config="configs/plan.py:$FLAG_PRESET" --config.tpu="$FLAG_ACCELERATOR_TYPE" "${frames[@]}" \
    --config.output=launch_flags 2>&1) || {
    printf '%s\n' "$plan_out" | grep -v '^[IW][0-9]\{4\} ' >&2 || true
    die "experiments.plan: $FLAG_PRESET does not fit $FLAG_ACCELERATOR_TYPE (or the plan failed); see above"
  }
  read -r -a mesh_flags <<<"$(printf '%s\n' "$plan_out" | tail -n 1)"
fi

run_flags=(--name="$FLAG_NAME" --zone="$FLAG_ZONE" --worker=all --log-name="$FLAG_LOG_NAME")
[[ -z $FLAG_PROJECT ]] || run_flags+=(--project="$FLAG_PROJECT")
[[ -z $FLAG_REMOTE_DIR ]] || run_flags+=(--remote-dir="$FLAG_REMOTE_DIR")
for entry in "${FLAG_ENV[@]}"; do run_flags+=(--env="$entry"); done
((FLAG_BACKGROUND)) && run_flags+=(--background)
((FLAG_DRY_RUN)) && run_flags+=(--dry-run)
exec "$TPU_DIR/run.sh" "${run_flags[@]}" -- python -m "experiments.$FLAG_EXPERIMENT" \
  --config="configs/$FLAG_EXPERIMENT.py:$FLAG_PRESET" --workdir="$FLAG_WORKDIR" "${mesh_flags[@]}" \
  "${frames[@]}" "${REST[@]}"
