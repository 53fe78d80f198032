# Voice by aiConnected — the two commands a newcomer needs are `make demo` and `make test`.
# Every target installs what it needs first (scripts/bootstrap.sh is idempotent).
SHELL := /bin/bash
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
export PATH := $(CURDIR)/$(BIN):$(HOME)/.cargo/bin:$(PATH)
# The make targets are development tooling: they say so. Deployments set ENVIRONMENT themselves (the
# code has no default and refuses to start without it; staging/production also need their secrets).
export ENVIRONMENT ?= development

.DEFAULT_GOAL := help
.PHONY: help setup services services-down demo up down test generate check-generated lint typecheck proto-lint \
        proto-breaking rust-check pytest lock bench-audio fuzz demo-cloud migrate gateway bench-gateway bootstrap bench-agent \
        tts tts-down bench-tts bench-events bench-bridge bench-turns

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

setup: ## venv with locked deps, Debian packages, audio_core built (idempotent)
	@bash scripts/bootstrap.sh

services: setup ## start PostgreSQL, Redis and NATS JetStream on loopback
	@bash scripts/services.sh up

services-down: ## stop the local services
	@bash scripts/services.sh down

tts: setup ## start the TTS node: real tritonserver (CPU, model tts) on :8101 and its HTTP facade on :8080
	@bash scripts/tts.sh up

tts-down: ## stop the TTS node (tritonserver and facade)
	@bash scripts/tts.sh down

bench-tts: setup ## TTS time to first audio / RTF at concurrency 1/4/16, Triton vs in-process; one JSON object
	@bash scripts/tts.sh triton-up >&2
	@$(PY) -m benchmarks.tts.bench

bench-turns: setup ## turn-taking at the caller, offline stack, 2 voices: premature endpoints, backchannels, barge-in, e2e, held-out WER; JSON
	@bash scripts/tts.sh triton-up >&2
	@ENVIRONMENT=$${ENVIRONMENT:-development} $(PY) -m benchmarks.turns.bench

demo: services tts ## the main job: the platform on this machine and a phone call to the demo AI agent
	@$(PY) -m services.control.migrate
	@$(PY) -m services.demo

demo-cloud: setup ## the demo call with Deepgram + Claude adapters (real SDKs) against local protocol peers
	@$(PY) -m tests.peers.demo

up: services tts ## start the platform's servers and leave them running (logs in .var/run/)
	@$(PY) -m services.demo --up

down: ## stop the platform's servers and the local services
	@$(PY) -m services.demo --down
	@bash scripts/tts.sh down
	@bash scripts/services.sh down

generate: setup ## regenerate Python code and mypy stubs from proto/
	@bash scripts/generate.sh voice

check-generated: setup ## fail if the checked-in generated code differs from proto/
	@bash scripts/generate.sh --check

lint: setup ## ruff
	@$(BIN)/ruff check .
	@$(BIN)/ruff format --check .

typecheck: setup ## mypy --strict on our packages
	@$(BIN)/mypy

proto-lint: setup ## buf lint (STANDARD)
	@$(BIN)/buf lint

proto-breaking: setup ## buf breaking against main (or the previous commit when on main)
	@bash scripts/proto_breaking.sh

rust-check: setup ## cargo clippy -D warnings and cargo test
	@cargo clippy --workspace --all-targets --quiet -- -D warnings
	@cargo test --workspace --quiet

pytest: services ## Python tests against the real local services
	@$(PY) -m services.control.migrate
	@$(BIN)/pytest -q

test: setup check-generated lint typecheck proto-lint proto-breaking rust-check pytest ## everything CI runs
	@echo "make test: all checks passed"

lock: ## re-resolve requirements.lock after editing pyproject.toml dependencies
	@$(BIN)/uv pip compile pyproject.toml --extra dev --python-version 3.11 \
	  --python-platform x86_64-manylinux_2_28 --quiet -o requirements.lock

bench-audio: setup ## audio_core legs vs PyAV / ctypes-libopus+soxr / libopus floor; prints one JSON object
	@ldconfig -p | grep -q 'libopus\.so' || { echo "installing libopus0 for the ctypes baseline" >&2; \
	  apt-get install -y -qq --no-install-recommends libopus0 >/dev/null; }
	@$(PY) -m benchmarks.audio.bench

FUZZ_SECONDS ?= 60
fuzz: setup ## cargo-fuzz each audio_core target for FUZZ_SECONDS (nightly; not in CI)
	@rustup toolchain list | grep -q nightly || rustup toolchain install nightly --profile minimal
	@cargo +nightly fuzz --version >/dev/null 2>&1 || cargo install cargo-fuzz --locked
	@cd audio_core && for t in rtp_parse opus_decode jitter_buffer; do \
	  echo "fuzzing $$t for $(FUZZ_SECONDS) s"; \
	  cargo +nightly fuzz run $$t -- -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048 || exit 1; \
	done

bench-agent: services ## agent cost per call (fixed-latency providers) and what callers hear (e2e, frame gaps, RSS, loop lag); JSON
	@bash scripts/tts.sh triton-up >&2
	@ENVIRONMENT=$${ENVIRONMENT:-development} $(PY) -m benchmarks.agent.bench

bench-bridge: services ## bridge added latency per direction, CPU per SIP call (G.711/Opus), max calls; JSON
	@$(PY) -m services.control.migrate >&2
	@ENVIRONMENT=$${ENVIRONMENT:-development} $(PY) -m benchmarks.bridge.bench

migrate: services ## apply pending control-plane migrations (forward-only, idempotent)
	@$(PY) -m services.control.migrate

gateway: migrate ## run the REST gateway on api_gateway.port (8000); needs the control plane (make up)
	@$(PY) -m gateway

bootstrap: migrate ## the operator's tenant + platform-admin API key on a fresh install (TENANT="Name")
	@$(PY) -m services.control.bootstrap --tenant "$${TENANT:-Operator}"

bench-events: services ## event publish rate (acked, pipelined), publish->handled latency at 1k/s, worker throughput; JSON
	@$(PY) -m benchmarks.events.bench

bench-gateway: services ## GET /v1/agents/{id} via the gateway (vegeta) vs GetAgent via ghz; prints JSON
	@$(PY) -m benchmarks.gateway.bench
