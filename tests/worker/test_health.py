"""The worker reports SERVING only while its consumers run: not before NATS is reachable, not while it
is away."""

from __future__ import annotations

from pathlib import Path

from services.launcher import health_status
from services.worker.server import WorkerServer
from tests.control.env import ControlPlane
from tests.events.nats_server import PrivateNats
from tests.worker.conftest import eventually, worker_settings


async def test_health_follows_the_consumers(cp: ControlPlane, tmp_path: Path) -> None:
    nats = PrivateNats(tmp_path / "nats")  # not started yet
    settings = worker_settings(cp, nats, tmp_path / "spool")
    server = WorkerServer(settings)
    await server.start()

    async def status_is(expected: str) -> bool:
        return await health_status(server.address, settings=settings) == expected

    try:
        assert await status_is("NOT_SERVING")
        await nats.start()
        await eventually(lambda: status_is("SERVING"), within_s=30)
        await nats.stop()
        await eventually(lambda: status_is("NOT_SERVING"))
        await nats.start()
        await eventually(lambda: status_is("SERVING"), within_s=30)
    finally:
        await server.stop(grace=1)
        await nats.stop()
