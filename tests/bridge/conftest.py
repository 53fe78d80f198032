"""Bridge tests use the real Redis (and PostgreSQL/NATS where a test needs them) on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from services.shared.settings import Settings


@pytest.fixture
async def redis(settings: Settings) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(settings.redis_url)
    try:
        await client.ping()
    except OSError as e:
        pytest.fail(f"Redis is down ({e}); start it with `make services`", pytrace=False)
    yield client
    await client.aclose()
