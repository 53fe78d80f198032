"""Small helpers the worker's projections share: the connection pool, connection type, event times."""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg
from asyncpg.pool import PoolConnectionProxy
from google.protobuf.timestamp_pb2 import Timestamp

from services.shared.settings import Settings

Conn = asyncpg.Connection | PoolConnectionProxy


class _NoResetConnection(asyncpg.Connection):
    """The worker's handlers keep no session state (no LISTEN, SET or advisory locks; transactions end
    before release, and asyncpg rolls back any that did not), so a connection is not reset when it
    goes back to the pool: one database round trip less per event."""

    def get_reset_query(self) -> str:
        return ""


async def create_worker_pool(settings: Settings) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(
        settings.database_url,
        min_size=min(2, settings.database_pool_size),
        max_size=settings.database_pool_size + settings.database_max_overflow,
        command_timeout=30,
        connection_class=_NoResetConnection,
    )
    if pool is None:  # only when created with an explicit loop and not awaited; never here
        raise RuntimeError("asyncpg returned no pool")
    return pool


def at(ts: Timestamp) -> datetime | None:
    """An event timestamp as an aware UTC datetime (None when unset)."""
    if ts.seconds == 0 and ts.nanos == 0:
        return None
    return ts.ToDatetime(tzinfo=UTC)
