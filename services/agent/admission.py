"""Who may start a conversation on the agent service, and how it counts against the tenant's limit.

`AgentSessionService/Converse` runs a tenant's agent, which then speaks, publishes usage and transcripts
under that tenant and calls the tenant's webhook tools; so a Start is admitted only for:

- the bridge (mutual-TLS identity `bridge`): it answers the PBX for every tenant and has already taken
  the call's concurrent-call slot itself (services/shared/call_slots.py), so nothing more is counted;
- a tenant credential (`x-api-key` or `authorization: Bearer` metadata, as on REST) of the Start's
  tenant with write ("call") permission: the call takes a slot of the tenant's concurrent-call limit
  (the same Redis counter as the control plane and the bridge), refreshed while it lives and released
  when it ends.

On an explicitly plaintext development deployment no certificate identity exists; a caller without
a credential is then taken for the bridge (documented in docs/identity.md; refused in production by
the settings check of services/shared/service_identity.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from dataclasses import dataclass

import asyncpg
import grpc
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from services.control.auth import Permission, resolve_secret
from services.control.authn import AuthError, CredentialVerifier
from services.shared.call_slots import CallSlots
from services.shared.grpc_server import Context, caller_identity
from services.shared.settings import Settings
from voice.v1 import agent_session_pb2

log = logging.getLogger(__name__)

CREDENTIAL_KEYS = ("x-api-key", "authorization")


class AdmissionError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Admission:
    tenant_id: str
    call_id: str
    # Whether this service holds the call's slot (and must refresh and release it).
    counted: bool


class CallAdmission:
    """Admits Starts (see the module docstring). Connections open on the first credentialed call."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._lock = asyncio.Lock()
        self._pool: asyncpg.Pool | None = None
        self._redis: aioredis.Redis | None = None
        self._verifier: CredentialVerifier | None = None
        self._slots: CallSlots | None = None

    async def _ensure(self) -> tuple[asyncpg.Pool, CredentialVerifier, CallSlots]:
        async with self._lock:
            if self._pool is None or self._verifier is None or self._slots is None:
                pool = await asyncpg.create_pool(
                    self._settings.database_url, min_size=0, max_size=2, command_timeout=5
                )
                self._redis = aioredis.Redis.from_url(self._settings.redis_url, socket_connect_timeout=2)
                self._verifier = CredentialVerifier(
                    pool,
                    resolve_secret(self._settings, "jwt_secret"),
                    self._settings.api_gateway.auth_cache_seconds,
                )
                self._slots = CallSlots(self._redis, self._settings.webrtc_bridge.sip.slot_ttl_seconds)
                self._pool = pool
            return self._pool, self._verifier, self._slots

    async def admit(self, context: Context, start: agent_session_pb2.SessionStart) -> Admission:
        metadata = list(context.invocation_metadata() or ())
        credentialed = any(key in CREDENTIAL_KEYS for key, _ in metadata)
        peer = caller_identity(context)
        if not credentialed and (peer == "bridge" or peer is None):
            return Admission(start.tenant_id, start.call_id, counted=False)
        if not credentialed:
            raise AdmissionError(
                grpc.StatusCode.UNAUTHENTICATED,
                "starting a conversation needs the tenant's API key or token "
                "(x-api-key or authorization metadata)",
            )
        try:
            pool, verifier, slots = await self._ensure()
            principal = await verifier.authenticate_metadata(metadata)
        except AuthError as exc:
            raise AdmissionError(grpc.StatusCode.UNAUTHENTICATED, str(exc)) from None
        except (OSError, asyncpg.PostgresError) as exc:
            raise AdmissionError(grpc.StatusCode.UNAVAILABLE, f"cannot verify credentials ({exc})") from None
        if principal.tenant_id != start.tenant_id:
            raise AdmissionError(
                grpc.StatusCode.PERMISSION_DENIED, "this credential belongs to another tenant"
            )
        if not principal.allows(Permission.WRITE):
            raise AdmissionError(
                grpc.StatusCode.PERMISSION_DENIED, "starting a call needs a credential with write permission"
            )
        try:
            limit = await pool.fetchval(
                "SELECT max_concurrent_calls FROM tenants "
                "WHERE id = $1 AND status = 'active' AND deleted_at IS NULL",
                uuid.UUID(principal.tenant_id),
            )
            if limit is None:
                raise AdmissionError(grpc.StatusCode.PERMISSION_DENIED, "the tenant is not active")
            admitted = await slots.admit(start.tenant_id, start.call_id, int(limit))
        except (OSError, asyncpg.PostgresError, RedisError) as exc:
            raise AdmissionError(grpc.StatusCode.UNAVAILABLE, f"cannot count the call ({exc})") from None
        if not admitted:
            raise AdmissionError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"the tenant's concurrent call limit ({limit}) is reached",
            )
        return Admission(start.tenant_id, start.call_id, counted=True)

    async def hold(self, admission: Admission) -> None:
        """Keeps a counted call's slot alive until cancelled (the call ended), then releases it."""
        if not admission.counted or self._slots is None:
            return
        slots = self._slots
        try:
            while True:
                await asyncio.sleep(slots.refresh_every)
                with contextlib.suppress(RedisError, OSError):
                    await slots.refresh(admission.call_id)
        finally:
            try:
                await slots.release(admission.call_id)
            except (RedisError, OSError) as exc:  # the slot then expires on its own
                log.warning("call slot release failed", extra={"data": {"error": str(exc)}})

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
