"""What a process checks before it serves: the deployment says what it is, and production has its
secrets. A forgotten configuration must stop a staging or production process at start, not run it
with generated secrets or plaintext channels.

`ENVIRONMENT` has no default: every process must be told (development, test, staging or production).
The Makefile's targets, the demo and the test suite say `development` / `test` explicitly.
"""

from __future__ import annotations

from services.shared.settings import Settings, SettingsError

# Secrets that development may generate locally (services/control/auth.py) or leave unset.
PRODUCTION_SECRETS = ("jwt_secret", "internal_auth_secret", "tool_webhook_secret")


def deployment_problems(settings: Settings) -> list[str]:
    """Each reason this process must not start, naming the environment variable to set."""
    if settings.environment is None:
        return ["ENVIRONMENT must be set: development, test, staging or production"]
    if settings.environment not in ("staging", "production"):
        return []
    problems = [
        f"{name.upper()} must be set in {settings.environment}"
        for name in PRODUCTION_SECRETS
        if getattr(settings, name) is None
    ]
    if settings.internal_tls.mode != "mtls":
        problems.append(f"INTERNAL_TLS__MODE must be mtls in {settings.environment}")
    if not settings.chatterbox_service.http_authentication:
        problems.append(f"CHATTERBOX_SERVICE__HTTP_AUTHENTICATION must be true in {settings.environment}")
    if settings.outbound_http.allowed_networks:
        problems.append(
            f"OUTBOUND_HTTP__ALLOWED_NETWORKS must be empty in {settings.environment} (tests only)"
        )
    return problems


def check_deployment(settings: Settings) -> None:
    """Raises SettingsError listing every problem (see deployment_problems)."""
    problems = deployment_problems(settings)
    if problems:
        raise SettingsError("refusing to start:\n  " + "\n  ".join(problems))
