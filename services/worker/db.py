"""Small helpers the worker's projections share: connection type and event times."""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg
from asyncpg.pool import PoolConnectionProxy
from google.protobuf.timestamp_pb2 import Timestamp

Conn = asyncpg.Connection | PoolConnectionProxy


def at(ts: Timestamp) -> datetime | None:
    """An event timestamp as an aware UTC datetime (None when unset)."""
    if ts.seconds == 0 and ts.nanos == 0:
        return None
    return ts.ToDatetime(tzinfo=UTC)
