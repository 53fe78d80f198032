#!/usr/bin/env bash
# The TTS node on loopback: the real NVIDIA Triton server (CPU) serving tts_triton/model_repository, and
# the HTTP facade (spec 3.5.4) in front of it.
#   scripts/tts.sh up|down|status|restart      (both)
#   scripts/tts.sh triton-up                    (Triton only: what the tests need)
# `up` is idempotent: it fetches the `tritonserver` binary from PyPI's nvidia-pytriton wheel once (the wheel is
# only unpacked, never installed: its numpy<2 / tritonclient pins conflict with our lock), places the
# Python 3.11 backend stub into the python backend folder, starts the server and waits until the `tts`
# model is ready. Ports: VOICE_TRITON_HTTP_PORT (8100), VOICE_TRITON_GRPC_PORT (8101),
# VOICE_TRITON_METRICS_PORT (8102). Extra server flags: VOICE_TRITON_ARGS (e.g. --model-config-name=gpu).
# Facade port: CHATTERBOX_SERVICE__PORT (8080); it also serves voice.v1.TtsService on
# CHATTERBOX_SERVICE__GRPC_PORT (50055). Logs and pids under $VOICE_VAR_DIR/tts (default .var/tts).
# A running server whose model code differs from the checkout (hash of tts_triton/ and the settings) is
# restarted by `up`, so tests never run against stale model code.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

VAR=${VOICE_VAR_DIR:-$PWD/.var}
VENV=${VENV:-.venv}
HTTP_PORT=${VOICE_TRITON_HTTP_PORT:-8100}
GRPC_PORT=${VOICE_TRITON_GRPC_PORT:-8101}
METRICS_PORT=${VOICE_TRITON_METRICS_PORT:-8102}
MODEL_REPO=${VOICE_TRITON_MODEL_REPOSITORY:-$PWD/tts_triton/model_repository}
PYTRITON_VERSION=0.7.0
WHEEL=nvidia_pytriton-${PYTRITON_VERSION}-py3-none-manylinux_2_35_x86_64.whl
WHEEL_SHA256=21f063ff93bb426d0c06b7a55e7eb9efcfe62c0dddd9a908e9877e18710128df
TRITON_HOME=$VAR/tritonserver-$PYTRITON_VERSION
TRITON=$TRITON_HOME/pytriton/tritonserver
STUB_SITE=$VAR/triton-site
RUN=$VAR/tts
PIDFILE=$RUN/tritonserver.pid
LOG=$RUN/tritonserver.log
FACADE_PORT=${CHATTERBOX_SERVICE__PORT:-8080}
FACADE_PIDFILE=$RUN/facade.pid
FACADE_LOG=$RUN/facade.log

