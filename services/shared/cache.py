"""Redis: call state, per-tenant active-call sets and rate limits (spec 9.3)."""

from __future__ import annotations

import redis.asyncio as aioredis

from services.shared.settings import Settings


def create_redis(settings: Settings) -> aioredis.Redis:
    """A client with its own connection pool of `redis_pool_size` connections (connects lazily)."""
    return aioredis.Redis.from_url(
        settings.redis_url,
        max_connections=settings.redis_pool_size,
        decode_responses=False,
        socket_connect_timeout=5,
        health_check_interval=30,
    )
