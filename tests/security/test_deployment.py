"""A deployment that forgot its configuration does not start: no silent ENVIRONMENT, no generated
secrets, plaintext channels or test switches in staging/production."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from services.shared.deployment import check_deployment, deployment_problems
from services.shared.settings import Settings, SettingsError, load_settings

REPO = Path(__file__).resolve().parents[2]


def test_production_without_secrets_is_refused(settings: Settings) -> None:
    prod = load_settings(environment="production")
    problems = "\n".join(deployment_problems(prod))
    for name in ("JWT_SECRET", "INTERNAL_AUTH_SECRET", "TOOL_WEBHOOK_SECRET"):
        assert name in problems
    with pytest.raises(SettingsError):
        check_deployment(prod)
    unsafe = load_settings(
        environment="production",
        jwt_secret="j" * 32,
        internal_auth_secret="i" * 32,
        tool_webhook_secret="t" * 32,
        internal_tls={"mode": "plaintext"},
        outbound_http={"allowed_networks": ["127.0.0.0/8"]},
        chatterbox_service={"http_authentication": False},
    )
    assert len(deployment_problems(unsafe)) == 3
    assert deployment_problems(load_settings(environment="development")) == []


def test_a_service_without_environment_refuses_to_start() -> None:
    env = {k: v for k, v in os.environ.items() if k != "ENVIRONMENT"}
    run = subprocess.run(
        [sys.executable, "-m", "services.worker"],
        check=False,
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2 and "ENVIRONMENT must be set" in run.stderr
