"""Reachability checks of the backing services, used by /health and the demo."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import asyncpg
import nats
import redis.asyncio as aioredis

from services.shared.settings import Settings

CHECK_TIMEOUT_SECONDS = 3.0


@dataclass(frozen=True)
class DependencyHealth:
    name: str
    healthy: bool
    detail: str
    latency_ms: float


async def _timed(name: str, probe: Callable[[], Awaitable[str]]) -> DependencyHealth:
    started = time.perf_counter()
    try:
        detail = await asyncio.wait_for(probe(), CHECK_TIMEOUT_SECONDS)
        healthy = True
    except Exception as exc:  # any failure is "unhealthy", with the reason shown
        detail, healthy = f"{type(exc).__name__}: {exc}", False
    return DependencyHealth(name, healthy, detail, (time.perf_counter() - started) * 1000)


async def check_postgres(dsn: str) -> DependencyHealth:
    async def probe() -> str:
        conn = await asyncpg.connect(dsn, timeout=CHECK_TIMEOUT_SECONDS)
        try:
            return str(await conn.fetchval("SHOW server_version"))
        finally:
            await conn.close()

    return await _timed("postgres", probe)


async def check_redis(url: str) -> DependencyHealth:
    async def probe() -> str:
        client = aioredis.Redis.from_url(url, socket_connect_timeout=CHECK_TIMEOUT_SECONDS)
        try:
            await client.ping()
            info = await client.info("server")
            return str(info.get("redis_version", "?"))
        finally:
            await client.aclose()

    return await _timed("redis", probe)


async def check_nats(url: str, stream: str) -> DependencyHealth:
    async def probe() -> str:
        nc = await nats.connect(url, connect_timeout=CHECK_TIMEOUT_SECONDS, max_reconnect_attempts=0)
        try:
            account = await nc.jetstream().account_info()
            v = nc.connected_server_version
            return f"{v.major}.{v.minor}.{v.patch} (JetStream, {account.streams} streams)"
        finally:
            await nc.close()

    return await _timed("nats", probe)


async def check_all(settings: Settings) -> list[DependencyHealth]:
    return list(
        await asyncio.gather(
            check_postgres(settings.database_url),
            check_redis(settings.redis_url),
            check_nats(settings.nats_url, settings.nats_stream),
        )
    )
