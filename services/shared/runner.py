"""Entry point shared by the services: settings, logging, uvloop, serve until signalled."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable

import uvloop

from services.shared.deployment import check_deployment
from services.shared.grpc_server import GrpcServer, run_until_signalled
from services.shared.logging import configure_logging
from services.shared.service_identity import with_identity
from services.shared.settings import Settings, SettingsError, load_settings


def run_service(name: str, build: Callable[[Settings], GrpcServer]) -> None:
    """Runs the service `name`; exits with status 2 and the offending variables on bad settings."""
    try:
        settings = load_settings()
        check_deployment(settings)
    except SettingsError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    if not settings.internal_tls.identity:
        # The service presents its own certificate on the channels it opens to other services.
        settings = with_identity(settings, name)
    configure_logging(
        name, level=settings.log_level, fmt=settings.log_format, instance=settings.instance_id or None
    )
    server = build(settings)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(run_until_signalled(server))
