"""Inbound routing data of the control plane: which tenant and agent a dialled number reaches, and
whether that tenant may take a call now (status, credit, concurrency limit).

The telephony edge reads it through `NumberRoutes` (cached per number for a few seconds, so a call
set-up does not wait on PostgreSQL and a burst of calls to one number is one query).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass

import asyncpg


@dataclass(frozen=True)
class NumberRoute:
    e164: str
    tenant_id: str
    agent_id: str | None
    tenant_status: str
    max_concurrent_calls: int
    credit_minutes: float


_QUERY = """
SELECT n.e164, n.tenant_id, n.agent_id, t.status, t.max_concurrent_calls,
       (SELECT COALESCE(SUM(c.minutes_total - c.minutes_used), 0) FROM credit_buckets c
         WHERE c.tenant_id = t.id AND (c.expires_at IS NULL OR c.expires_at > NOW())) AS credit
  FROM phone_numbers n JOIN tenants t ON t.id = n.tenant_id
 WHERE n.e164 = $1 AND t.deleted_at IS NULL
   AND (n.agent_id IS NULL
        OR EXISTS (SELECT 1 FROM agents a WHERE a.id = n.agent_id AND a.deleted_at IS NULL))
"""


async def resolve_number(pool: asyncpg.Pool, e164: str) -> NumberRoute | None:
    row = await pool.fetchrow(_QUERY, e164)
    if row is None:
        return None
    return NumberRoute(
        e164=row["e164"],
        tenant_id=str(row["tenant_id"]),
        agent_id=str(row["agent_id"]) if row["agent_id"] else None,
        tenant_status=row["status"],
        max_concurrent_calls=row["max_concurrent_calls"],
        credit_minutes=float(row["credit"]),
    )


class NumberRoutes:
    """`resolve_number` with a per-process TTL cache (unknown numbers are cached too, so a scanner
    dialling random numbers costs one query per number per TTL)."""

    def __init__(self, pool: asyncpg.Pool, *, ttl_seconds: float = 5.0, max_entries: int = 4096) -> None:
        self._pool = pool
        self._ttl = ttl_seconds
        self._max = max_entries
        self._cache: OrderedDict[str, tuple[NumberRoute | None, float]] = OrderedDict()

    async def get(self, e164: str) -> NumberRoute | None:
        now = time.monotonic()
        hit = self._cache.get(e164)
        if hit is not None and hit[1] > now:
            return hit[0]
        route = await resolve_number(self._pool, e164)
        self._cache[e164] = (route, time.monotonic() + self._ttl)
        self._cache.move_to_end(e164)
        while len(self._cache) > self._max:
            self._cache.popitem(last=False)
        return route


_RECORDING_QUERY = """
SELECT COALESCE((settings->'conversation'->>'recordingEnabled')::boolean, false) AS recording
  FROM agents WHERE id = $1 AND tenant_id = $2 AND deleted_at IS NULL
"""


async def agent_records_calls(pool: asyncpg.Pool, tenant_id: str, agent_id: str) -> bool:
    """Whether the agent's settings ask for its calls to be recorded (conversation.recording_enabled)."""
    row = await pool.fetchrow(_RECORDING_QUERY, agent_id, tenant_id)
    return bool(row is not None and row["recording"])
