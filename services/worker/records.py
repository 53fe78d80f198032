"""Call records projected from events: one row in `calls` per call, however the call started.

Whichever event of a call arrives first opens its record (upsert by record id); later events fill in
what they know. Status and timestamps only move forward (`call_status_rank` in SQL), so late or
redelivered events never move a call back, and applying an event twice changes nothing.

Record ids: a call id that is a UUID (calls placed through the API or the bridge) is the record id;
any other call id (a softphone or load tester straight on Converse) maps to a stable UUIDv5 of tenant and
call id, and the original id is kept in `external_call_id`.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg
from google.protobuf import json_format

from services.worker.db import Conn, at
from voice.v1 import common_pb2, events_pb2

_RECORD_NAMESPACE = uuid.UUID("0c6c1f9e-5d55-4b8e-a0f1-3f0b7a4d2c11")
_DIRECTION: dict[int, str] = {
    common_pb2.CALL_DIRECTION_INBOUND: "inbound",
    common_pb2.CALL_DIRECTION_OUTBOUND: "outbound",
}
_FAILED_STATUS = {"no_answer": "no_answer", "busy": "busy"}


class UnknownTenantError(LookupError):
    """The event's tenant is not one of this platform's tenants (skipped, not retried)."""


def parse_uuid(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


def tenant_uuid(event: events_pb2.Event) -> uuid.UUID:
    tenant = parse_uuid(event.tenant_id)
    if tenant is None:
        raise UnknownTenantError(event.tenant_id)
    return tenant


def call_record_id(tenant_id: str, call_id: str) -> uuid.UUID:
    parsed = parse_uuid(call_id)
    if parsed is not None and str(parsed) == call_id.lower():
        return parsed
    return uuid.uuid5(_RECORD_NAMESPACE, f"{tenant_id}/{call_id}")


@dataclass
class CallFacts:
    """What one event tells about its call; None = this event does not know."""

    status: str
    agent_id: str = ""
    direction: int = 0  # voice.v1.CallDirection
    from_number: str = ""
    to_number: str = ""
    started_at: datetime | None = None
    answered_at: datetime | None = None
    ended_at: datetime | None = None
    duration_seconds: int | None = None
    end_reason: str | None = None
    transferred_to: str | None = None
    transcript_complete: bool = False


def facts(event: events_pb2.Event) -> CallFacts:
    """The record fields an event carries (lifecycle events) or implies (a turn means it connected)."""
    when = at(event.time)
    kind = event.WhichOneof("payload")
    if kind == "call_ringing":
        p = event.call_ringing
        return CallFacts("ringing", p.agent_id, p.direction, p.from_number, p.to_number, started_at=when)
    if kind == "call_connected":
        answered = event.call_connected.answer_time
        answer = at(answered) or when
        return CallFacts("connected", started_at=answer, answered_at=answer)
    if kind == "agent_joined":
        j = event.agent_joined
        return CallFacts(
            "connected", j.agent_id, j.direction, j.from_number, j.to_number, when, answered_at=when
        )
    if kind == "call_transfer_requested":
        return CallFacts("transferring")
    if kind == "call_transferred":
        return CallFacts("transferred", transferred_to=event.call_transferred.transferred_to[:255] or None)
    if kind == "call_ended":
        e = event.call_ended
        seconds = e.duration.ToTimedelta().total_seconds()
        start = when - timedelta(seconds=seconds) if when is not None else None
        status = "transferred" if e.end_reason == "transferred" else "completed"
        return CallFacts(
            status, e.agent_id, e.direction, e.from_number, e.to_number, started_at=start,
            ended_at=when, duration_seconds=round(seconds), end_reason=e.end_reason[:100] or None,
            transcript_complete=True,
        )  # fmt: skip
    if kind == "call_failed":
        f = event.call_failed
        return CallFacts(
            _FAILED_STATUS.get(f.reason, "failed"), f.agent_id, f.direction, f.from_number, f.to_number,
            started_at=when, ended_at=when, duration_seconds=0, end_reason=f.reason[:100] or "failed",
            transcript_complete=True,
        )  # fmt: skip
    if kind == "usage_minute":
        u = event.usage_minute
        return CallFacts("connected", u.agent_id, u.direction, started_at=when)
    # transcript.turn, tool.called, room.ready: the call exists; nothing more is known.
    return CallFacts("connected" if kind != "room_ready" else "initiating", started_at=when)


_UPSERT = """
INSERT INTO calls AS c (id, tenant_id, agent_id, direction, status, from_number, to_number, external_call_id,
                        started_at, answered_at, ended_at, duration_seconds, end_reason, transferred_to,
                        transcript_complete, created_at)
