"""Integration tests talk to the real PostgreSQL, Redis and NATS JetStream on loopback."""

from __future__ import annotations

import pytest

from services.shared.dependency_health import check_all
from services.shared.settings import Settings


@pytest.fixture(scope="session", autouse=True)
async def local_services_up(settings: Settings) -> None:
    """Fails fast, with the fix, when the local services are not running."""
    down = [dep for dep in await check_all(settings) if not dep.healthy]
    if down:
        details = "; ".join(f"{d.name}: {d.detail}" for d in down)
        pytest.fail(f"local services down ({details}); start them with `make services`", pytrace=False)
