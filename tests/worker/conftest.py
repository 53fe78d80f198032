"""The worker against real services: a private nats-server (so its consumers see only this session's
events), a fresh migrated PostgreSQL schema with a control plane on it, the shared Redis."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from services.shared.events_publisher import EventPublisher
from services.shared.settings import Settings
from services.worker.server import WorkerServer
from tests.control.env import ControlPlane, control_plane
from tests.events.nats_server import PrivateNats

LOOPBACK_VAR = "OUTBOUND_HTTP__ALLOWED_NETWORKS"


@pytest.fixture(scope="session")
async def worker_nats(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[PrivateNats]:
    server = PrivateNats(tmp_path_factory.mktemp("worker-nats"))
    await server.start()
    yield server
    await server.stop()


@pytest.fixture(scope="session")
async def cp(settings: Settings) -> AsyncIterator[ControlPlane]:
    """A control plane that accepts the loopback webhook receivers of these tests (its settings are read
    from the environment when it starts; the variable is set only for that moment)."""
    async with contextlib.AsyncExitStack() as stack:
        previous = os.environ.get(LOOPBACK_VAR)
        os.environ[LOOPBACK_VAR] = '["127.0.0.0/8"]'
        try:
            plane = await stack.enter_async_context(control_plane(settings))
        finally:
            if previous is None:
                del os.environ[LOOPBACK_VAR]
            else:
                os.environ[LOOPBACK_VAR] = previous
        yield plane


def worker_settings(cp: ControlPlane, nats: PrivateNats, spool: Path) -> Settings:
    """The control plane's settings (its schema) on the private NATS; retries in milliseconds."""
    base = cp.settings
    worker = base.worker_service.model_copy(
        update={
            "grpc_port": 0,
            "metrics_port": 0,
            "ack_wait_seconds": 2.0,
            "max_deliver": 3,
            "retry": base.worker_service.retry.model_copy(update={"backoff_base": 0.02, "backoff_max": 0.1}),
            "webhook_timeout_seconds": 2.0,
            "webhook_breaker_open_seconds": 0.3,
        }
    )
    events = base.events.model_copy(update={"spool_dir": str(spool), "publish_timeout_seconds": 1.0})
    # The tenants' webhook receivers of these tests listen on loopback.
    outbound = base.outbound_http.model_copy(update={"allowed_networks": ["127.0.0.0/8"]})
    update = {"nats_url": nats.url, "events": events, "worker_service": worker, "outbound_http": outbound}
    return base.model_copy(update=update)


@pytest.fixture(scope="session")
def wsettings(
    cp: ControlPlane, worker_nats: PrivateNats, tmp_path_factory: pytest.TempPathFactory
) -> Settings:
    return worker_settings(cp, worker_nats, tmp_path_factory.mktemp("spool"))


@pytest.fixture(scope="session")
async def worker(wsettings: Settings) -> AsyncIterator[WorkerServer]:
    server = WorkerServer(wsettings)
    await server.start()
    for _ in range(400):
        if server.worker.healthy:
            break
        await asyncio.sleep(0.05)
    assert server.worker.healthy, "the worker's consumers did not start"
    yield server
    await server.stop(grace=1)


@pytest.fixture(scope="session")
async def publisher(wsettings: Settings) -> AsyncIterator[EventPublisher]:
    pub = EventPublisher(wsettings, "test-publisher")
    yield pub
    await pub.close()


async def eventually(check: object, *, within_s: float = 20.0) -> None:
    """Polls an async predicate until it holds (event processing is asynchronous by design)."""
    deadline = asyncio.get_running_loop().time() + within_s
    while True:
        result = check() if callable(check) else check
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)
