#!/usr/bin/env bash
# Install the repo, a Python venv and the TPU build of jax on every worker of a TPU VM.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

LIBTPU_INDEX=https://storage.googleapis.com/jax-releases/libtpu_releases.html

usage() {
  cat <<USAGE
Usage: $SCRIPT_NAME --name=NAME --zone=ZONE [options]

On each worker: put the repo in REMOTE_DIR (default: ship this checkout's committed HEAD with
'git archive'; or clone --repo-url), install uv, create REMOTE_DIR/.venv with Python PYTHON, install
requirements.txt together with jax[tpu] (libtpu index: $LIBTPU_INDEX)
and check that jax sees TPU devices. Rerunning updates the code and the venv in place.

Flags:
  --worker=SPEC          workers to set up: all (default), 0, 0,2, ... (on a multi-host slice
                         the device check needs all workers at once: keep 'all' there)
  --source=DIR           local git checkout to ship (default: $REPO_ROOT)
  --repo-url=URL         clone this repository on the workers instead of shipping --source
  --ref=REF              branch, tag or commit to check out with --repo-url (default: main)
  --remote-dir=DIR       install directory on the workers, relative to home (default: jaxvlm)
  --python=VERSION       Python for the venv, fetched by uv if missing (default: 3.11)
  --expect-devices=N     fail unless jax.device_count() == N (e.g. 8 for v5litepod-8)
$COMMON_HELP
USAGE
}

# The check run on every worker; optional argv[1] is the expected global device count.
VERIFY_PY=$(join_by '; ' 'import sys, jax' 'n = jax.device_count()' 'p = jax.devices()[0].platform' \
  'want = int(sys.argv[1]) if sys.argv[1:] else n' \
  'print(f"worker {jax.process_index()}/{jax.process_count()}: {jax.local_device_count()} local, {n} global {p} devices")' \
  'sys.exit(None if p == "tpu" and n == want else f"expected {want} tpu devices, jax sees {n} {p} devices")')

# code_steps ARCHIVE: remote commands (one per line) that put the code in REMOTE_DIR.
code_steps() {
  local dir
  dir=$(shell_quote "$FLAG_REMOTE_DIR")
  if [[ -n $FLAG_REPO_URL ]]; then
    printf '%s\n' "[ -d $dir/.git ] || git clone --quiet $(shell_quote "$FLAG_REPO_URL") $dir" \
      "git -C $dir fetch --quiet origin $(shell_quote "$FLAG_REF")" \
      "git -C $dir checkout --quiet --force FETCH_HEAD"
  else
    printf '%s\n' "mkdir -p $dir" "tar -xzf $1 -C $dir" "rm -f $1"
  fi
}

# setup_script ARCHIVE: the whole remote script as one line of '; '-separated commands.
setup_script() {
  local steps=() check=(.venv/bin/python -c "$VERIFY_PY")
  [[ -z $FLAG_EXPECT_DEVICES ]] || check+=("$FLAG_EXPECT_DEVICES")
  mapfile -t steps < <(code_steps "$1")
  steps=('set -euo pipefail' "${steps[@]}"
    "cd $(shell_quote "$FLAG_REMOTE_DIR")"
    'export PATH="$HOME/.local/bin:$PATH"'
    'command -v uv >/dev/null || python3 -m pip install --user --quiet uv'
    "uv venv --allow-existing --python $(shell_quote "$FLAG_PYTHON") .venv"
    "$(quote_words uv pip install --python .venv/bin/python -r requirements.txt 'jax[tpu]' \
      --find-links "$LIBTPU_INDEX")"
    "$(quote_words "${check[@]}")")
  join_by '; ' "${steps[@]}"
}

VALUE_FLAGS+=(worker source repo-url ref remote-dir python expect-devices)
parse_flags "$@"
require_flags name zone
((${#REST[@]} == 0)) || die "unexpected arguments after '--': ${REST[*]}"
: "${FLAG_WORKER:=all}" "${FLAG_SOURCE:=$REPO_ROOT}" "${FLAG_REF:=main}" "${FLAG_REMOTE_DIR:=jaxvlm}"
: "${FLAG_PYTHON:=3.11}"
check_worker "$FLAG_WORKER"
[[ -z $FLAG_EXPECT_DEVICES || $FLAG_EXPECT_DEVICES =~ ^[1-9][0-9]*$ ]] ||
  die "--expect-devices must be a positive integer (got '$FLAG_EXPECT_DEVICES')"
[[ -n $FLAG_REPO_URL || -f $FLAG_SOURCE/requirements.txt ]] ||
  die "--source=$FLAG_SOURCE has no requirements.txt; pass the repo root or --repo-url"

archive=jaxvlm-src.tar.gz  # on the workers, in the home directory
if [[ -z $FLAG_REPO_URL ]]; then
  local_archive=${TMPDIR:-/tmp}/jaxvlm-$FLAG_NAME.tar.gz
  scope_flags
  run git -C "$FLAG_SOURCE" archive --format=tar.gz --output="$local_archive" HEAD
  run gcloud compute tpus tpu-vm scp "$local_archive" "$FLAG_NAME:$archive" "${SCOPE[@]}" \
    --worker="$FLAG_WORKER"
  run rm -f "$local_archive"
fi
ssh_workers "$FLAG_WORKER" "$(setup_script "$archive")"