ensure_tritonserver() {
  [ -x "$VENV/bin/python" ] || bash scripts/bootstrap.sh
  if [ ! -x "$TRITON/bin/tritonserver" ]; then
    step "fetching tritonserver from PyPI (nvidia-pytriton $PYTRITON_VERSION, ~55 MB, once)"
    local dl="$VAR/downloads"
    mkdir -p "$dl"
    if ! echo "$WHEEL_SHA256  $dl/$WHEEL" | sha256sum -c --status 2>/dev/null; then
      "$VENV/bin/python" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
        --python-version 3.11 --platform manylinux_2_35_x86_64 -d "$dl" "nvidia-pytriton==$PYTRITON_VERSION"
      echo "$WHEEL_SHA256  $dl/$WHEEL" | sha256sum -c --status || die "checksum mismatch for $dl/$WHEEL"
    fi
    rm -rf "$TRITON_HOME.tmp"
    "$VENV/bin/python" -m zipfile -e "$dl/$WHEEL" "$TRITON_HOME.tmp"
    # zip archives do not keep the executable bit.
    chmod +x "$TRITON_HOME.tmp/pytriton/tritonserver/bin/tritonserver" \
      "$TRITON_HOME.tmp"/pytriton/tritonserver/python_backend_stubs/*/triton_python_backend_stub
    rm -rf "$TRITON_HOME" && mv "$TRITON_HOME.tmp" "$TRITON_HOME"
  fi
  # Packages for the stub's interpreter, separate from .venv: the stub needs numpy<2 (see the file).
  local want; want=$(sha256sum tts_triton/stub-requirements.txt | cut -c1-16)
  if [ "$(cat "$STUB_SITE/.hash" 2>/dev/null)" != "$want" ]; then
    step "installing the Triton stub's Python packages into $STUB_SITE"
    rm -rf "$STUB_SITE"
    "$VENV/bin/uv" pip install --quiet --no-deps --target "$STUB_SITE" --python-version 3.11 \
      --python-platform x86_64-manylinux_2_28 -r tts_triton/stub-requirements.txt
    echo "$want" >"$STUB_SITE/.hash"
  fi
  # The python backend runs each model instance in this stub; it embeds the system's libpython3.11.
  local stub="$TRITON/backends/python/triton_python_backend_stub"
  [ -x "$stub" ] || install -m 0755 "$TRITON/python_backend_stubs/3.11/triton_python_backend_stub" "$stub"
  ldconfig -p 2>/dev/null | grep -q 'libpython3.11.so.1.0' || [ -e /usr/lib/x86_64-linux-gnu/libpython3.11.so.1.0 ] \
    || die "libpython3.11 (Debian package libpython3.11) is needed by the Triton python backend stub"
}

running() { [ -s "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }
ready() { curl -fs -o /dev/null "http://127.0.0.1:$HTTP_PORT/v2/models/tts/ready"; }
code_hash() {
  cat $(find tts_triton services/shared/settings.py services/agent/providers/tts -type f \
    \( -name '*.py' -o -name '*.pbtxt' -o -name '*.txt' \) | sort) scripts/tts.sh | sha256sum | cut -c1-16
}

triton_up() {
  if ready && [ "$(cat "$RUN/code.hash" 2>/dev/null)" = "$(code_hash)" ]; then return; fi
  if running; then
    step "restarting tritonserver (pid $(cat "$PIDFILE")): not ready, or its model code changed"
    triton_down
  fi
  port_open 127.0.0.1 "$GRPC_PORT" && die "port $GRPC_PORT is taken by another process (not our tritonserver)"
  ensure_tritonserver
  mkdir -p "$RUN"
  step "starting tritonserver on 127.0.0.1:$GRPC_PORT (gRPC), :$HTTP_PORT (HTTP), :$METRICS_PORT (metrics)"
  # The stub's interpreter is the system Python 3.11 (isolated: it ignores PYTHONPATH); model.py puts
  # TTS_TRITON_PYTHONPATH on sys.path: the repository (tts_triton, services.shared) and the stub's own
  # packages (numpy<2, soxr, pydantic). The voice storage path is made absolute, so the model reads the
  # same directory as the HTTP facade started from the repository root.
  # setsid: the server gets its own process group so `down` can stop it and its stubs together.
  LD_LIBRARY_PATH="$TRITON_HOME/nvidia_pytriton.libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
  TTS_TRITON_PYTHONPATH="$PWD:$STUB_SITE" \
  CHATTERBOX_SERVICE__STORAGE_PATH="$(realpath -m "${CHATTERBOX_SERVICE__STORAGE_PATH:-.var/voices}")" \
    setsid nohup "$TRITON/bin/tritonserver" \
      --model-repository="$MODEL_REPO" \
      --backend-directory="$TRITON/backends" \
      --cache-directory="$TRITON/caches" \
      --http-address=127.0.0.1 --http-port="$HTTP_PORT" \
      --grpc-address=127.0.0.1 --grpc-port="$GRPC_PORT" \
      --metrics-address=127.0.0.1 --metrics-port="$METRICS_PORT" \
      --allow-cpu-metrics=true --allow-gpu-metrics=false \
      --strict-readiness=true --exit-on-error=true --exit-timeout-secs=5 \
      --log-info=true --log-warning=true --log-error=true \
      ${VOICE_TRITON_ARGS:-} >"$LOG" 2>&1 </dev/null 9>&- &
  echo $! >"$PIDFILE"
  code_hash >"$RUN/code.hash"
  local i
  for ((i = 0; i < 600; i++)); do
    ready && return
    running || { tail -n 40 "$LOG" >&2; die "tritonserver exited during start-up; log: $LOG"; }
    sleep 0.1
  done
  tail -n 40 "$LOG" >&2
  die "tritonserver did not become ready within 60 s; log: $LOG"
}

facade_running() { [ -s "$FACADE_PIDFILE" ] && kill -0 "$(cat "$FACADE_PIDFILE")" 2>/dev/null; }
facade_ready() { curl -fs -o /dev/null "http://127.0.0.1:$FACADE_PORT/health"; }

facade_up() {
  if facade_running && facade_ready && [ "$(cat "$RUN/facade.hash" 2>/dev/null)" = "$(code_hash)" ]; then return; fi
  facade_down
  port_open 127.0.0.1 "$FACADE_PORT" && die "port $FACADE_PORT is taken by another process (not our TTS facade)"
  step "starting the TTS HTTP facade on 127.0.0.1:$FACADE_PORT"
  CHATTERBOX_SERVICE__STORAGE_PATH="$(realpath -m "${CHATTERBOX_SERVICE__STORAGE_PATH:-.var/voices}")" \
    setsid nohup "$VENV/bin/python" -m tts_triton.facade --port "$FACADE_PORT" >"$FACADE_LOG" 2>&1 </dev/null 9>&- &
  echo $! >"$FACADE_PIDFILE"
  code_hash >"$RUN/facade.hash"
  local i
  for ((i = 0; i < 300; i++)); do
    facade_ready && return
    facade_running || { tail -n 20 "$FACADE_LOG" >&2; die "the TTS facade exited during start-up; log: $FACADE_LOG"; }
    sleep 0.1
  done
  die "the TTS facade did not answer /health within 30 s; log: $FACADE_LOG"
}

facade_down() {
  if facade_running; then
    local pid; pid=$(cat "$FACADE_PIDFILE")
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$FACADE_PIDFILE"
}

triton_down() {
  if running; then
    local pid; pid=$(cat "$PIDFILE")
    # SIGTERM lets Triton unload the model (finalize) and stop its stub processes.
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true; fi
    # The python backend stubs inherit the listening sockets and outlive the server for a moment; the
    # ports are free only when its whole process group is gone.
    for _ in $(seq 100); do
      port_open 127.0.0.1 "$GRPC_PORT" || port_open 127.0.0.1 "$HTTP_PORT" || break
      sleep 0.1
    done
    kill -KILL -- "-$pid" 2>/dev/null || true
  fi
  rm -f "$PIDFILE"
}

down() { facade_down; triton_down; }

status() {
  local ok=0
  if ready; then
    echo "tritonserver up    127.0.0.1:$GRPC_PORT (gRPC) :$HTTP_PORT (HTTP) :$METRICS_PORT (metrics), model tts ready"
  elif running; then
    echo "tritonserver starting (pid $(cat "$PIDFILE")), model tts not ready; log: $LOG"; ok=1
  else
    echo "tritonserver down  127.0.0.1:$GRPC_PORT"; ok=1
  fi
  if facade_ready; then echo "tts facade   up    http://127.0.0.1:$FACADE_PORT (/synthesize, /voices, /health, /metrics), gRPC TtsService :${CHATTERBOX_SERVICE__GRPC_PORT:-50055}"
  else echo "tts facade   down  http://127.0.0.1:$FACADE_PORT"; ok=1; fi
  return $ok
}

# One start/stop at a time: concurrent test sessions may call `up` at once. (The servers are started with
# fd 9 closed, or they would hold the lock for as long as they run.)
mkdir -p "$RUN"
exec 9>"$RUN/.lock"
flock -w 300 9 || die "another scripts/tts.sh has held $RUN/.lock for 5 minutes"

case "${1:-status}" in
  up) triton_up; facade_up; status ;;
  triton-up) triton_up ;;
  down) down; echo "TTS node stopped" ;;
  restart) down; triton_up; facade_up; status ;;
  status) status ;;
  *) die "usage: $0 up|triton-up|down|status|restart" ;;
esac
