#!/bin/sh
# The interpreter of jaxvlm's Bazel Python toolchain: the active virtualenv's python (see BUILD).
if [ -z "${VIRTUAL_ENV:-}" ] || [ ! -x "$VIRTUAL_ENV/bin/python" ]; then
  echo "jaxvlm's Bazel tests run on the active virtualenv's python, but VIRTUAL_ENV='${VIRTUAL_ENV:-}'" \
    "has none: activate it first (. .venv/bin/activate), then run bazel." >&2
  exit 1
fi
exec "$VIRTUAL_ENV/bin/python" "$@"
