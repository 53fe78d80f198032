#!/usr/bin/env bash
# Starts Triton with the GPU model configuration, waits for model `tts`, then runs the HTTP facade.
# Either process exiting stops the container (the orchestrator restarts it).
set -euo pipefail
[ -d "$CHATTERBOX_SERVICE__WEIGHTS_PATH" ] || { echo "no weights at $CHATTERBOX_SERVICE__WEIGHTS_PATH (mount them at /models)" >&2; exit 1; }
mkdir -p "$CHATTERBOX_SERVICE__STORAGE_PATH"
tritonserver --model-repository=/opt/voice/tts_triton/model_repository --model-config-name=gpu \
  --strict-readiness=true --exit-on-error=true --exit-timeout-secs=10 "$@" &
triton=$!
for _ in $(seq 600); do
  curl -fs -o /dev/null http://127.0.0.1:8000/v2/models/tts/ready && break
  kill -0 "$triton" 2>/dev/null || { echo "tritonserver exited during start-up" >&2; exit 1; }
  sleep 0.5
done
/opt/facade/bin/python -m tts_triton.facade &
facade=$!
trap 'kill -TERM "$triton" "$facade" 2>/dev/null' TERM INT
wait -n "$triton" "$facade"
status=$?
kill -TERM "$triton" "$facade" 2>/dev/null || true
wait || true
exit "$status"
