"""Encrypted recordings in the object store, their rows and the tenants' data keys in PostgreSQL.

Writers (the agent for calls straight on Converse, the bridge for phone calls) call `save`; the control
plane calls `fetch` for the owning tenant; the worker's retention job calls `delete_expired`.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import datetime

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from services.shared.recordings import crypto
from services.shared.recordings.store import ObjectMissingError, ObjectStore, open_store
from services.shared.settings import Settings

log = logging.getLogger(__name__)

KEY_VERSION = 1

Conn = asyncpg.Connection | PoolConnectionProxy


class RecordingNotFoundError(LookupError):
    """No recording for this call and tenant (a call of another tenant reads the same)."""


def object_key(tenant_id: uuid.UUID, call_id: uuid.UUID) -> str:
    return f"{tenant_id}/{call_id}.vrec"


class RecordingArchive:
    def __init__(self, settings: Settings, store: ObjectStore | None = None) -> None:
        self._settings = settings
        # Read now: a deployment without the master key fails at start, not at the first call's end.
        self._master = crypto.master_key(settings)
        self.store = store if store is not None else open_store(settings)
        self._keys: dict[uuid.UUID, bytes] = {}  # unwrapped data keys of this process, by tenant

    async def _data_key(self, conn: Conn, tenant_id: uuid.UUID) -> bytes:
        if (cached := self._keys.get(tenant_id)) is not None:
            return cached
        wrapped = await conn.fetchval(
            "SELECT wrapped_key FROM recording_keys WHERE tenant_id = $1 AND version = $2",
            tenant_id,
            KEY_VERSION,
        )
        if wrapped is None:
            fresh = crypto.wrap_key(self._master, str(tenant_id), crypto.new_data_key())
            # Two writers racing for a new tenant: one key wins, both use it.
            await conn.execute(
                """INSERT INTO recording_keys (tenant_id, version, wrapped_key) VALUES ($1, $2, $3)
                   ON CONFLICT DO NOTHING""",
                tenant_id,
                KEY_VERSION,
                fresh,
            )
            wrapped = await conn.fetchval(
                "SELECT wrapped_key FROM recording_keys WHERE tenant_id = $1 AND version = $2",
                tenant_id,
                KEY_VERSION,
            )
        key = crypto.unwrap_key(self._master, str(tenant_id), bytes(wrapped))
        self._keys[tenant_id] = key
        return key

    async def save(
        self,
        pool: asyncpg.Pool,
        tenant_id: uuid.UUID,
        call_id: uuid.UUID,
        wav: bytes,
        *,
        duration_s: float,
        sample_rate: int,
    ) -> str:
        """Encrypts and stores one call's WAV and records it; returns the object key. Saving the same
        call again replaces its recording."""
        async with pool.acquire() as conn:
            key = await self._data_key(conn, tenant_id)
        blob = await asyncio.to_thread(crypto.encrypt, key, KEY_VERSION, str(tenant_id), str(call_id), wav)
        name = object_key(tenant_id, call_id)
        await self.store.put(name, blob)
        async with pool.acquire() as conn:
            await conn.execute(
                """INSERT INTO recordings (call_id, tenant_id, object_key, backend, key_version, size_bytes,
                                           duration_seconds, sample_rate)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                   ON CONFLICT (call_id) DO UPDATE SET object_key = EXCLUDED.object_key,
                       backend = EXCLUDED.backend, key_version = EXCLUDED.key_version,
                       size_bytes = EXCLUDED.size_bytes, duration_seconds = EXCLUDED.duration_seconds,
                       sample_rate = EXCLUDED.sample_rate, created_at = NOW()
                   WHERE recordings.tenant_id = EXCLUDED.tenant_id""",
                call_id,
                tenant_id,
                name,
                self.store.name,
                KEY_VERSION,
                len(blob),
                duration_s,
                sample_rate,
            )
        return name

    async def fetch(self, pool: asyncpg.Pool, tenant_id: uuid.UUID, call_id: uuid.UUID) -> bytes:
        """The call's WAV, decrypted, for its own tenant only."""
        async with pool.acquire() as conn:
            row = await conn.fetchrow(
                "SELECT object_key FROM recordings WHERE call_id = $1 AND tenant_id = $2", call_id, tenant_id
            )
            if row is None:
                raise RecordingNotFoundError(str(call_id))
            key = await self._data_key(conn, tenant_id)
        try:
            blob = await self.store.get(row["object_key"])
        except ObjectMissingError:
            raise RecordingNotFoundError(str(call_id)) from None
        return await asyncio.to_thread(crypto.decrypt, key, str(tenant_id), str(call_id), blob)

    async def close(self) -> None:
        await self.store.close()


async def delete_expired(conn: Conn, store: ObjectStore, before: datetime) -> int:
    """Deletes recordings made before `before`: objects first, then rows, so a crash in between leaves
    rows whose objects are already gone (deleting those again is harmless), never orphan objects."""
    rows = await conn.fetch("SELECT call_id, object_key FROM recordings WHERE created_at < $1", before)
    gone = []
    for row in rows:
        try:
            await store.delete(row["object_key"])
        except Exception as exc:  # the store is away: this row waits for the next run
            log.warning(
                "recording object not deleted", extra={"data": {"key": row["object_key"], "error": str(exc)}}
            )
            continue
        gone.append(row["call_id"])
    if gone:
        await conn.execute("DELETE FROM recordings WHERE call_id = ANY($1::uuid[])", gone)
    return len(gone)
