#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian machine: system packages, the project venv (locked deps),
# and the Rust extension built into it. Safe to run again; each step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

VENV=${VENV:-.venv}
UV_VERSION=0.13.9

# Debian packages the platform runs on: PostgreSQL 15, Redis 7, espeak-ng (offline TTS),
# cmake + a C toolchain (libopus is built from source inside the Rust crate), libopus0 for the
# ctypes baseline of `make bench-audio`, libpython3.11 (embedded by the Triton python backend stub that
# scripts/tts.sh runs), curl (its health checks), openssl (the local CA of scripts/certs.sh), sip-tester
# (SIPp: the phone network of the bridge tests).
need_pkgs=()
for pkg in postgresql redis-server espeak-ng libopus0 cmake build-essential pkg-config libpython3.11 curl openssl sip-tester; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_pkgs+=("$pkg")
done
if ((${#need_pkgs[@]})); then
  step "installing Debian packages: ${need_pkgs[*]}"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
fi
command -v cargo >/dev/null 2>&1 || die "cargo (Rust >= 1.82) is required to build audio_core; install it with rustup"

if [ ! -x "$VENV/bin/python" ]; then
  step "creating $VENV (Python 3.11)"
  PY=$(command -v python3.11 || command -v python3)
  "$PY" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' || die "Python 3.11 is required (found $("$PY" --version))"
  "$PY" -m venv "$VENV"
fi
if ! "$VENV/bin/uv" --version 2>/dev/null | grep -q "$UV_VERSION"; then
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check "uv==$UV_VERSION"
fi

lock_hash=$(sha256sum requirements.lock pyproject.toml | sha256sum | cut -c1-16)
if [ "$(cat "$VENV/.lock-hash" 2>/dev/null)" != "$lock_hash" ]; then
  step "installing locked Python dependencies (requirements.lock)"
  VIRTUAL_ENV="$VENV" "$VENV/bin/uv" pip sync --quiet requirements.lock
  echo "$lock_hash" >"$VENV/.lock-hash"
  rm -f "$VENV/.native-hash"
fi

# Wheels used only for data files they ship (the Smart Turn model in pipecat-ai), installed without
# their dependencies (which conflict with the lock) and pinned by hash; `uv pip sync` removes them.
nodeps_hash=$(sha256sum requirements-nodeps.txt | cut -c1-16)
if [ "$(cat "$VENV/.nodeps-hash" 2>/dev/null)" != "$nodeps_hash" ] || ! "$VENV/bin/python" -c 'import importlib.metadata as m; m.version("pipecat-ai")' 2>/dev/null; then
  step "installing data-only wheels without dependencies (requirements-nodeps.txt)"
  VIRTUAL_ENV="$VENV" "$VENV/bin/uv" pip install --quiet --no-deps --require-hashes -r requirements-nodeps.txt
  echo "$nodeps_hash" >"$VENV/.nodeps-hash"
fi

native_hash=$(cat Cargo.toml audio_core/Cargo.toml $(find audio_core/src -type f | sort) 2>/dev/null | sha256sum | cut -c1-16)
if [ "$(cat "$VENV/.native-hash" 2>/dev/null)" != "$native_hash" ] || ! "$VENV/bin/python" -c 'import audio_core' 2>/dev/null; then
  step "building audio_core (Rust, release) into $VENV"
  VIRTUAL_ENV="$VENV" PATH="$PWD/$VENV/bin:$PATH" "$VENV/bin/maturin" develop --release --uv --quiet 2>&1 | grep -v '^📦\|^🔗\|^🐍\|^📡' || true
  "$VENV/bin/python" -c 'import audio_core; print("audio_core", audio_core.native_version())' \
    || die "audio_core failed to build or import"
  echo "$native_hash" >"$VENV/.native-hash"
fi

# Certificates for mutual TLS between the services (local CA; kept while valid).
bash scripts/certs.sh
