"""The rate limiter's one-round-trip script against real Redis: the window, the in-flight burst and
its release, and the script coming back by itself after Redis forgot it."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from gateway.ratelimit import RateLimiter
from services.shared.settings import Settings


@pytest.fixture
async def redis(settings: Settings) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(settings.redis_url)
    yield client
    await client.aclose()


async def test_window_refuses_past_the_limit_and_holds_no_slot(redis: aioredis.Redis) -> None:
    tenant = f"t-{uuid.uuid4().hex}"
    limiter = RateLimiter(redis, per_minute=3, burst=10)
    granted = [await limiter.acquire(tenant) for _ in range(3)]
    assert all(r is not None and r.allowed for r in granted)
    assert [r.remaining for r in granted if r is not None][-1] == 0
    refused = await limiter.acquire(tenant)
    assert refused is not None and not refused.allowed and "per minute" in refused.reason
    # A minute boundary may fall between the calls; Retry-After is then the new window's reset.
    assert 1 <= refused.retry_after <= 60 and refused.headers()["X-RateLimit-Remaining"] == "0"
    # Three granted slots are still held; the refused request took none.
    assert await redis.get(f"ratelimit:{tenant}:concurrent") == b"3"
    for _ in range(3):
        await limiter.release(tenant)
    assert await redis.get(f"ratelimit:{tenant}:concurrent") == b"0"
    assert 0 < await redis.ttl(f"ratelimit:{tenant}:concurrent") <= 120


async def test_burst_refuses_then_admits_after_release(redis: aioredis.Redis) -> None:
    tenant = f"t-{uuid.uuid4().hex}"
    limiter = RateLimiter(redis, per_minute=1000, burst=2)
    first, second = await limiter.acquire(tenant), await limiter.acquire(tenant)
    assert first is not None and first.allowed and second is not None and second.allowed
    third = await limiter.acquire(tenant)
    assert third is not None and not third.allowed
    assert "concurrent" in third.reason and third.retry_after == 1
    assert await redis.get(f"ratelimit:{tenant}:concurrent") == b"2"
    await limiter.release(tenant)
    again = await limiter.acquire(tenant)
    assert again is not None and again.allowed and again.remaining == 1000 - 4


async def test_script_reloaded_after_redis_forgot_it(redis: aioredis.Redis) -> None:
    tenant = f"t-{uuid.uuid4().hex}"
    limiter = RateLimiter(redis, per_minute=10, burst=10)
    assert (await limiter.acquire(tenant)) is not None
    await redis.script_flush()
    result = await limiter.acquire(tenant)
    assert result is not None and result.allowed and result.remaining == 8


async def test_unreachable_redis_fails_open() -> None:
    client = aioredis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5)
    try:
        assert await RateLimiter(client, per_minute=1, burst=1).acquire("t") is None
    finally:
        await client.aclose()
