"""Fixtures shared by the whole suite."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from services.shared.settings import Settings, load_settings

REPO = Path(__file__).resolve().parents[1]

# The suite runs as a development deployment, said explicitly (there is no silent default), with mutual
# TLS between services as in production: certificates of the local CA from scripts/certs.sh.
os.environ.setdefault("ENVIRONMENT", "development")
# Agents in the suite share their process (and the machine's cores) with the test's own callers: their
# CPU and loop lag say little about the agent, so load refusals stay off unless a test sets its limits
# (tests/agent/test_capacity.py).
os.environ.setdefault("AGENT_SERVICE__CAPACITY__MAX_LOOP_LAG_MS", "1000000")
os.environ.setdefault("AGENT_SERVICE__CAPACITY__MAX_CPU_PERCENT", "1000000")


@pytest.fixture(scope="session")
def settings() -> Settings:
    """Settings from the environment; defaults reach the local services of scripts/services.sh."""
    return load_settings()


@pytest.fixture(scope="session")
def triton(settings: Settings) -> str:
    """The gRPC address of the real Triton server with model `tts` (offline engine), started once by
    scripts/tts.sh (idempotent; restarts a server running stale model code)."""
    result = subprocess.run(
        ["bash", "scripts/tts.sh", "triton-up"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(f"scripts/tts.sh triton-up failed:\n{result.stdout}\n{result.stderr}")
    return settings.agent_service.tts.triton_url


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--live",
        action="store_true",
        default=False,
        help="also run the tests marked `live` against the real cloud APIs (needs DEEPGRAM_API_KEY and "
        "ANTHROPIC_API_KEY)",
    )


def pytest_configure(config: pytest.Config) -> None:
    # Idempotent and quick when the certificates exist (make setup creates them).
    subprocess.run(["bash", "scripts/certs.sh"], cwd=REPO, check=True, capture_output=True, timeout=60)
    config.addinivalue_line("markers", "live: talks to real cloud APIs; runs only with --live and keys")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--live"):
        return
    skip = pytest.mark.skip(reason="talks to real cloud APIs: run with --live (and real keys)")
    for item in items:
        if "live" in item.keywords:
            item.add_marker(skip)
