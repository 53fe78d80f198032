"""What the control plane's servicers share: the database pool, Redis, the event bus and the verifier
of the caller's signed tenant context. Built once per server at start (see server.py)."""

from __future__ import annotations

import asyncio
import contextvars
from dataclasses import dataclass, field

import asyncpg
import grpc
import redis.asyncio as aioredis

from services.control.auth import InternalAuth, Permission, Principal, resolve_secret
from services.control.authn import (
    AuthError,
    CredentialVerifier,
    FailedAuthLimiter,
    TooManyFailuresError,
    grpc_caller,
    peer_address,
)
from services.control.errors import ApiError
from services.shared.db import create_pool
from services.shared.events import EventBus
from services.shared.grpc_server import Context, caller_identity
from services.shared.recordings.archive import RecordingArchive
from services.shared.settings import Settings

# The caller of the RPC running in this task (each RPC runs in its own task): set by the server's
# guard before the handler runs, read by `ControlState.principal`.
CALLER: contextvars.ContextVar[Principal | AuthError] = contextvars.ContextVar("control_caller")


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
    _verifier: CredentialVerifier | None = None
    _recordings: RecordingArchive | None = None
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def ensure(self) -> None:
        if self._pool is not None:
            return
        async with self._lock:
            if self._pool is None:
                self._redis = blocking_redis(self.settings)
                pool = await create_pool(self.settings)
                self._verifier = CredentialVerifier(
                    pool,
                    resolve_secret(self.settings, "jwt_secret"),
                    self.settings.api_gateway.auth_cache_seconds,
                )
                self._pool = pool

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

    @property
    def verifier(self) -> CredentialVerifier:
        if self._verifier is None:
            raise RuntimeError("ControlState.ensure() was not awaited")
        return self._verifier

    async def authenticate(self, context: Context) -> Principal | AuthError:
        """Who calls this RPC (see services/control/authn.py), or why that is not known."""
        try:
            return await grpc_caller(
                context.invocation_metadata(),
                peer=caller_identity(context),
                verifier=self.verifier,
                internal=self.auth,
                limiter=FailedAuthLimiter(
                    self.redis, self.settings.api_gateway.rate_limiting.failed_auth_limit
                ),
                address=peer_address(context.peer()),
            )
        except AuthError as exc:
            return exc

    def principal(self, context: Context, needed: Permission) -> Principal:
        """The authenticated caller of this RPC; UNAUTHENTICATED / PERMISSION_DENIED otherwise."""
        del context  # authenticated once per RPC by the server's guard (CALLER)
        p = CALLER.get(AuthError("missing authentication"))
        if isinstance(p, TooManyFailuresError):
            raise ApiError(grpc.StatusCode.RESOURCE_EXHAUSTED, str(p))
        if isinstance(p, AuthError):
            raise ApiError(grpc.StatusCode.UNAUTHENTICATED, str(p))
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

    def recordings(self) -> RecordingArchive:
        """Call recordings (reads RECORDING_MASTER_KEY: build_state calls it so that a deployment
        without the key does not start)."""
        if self._recordings is None:
            self._recordings = RecordingArchive(self.settings)
        return self._recordings

    async def close(self) -> None:
        if self._recordings is not None:
            await self._recordings.close()
            self._recordings = None
        if self._bus is not None:
            await self._bus.close()
            self._bus = None
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
