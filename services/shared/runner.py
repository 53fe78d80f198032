"""Entry point shared by the services: settings, logging, uvloop, serve until signalled."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable

import uvloop

from services.shared.deployment import check_deployment
from services.shared.grpc_server import GrpcServer, run_until_signalled
from services.shared.logging import configure_logging
from services.shared.processes import Supervisor, is_child, process_count
from services.shared.service_identity import with_identity
from services.shared.settings import ServerSettings, Settings, SettingsError, load_settings


def run_service(
    name: str,
    build: Callable[[Settings], GrpcServer],
    *,
    processes: Callable[[Settings], tuple[str, ServerSettings, int]] | None = None,
) -> None:
    """Runs the service `name`; exits with status 2 and the offending variables on bad settings.

    With `processes` (settings -> (section's variable prefix, its server settings, configured count)),
    a count other than 1 runs that many copies on one port under a supervisor (services/shared/
    processes.py); each copy then runs here as a single process."""
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
    if processes is not None and not is_child():
        section, server_settings, configured = processes(settings)
        count = process_count(configured)
        if count > 1:
            supervisor = Supervisor(
                f"services.{name}",
                section,
                count,
                host=server_settings.host,
                port=server_settings.grpc_port,
                metrics_port=server_settings.metrics_port,
            )
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                raise SystemExit(runner.run(supervisor.run()))
    server = build(settings)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(run_until_signalled(server))
