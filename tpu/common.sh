# Shared flag parsing and helpers for the tpu/*.sh scripts. Sourced, never executed.
#
# A script sources this file, defines `usage` (its --help text), appends its own flag names to
# VALUE_FLAGS / LIST_FLAGS / BOOL_FLAGS, then calls `parse_flags "$@"`. Flag `--foo-bar` lands in the
# variable FLAG_FOO_BAR (a bash array for LIST_FLAGS, 0/1 for BOOL_FLAGS); words after `--` land in
# REST. Every external command goes through `run`, so `--dry-run` prints exactly what would execute.

set -euo pipefail

SCRIPT_NAME=$(basename "$0")
TPU_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(dirname "$TPU_DIR")

VALUE_FLAGS=(name zone project)  # --flag=VALUE or --flag VALUE
LIST_FLAGS=()                    # repeatable --flag=VALUE, collected in order
BOOL_FLAGS=(dry-run)             # --flag
REST=()

COMMON_HELP="Common flags:
  --name=NAME        TPU VM name (required)
  --zone=ZONE        Cloud zone, e.g. us-west4-a (required)
  --project=PROJECT  Google Cloud project (default: gcloud's configured project)
  --dry-run          print the commands (one per line, shell-quoted) instead of running them
  -h, --help         show this help"

die() {
  printf '%s: error: %s\n' "$SCRIPT_NAME" "$*" >&2
  printf "Run '%s --help' for usage.\n" "$SCRIPT_NAME" >&2
  exit 2
}

# flag_var FLAG -> the variable name holding --FLAG (dashes -> underscores, upper case).
flag_var() {
  local v=${1//-/_}
  printf 'FLAG_%s' "${v^^}"
}

_in_list() {
  local needle=$1 item
  shift
  for item in "$@"; do [[ $item == "$needle" ]] && return 0; done
  return 1
}

_set_flag() {  # _set_flag KEY VALUE
  local key=$1 value=$2 var
  var=$(flag_var "$key")
  if _in_list "$key" "${LIST_FLAGS[@]}"; then
    local -n list_ref=$var
    list_ref+=("$value")
  else
    printf -v "$var" '%s' "$value"
  fi
}

parse_flags() {
  local key var
  for key in "${VALUE_FLAGS[@]}" "${BOOL_FLAGS[@]}"; do
    var=$(flag_var "$key")
    if _in_list "$key" "${BOOL_FLAGS[@]}"; then printf -v "$var" 0; else printf -v "$var" ''; fi
  done
  for key in "${LIST_FLAGS[@]}"; do
    eval "$(flag_var "$key")=()"
  done
  while (($#)); do
    case $1 in
      -h | --help) usage; exit 0 ;;
      --) shift; REST=("$@"); return 0 ;;
      --*=*)
        key=${1%%=*}
        key=${key#--}
        _in_list "$key" "${BOOL_FLAGS[@]}" && die "--$key takes no value"
        _in_list "$key" "${VALUE_FLAGS[@]}" "${LIST_FLAGS[@]}" || die "unknown flag --$key"
        _set_flag "$key" "${1#*=}"
        shift ;;
      --*)
        key=${1#--}
        if _in_list "$key" "${BOOL_FLAGS[@]}"; then
          printf -v "$(flag_var "$key")" 1
          shift
        elif _in_list "$key" "${VALUE_FLAGS[@]}" "${LIST_FLAGS[@]}"; then
          # A following flag is a forgotten value, not the value: use --key=--x for that.
          (($# >= 2)) && [[ $2 != --* ]] || die "--$key needs a value"
          _set_flag "$key" "$2"
          shift 2
        else
          die "unknown flag --$key"
        fi ;;
      *) die "unexpected argument '$1' (put a command after '--')" ;;
    esac
  done
}

# require_flags FLAG... : fail naming every required flag that is empty.
require_flags() {
  local key var missing=()
  for key in "$@"; do
    var=$(flag_var "$key")
    [[ -n ${!var} ]] || missing+=("--$key")
  done
  ((${#missing[@]} == 0)) || die "missing required flag(s): ${missing[*]}"
}

# shell_quote WORD: WORD as one POSIX-shell word, quoted only when it has special characters.
shell_quote() {
  local s=$1 q="'\\''"
  if [[ -n $s && $s != *[!A-Za-z0-9_@%+=:,./-]* ]]; then
    printf '%s' "$s"
  else
    printf "'%s'" "${s//\'/$q}"
  fi
}

# quote_words WORD...: the words shell-quoted and joined by single spaces.
quote_words() {
  local word sep=''
  for word in "$@"; do
    printf '%s' "$sep"
    shell_quote "$word"
    sep=' '
  done
}

# run CMD ARG...: execute, or with --dry-run print the command as one shell-quoted line.
run() {
  if ((FLAG_DRY_RUN)); then
    printf '%s\n' "$(quote_words "$@")"
  else
    "$@"
  fi
}

# The flags that place every gcloud call: --zone and, if given, --project.
scope_flags() {
  SCOPE=(--zone="$FLAG_ZONE")
  [[ -z $FLAG_PROJECT ]] || SCOPE+=(--project="$FLAG_PROJECT")
}

# ssh_workers WORKER REMOTE_SCRIPT: run a shell script on the TPU VM's workers (`all`, `0`, `0,2`).
ssh_workers() {
  local worker=$1 script=$2
  scope_flags
  run gcloud compute tpus tpu-vm ssh "$FLAG_NAME" "${SCOPE[@]}" --worker="$worker" --command="$script"
}

# check_worker SPEC: `all` or a comma-separated list of worker indices.
check_worker() {
  [[ $1 == all || $1 =~ ^[0-9]+(,[0-9]+)*$ ]] || die "--worker must be 'all' or indices like 0 or 0,2 (got '$1')"
}

# join_by SEP WORD...: the words joined by SEP.
join_by() {
  local sep=$1 out=$2 word
  shift 2
  for word in "$@"; do out+=$sep$word; done
  printf '%s' "$out"
}
