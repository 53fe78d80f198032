"""Each test gets its own nats-server (JetStream) and spool directory: nothing shared is touched."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from services.shared.settings import Settings
from tests.events.nats_server import PrivateNats


@pytest.fixture
async def private_nats(tmp_path: Path) -> AsyncIterator[PrivateNats]:
    server = PrivateNats(tmp_path / "jetstream")
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
def bus_settings(settings: Settings, private_nats: PrivateNats, tmp_path: Path) -> Settings:
    events = settings.events.model_copy(
        update={"spool_dir": str(tmp_path / "spool"), "publish_timeout_seconds": 0.5, "max_attempts": 2}
    )
    update = {"nats_url": private_nats.url, "nats_stream": "TEST_EVENTS", "events": events}
    return settings.model_copy(update=update)
