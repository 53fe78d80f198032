"""Small helpers the worker's projections share: the connection pool, connection type, event times."""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg
from asyncpg.pool import PoolConnectionProxy
from google.protobuf.timestamp_pb2 import Timestamp

from services.shared.db import create_pool
from services.shared.settings import Settings

Conn = asyncpg.Connection | PoolConnectionProxy


class _NoResetConnection(asyncpg.Connection):
    """The worker's handlers keep no session state (no LISTEN, SET or advisory locks; transactions end
    before release, and asyncpg rolls back any that did not), so a connection is not reset when it
    goes back to the pool: one database round trip less per event."""

    def get_reset_query(self) -> str:
        return ""


async def create_worker_pool(settings: Settings) -> asyncpg.Pool:
    return await create_pool(settings, connection_class=_NoResetConnection)


def at(ts: Timestamp) -> datetime | None:
    """An event timestamp as an aware UTC datetime (None when unset)."""
    if ts.seconds == 0 and ts.nanos == 0:
        return None
    return ts.ToDatetime(tzinfo=UTC)
