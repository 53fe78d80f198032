#!/usr/bin/env bash
# `buf breaking`: contracts change compatibly. On a branch, compare with main; on main itself, compare
# with the previous commit. Skipped (with a message) when the reference has no protos yet.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
BUF=${VENV:-.venv}/bin/buf

branch=$(git rev-parse --abbrev-ref HEAD 2>/dev/null || echo HEAD)
if [ "$branch" != main ] && git rev-parse -q --verify main >/dev/null; then ref=main; else ref=HEAD~1; fi
if ! git rev-parse -q --verify "$ref^{commit}" >/dev/null || [ -z "$(git ls-tree -r --name-only "$ref" -- proto | grep '\.proto$' || true)" ]; then
  echo "buf breaking: skipped, $ref has no protos to compare against"
  exit 0
fi
"$BUF" breaking --against ".git#ref=$(git rev-parse "$ref")"
echo "buf breaking: no breaking change against $ref"