VALUES ($1, $2, (SELECT id FROM agents WHERE id = $3 AND tenant_id = $2), COALESCE($4, 'inbound'), $5,
        NULLIF($6, ''), NULLIF($7, ''), $8, $9, $10, $11, $12, $13, $14, $15, COALESCE($9, NOW()))
ON CONFLICT (id) DO UPDATE SET
    agent_id = COALESCE(c.agent_id, EXCLUDED.agent_id),
    direction = COALESCE($4, c.direction),
    status = CASE WHEN call_status_rank(EXCLUDED.status) > call_status_rank(c.status)
                  THEN EXCLUDED.status ELSE c.status END,
    from_number = COALESCE(c.from_number, EXCLUDED.from_number),
    to_number = COALESCE(c.to_number, EXCLUDED.to_number),
    external_call_id = COALESCE(c.external_call_id, EXCLUDED.external_call_id),
    started_at = LEAST(c.started_at, EXCLUDED.started_at),
    answered_at = COALESCE(c.answered_at, EXCLUDED.answered_at),
    ended_at = COALESCE(c.ended_at, EXCLUDED.ended_at),
    duration_seconds = COALESCE(c.duration_seconds, EXCLUDED.duration_seconds),
    end_reason = COALESCE(c.end_reason, EXCLUDED.end_reason),
    transferred_to = COALESCE(EXCLUDED.transferred_to, c.transferred_to),
    transcript_complete = c.transcript_complete OR EXCLUDED.transcript_complete,
    updated_at = NOW()
WHERE c.tenant_id = EXCLUDED.tenant_id
RETURNING c.id
"""


async def upsert_call(
    conn: Conn, event: events_pb2.Event, known: CallFacts | None = None
) -> uuid.UUID | None:
    """Opens or advances the event's call record; returns its id (None: the id belongs to another
    tenant's call, nothing written). Raises UnknownTenantError for a tenant not in this database."""
    tenant = tenant_uuid(event)
    f = known or facts(event)
    record_id = call_record_id(event.tenant_id, event.call_id)
    try:
        row_id: uuid.UUID | None = await conn.fetchval(
            _UPSERT,
            record_id,
            tenant,
            parse_uuid(f.agent_id),
            _DIRECTION.get(f.direction),
            f.status,
            f.from_number[:50],
            f.to_number[:50],
            event.call_id,
            f.started_at,
            f.answered_at,
            f.ended_at,
            f.duration_seconds,
            f.end_reason,
            f.transferred_to,
            f.transcript_complete,
        )
    except asyncpg.ForeignKeyViolationError:
        raise UnknownTenantError(event.tenant_id) from None
    return row_id


async def log_call_event(conn: Conn, record_id: uuid.UUID, event: events_pb2.Event) -> bool:
    """The call's event history (`call_events`), once per event id; True when this was new."""
    kind = event.WhichOneof("payload")
    payload = json_format.MessageToDict(getattr(event, kind)) if kind else {}
    inserted = await conn.fetchval(
        """INSERT INTO call_events (call_id, tenant_id, event_type, event_id, payload, created_at)
           VALUES ($1, $2, $3, $4, $5::jsonb, COALESCE($6, NOW()))
           ON CONFLICT (event_id) WHERE event_id IS NOT NULL DO NOTHING RETURNING TRUE""",
        record_id,
        tenant_uuid(event),
        event.type,
        event.event_id,
        json.dumps(payload),
        at(event.time),
    )
    return bool(inserted)
