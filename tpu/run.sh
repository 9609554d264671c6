#!/usr/bin/env bash
# Run one command on every worker of a TPU VM, in the venv made by setup.sh, logging per worker.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

# The worker's index inside the slice; the hostname if the metadata server does not answer.
WORKER_ID_CMD='w=$(curl -sf -m 5 -H Metadata-Flavor:Google http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number || hostname)'

usage() {
  cat <<USAGE
Usage: $SCRIPT_NAME --name=NAME --zone=ZONE [options] -- COMMAND [ARG...]
       $SCRIPT_NAME --name=NAME --zone=ZONE [options] --command='SHELL SNIPPET'

Run COMMAND on the workers at once (gcloud compute tpus tpu-vm ssh --worker=all), from REMOTE_DIR
with REMOTE_DIR/.venv/bin first on PATH. Words after '--' are passed exactly (each one quoted);
--command is a shell snippet used verbatim. Each worker writes its output to
REMOTE_DIR/logs/LOG_NAME.worker-<index>.log (the foreground run also streams it here).
On a multi-host slice every worker must run the same command: jax.distributed initialises
from the TPU environment.

Flags:
  --worker=SPEC        workers to run on: all (default), 0, 0,2, ...
  --remote-dir=DIR     directory of setup.sh's install, relative to home (default: jaxvlm)
  --log-name=NAME      log file stem (default: run-<UTC date-time>)
  --env=KEY=VALUE      export this on the workers (repeatable); PYTHONUNBUFFERED=1 is always set
  --background         start under nohup and return at once; follow with 'tail -f' over ssh
  --command=SNIPPET    shell snippet to run instead of the words after '--'
$COMMON_HELP
USAGE
}

# run_script COMMAND: the remote script as one line of '; '-separated commands.
run_script() {
  local cmd=$1 dir log entry exports=(PYTHONUNBUFFERED=1) steps
  dir=$(shell_quote "$FLAG_REMOTE_DIR")
  for entry in "${FLAG_ENV[@]}"; do exports+=("$(shell_quote "$entry")"); done
  log="\"logs/$FLAG_LOG_NAME.worker-\$w.log\""
  steps=('set -euo pipefail' "cd $dir" 'export PATH="$PWD/.venv/bin:$PATH"' "export ${exports[*]}"
    "$WORKER_ID_CMD" 'mkdir -p logs')
  if ((FLAG_BACKGROUND)); then
    steps+=("nohup bash -c $(shell_quote "$cmd") > $log 2>&1 < /dev/null & \
echo \"worker \$w: started pid \$! logging to \$PWD/\"$log")
  else
    steps+=("bash -c $(shell_quote "$cmd") 2>&1 | tee $log")
  fi
  join_by '; ' "${steps[@]}"
}

VALUE_FLAGS+=(worker remote-dir log-name command)
LIST_FLAGS+=(env)
BOOL_FLAGS+=(background)
parse_flags "$@"
require_flags name zone
: "${FLAG_WORKER:=all}" "${FLAG_REMOTE_DIR:=jaxvlm}" "${FLAG_LOG_NAME:=run-$(date -u +%Y%m%d-%H%M%S)}"
check_worker "$FLAG_WORKER"
[[ $FLAG_LOG_NAME =~ ^[A-Za-z0-9._-]+$ ]] || die "--log-name may only use letters, digits, '.', '_', '-'"
for entry in "${FLAG_ENV[@]}"; do
  [[ $entry =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die "--env needs KEY=VALUE (got '$entry')"
done
if [[ -n $FLAG_COMMAND ]]; then
  ((${#REST[@]} == 0)) || die "give the command either with --command or after '--', not both"
  command=$FLAG_COMMAND
else
  ((${#REST[@]} > 0)) || die "missing command: pass it after '--' or with --command"
  command=$(quote_words "${REST[@]}")
fi

ssh_workers "$FLAG_WORKER" "$(run_script "$command")"
