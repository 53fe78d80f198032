#!/usr/bin/env bash
# Generates the Python package `voice` (messages, gRPC stubs, mypy stubs) from proto/.
#   scripts/generate.sh OUTDIR   write the package under OUTDIR (the repo root: `make generate`)
#   scripts/generate.sh --check  fail if the checked-in package differs from a fresh generation
# The generated code is never edited by hand.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
PY=$(realpath "${VENV:-.venv}")/bin/python
export PATH="$(dirname "$PY"):$PATH"

generate_into() {
  local out=$1 wkt
  wkt=$("$PY" -c 'import grpc_tools, os; print(os.path.join(os.path.dirname(grpc_tools.__file__), "_proto"))')
  rm -rf "$out/voice"
  mkdir -p "$out"
  mapfile -t protos < <(cd proto && find voice -name '*.proto' | sort)
  (cd proto && "$PY" -m grpc_tools.protoc -I . -I ../third_party/googleapis -I "$wkt" \
    --python_out="$out" --grpc_python_out="$out" --mypy_out="$out" --mypy_grpc_out="$out" "${protos[@]}" 2>&1 | { grep -v "^Writing mypy to" || true; } >&2)
  local header='"""Generated from proto/ by scripts/generate.sh (`make generate`). Do not edit."""'
  find "$out/voice" -type d -exec sh -c 'printf "%s\n" "$1" > "$0/__init__.py"' {} "$header" \;
  touch "$out/voice/py.typed"
}

if [ "${1:-}" = "--check" ]; then
  tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
  generate_into "$tmp"
  if ! diff -r -q "$tmp/voice" voice >/dev/null 2>&1; then
    diff -r "$tmp/voice" voice | head -40 >&2 || true
    die "generated code in voice/ is stale or hand-edited: run 'make generate' and commit the result"
  fi
  echo "generated code is up to date"
else
  out=${1:?usage: $0 OUTDIR|--check}
  [ "$out" = voice ] && out=.
  generate_into "$(cd "$out" && pwd)"
  echo "generated voice/ from proto/"
fi
