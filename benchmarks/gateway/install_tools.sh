#!/usr/bin/env bash
# Installs ghz (gRPC load generator), grpcurl and vegeta (HTTP load generator) with `go install` into .var/go/bin (idempotent).
set -euo pipefail
cd "$(dirname "$0")/../.."
GOBIN_DIR=${GOBIN:-$PWD/.var/go/bin}
GHZ_VERSION=${GHZ_VERSION:-v0.120.0}
GRPCURL_VERSION=${GRPCURL_VERSION:-v1.9.3}
VEGETA_VERSION=${VEGETA_VERSION:-v12.12.0}
mkdir -p "$GOBIN_DIR"
command -v go >/dev/null 2>&1 || { echo "go is required to install ghz and grpcurl (apt-get install golang-go)" >&2; exit 1; }
if [ ! -x "$GOBIN_DIR/ghz" ]; then
  echo "installing ghz $GHZ_VERSION into $GOBIN_DIR" >&2
  GOBIN="$GOBIN_DIR" go install "github.com/bojand/ghz/cmd/ghz@$GHZ_VERSION" >&2
fi
if [ ! -x "$GOBIN_DIR/grpcurl" ]; then
  echo "installing grpcurl $GRPCURL_VERSION into $GOBIN_DIR" >&2
  GOBIN="$GOBIN_DIR" go install "github.com/fullstorydev/grpcurl/cmd/grpcurl@$GRPCURL_VERSION" >&2
fi
if [ ! -x "$GOBIN_DIR/vegeta" ]; then
  echo "installing vegeta $VEGETA_VERSION (constant-rate HTTP load) into $GOBIN_DIR" >&2
  GOBIN="$GOBIN_DIR" go install "github.com/tsenart/vegeta/v12@$VEGETA_VERSION" >&2
fi
echo "$GOBIN_DIR"
