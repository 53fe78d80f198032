"""What the control plane's servicers share: the database pool, Redis, the event bus and the verifier
of the caller's signed tenant context. Built once per server at start (see server.py)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import asyncpg
import grpc
import redis.asyncio as aioredis

from services.control.auth import InternalAuth, Permission, Principal
from services.control.errors import ApiError
from services.shared.db import create_pool
from services.shared.events import EventBus
from services.shared.grpc_server import Context
from services.shared.settings import Settings


def blocking_redis(settings: Settings) -> aioredis.Redis:
    """A client whose pool makes callers wait for a free connection under load (the default pool
    raises "Too many connections" instead) - bursts of requests must queue, not fail."""
    pool = aioredis.BlockingConnectionPool.from_url(
        settings.redis_url, max_connections=settings.redis_pool_size, timeout=5, socket_connect_timeout=5
    )
    return aioredis.Redis(connection_pool=pool)


@dataclass
class ControlState:
    """Connections are opened on the first RPC (`ensure()`), inside the server's event loop."""

    settings: Settings
    auth: InternalAuth
    _pool: asyncpg.Pool | None = None
    _redis: aioredis.Redis | None = None
    _bus: EventBus | None = None
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def ensure(self) -> None:
        if self._pool is not None:
            return
        async with self._lock:
            if self._pool is None:
                self._redis = blocking_redis(self.settings)
                self._pool = await create_pool(self.settings)

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("ControlState.ensure() was not awaited")
        return self._pool

    @property
    def redis(self) -> aioredis.Redis:
        if self._redis is None:
            raise RuntimeError("ControlState.ensure() was not awaited")
        return self._redis

    def principal(self, context: Context, needed: Permission) -> Principal:
        """The authenticated caller of this RPC; UNAUTHENTICATED / PERMISSION_DENIED otherwise."""
        try:
            p = self.auth.verify(context.invocation_metadata())
        except PermissionError as exc:
            raise ApiError(grpc.StatusCode.UNAUTHENTICATED, str(exc)) from None
        if not p.allows(needed):
            raise ApiError(
                grpc.StatusCode.PERMISSION_DENIED,
                f"this credential has {p.permission.label} permission; {needed.label} is required",
            )
        return p

    async def bus(self) -> EventBus:
        """The JetStream event bus, connected on first use (most RPCs never publish)."""
        async with self._lock:
            if self._bus is None:
                self._bus = await EventBus.connect(self.settings, name="control")
            return self._bus

    async def close(self) -> None:
        if self._bus is not None:
            await self._bus.close()
            self._bus = None
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
