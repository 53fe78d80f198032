"""Usage and billing from usage.minute: one usage record per started minute of a call, prepaid credit
debited in the same transaction (buckets that expire first are used first), and the hourly roll-up
(`usage_hourly`, read by GetUsage) kept current. Applied once per event id, and once per (call, minute)
even when two publishers reported the same minute under different ids."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal

from services.worker.db import Conn, at
from services.worker.records import parse_uuid, tenant_uuid, upsert_call
from voice.v1 import common_pb2, events_pb2

MINUTE = Decimal(1)
NIL = uuid.UUID(int=0)


async def record_minute(conn: Conn, event: events_pb2.Event) -> bool:
    """True when the minute was new (and billed): record, debit and roll-up in one transaction."""
    async with conn.transaction():
        return await _record_minute(conn, event)


async def _record_minute(conn: Conn, event: events_pb2.Event) -> bool:
    record_id = await upsert_call(conn, event)
    if record_id is None:
        return False
    tenant = tenant_uuid(event)
    u = event.usage_minute
    when = at(event.time) or datetime.now(UTC)
    # The call's direction and agent as recorded (the event may not know the agent's database id).
    call = await conn.fetchrow("SELECT agent_id, direction FROM calls WHERE id = $1", record_id)
    assert call is not None
    direction = (
        "outbound" if u.direction == common_pb2.CALL_DIRECTION_OUTBOUND else call["direction"] or "inbound"
    )
    agent_id = call["agent_id"] or parse_uuid(u.agent_id)
    usage_id = await conn.fetchval(
        """INSERT INTO usage_records (tenant_id, call_id, agent_id, direction, minutes, recorded_at,
                                      event_id, minute_count)
           VALUES ($1, $2, (SELECT id FROM agents WHERE id = $3 AND tenant_id = $1), $4, $5, $6, $7, $8)
           ON CONFLICT DO NOTHING RETURNING id""",
        tenant,
        record_id,
        agent_id,
        direction,
        MINUTE,
        when,
        event.event_id,
        u.minute_count or None,
    )
    if usage_id is None:
        return False
    debited = await _debit(conn, tenant, MINUTE, when)
    await conn.execute("UPDATE usage_records SET credits_debited = $2 WHERE id = $1", usage_id, debited)
    await conn.execute(
        """INSERT INTO usage_hourly (tenant_id, agent_key, direction, hour, minutes, calls)
           VALUES ($1, $2, $3, date_trunc('hour', $4::timestamptz, 'UTC'), $5, $6)
           ON CONFLICT (tenant_id, agent_key, direction, hour)
           DO UPDATE SET minutes = usage_hourly.minutes + EXCLUDED.minutes,
                         calls = usage_hourly.calls + EXCLUDED.calls""",
        tenant,
        await conn.fetchval("SELECT agent_id FROM usage_records WHERE id = $1", usage_id) or NIL,
        direction,
        when,
        MINUTE,
        1 if u.minute_count <= 1 else 0,
    )
    return True


async def _debit(conn: Conn, tenant: uuid.UUID, minutes: Decimal, when: datetime) -> Decimal:
    """Takes `minutes` from the tenant's live buckets (soonest expiry first); returns what was taken
    (less when credit ran out: the usage is still recorded, the control plane stops new calls)."""
    left = minutes
    buckets = await conn.fetch(
        """SELECT id, minutes_total - minutes_used AS free FROM credit_buckets
           WHERE tenant_id = $1 AND minutes_used < minutes_total AND (expires_at IS NULL OR expires_at > $2)
           ORDER BY expires_at NULLS LAST, created_at FOR UPDATE""",
        tenant,
        when,
    )
    for bucket in buckets:
        if left <= 0:
            break
        take = min(left, bucket["free"])
        await conn.execute(
            "UPDATE credit_buckets SET minutes_used = minutes_used + $2 WHERE id = $1", bucket["id"], take
        )
        left -= take
    return minutes - left
