"""Transcript turns and tool calls of a call, stored once per event id.

Turns are ordered by turn number, then time (the caller's words open a turn, the agent's answer in the
same turn follows); an agent turn the caller interrupted is stored as heard and marked. The text is
indexed for PostgreSQL full-text search (`transcripts.search`, `ListCalls?query=`). The call record's
`transcript_complete` is set by call.ended (services/worker/records.py).
"""

from __future__ import annotations

import json

from google.protobuf import json_format

from services.worker.db import Conn, at
from services.worker.records import call_record_id, tenant_uuid
from voice.v1 import agent_session_pb2, events_pb2

_SPEAKER = {agent_session_pb2.SPEAKER_CALLER: "caller", agent_session_pb2.SPEAKER_AGENT: "agent"}


# A turn or a tool call opens its call's record if no lifecycle event did yet (never updates it: the
# records consumer owns its progress), and is stored unless the call id is another tenant's record.
_OPEN_CALL = """
    INSERT INTO calls AS c (id, tenant_id, status, external_call_id, started_at, created_at)
    VALUES ($1, $2, 'connected', $3, $4, COALESCE($4, NOW())) ON CONFLICT (id) DO NOTHING
"""
_OURS = "NOT EXISTS (SELECT 1 FROM calls WHERE id = $1 AND tenant_id <> $2)"


async def store_turn(conn: Conn, event: events_pb2.Event) -> bool:
    """True when the turn was new. One statement: the call opened if needed, the turn stored once."""
    t = event.transcript_turn
    inserted = await conn.fetchval(
        f"""WITH opened AS ({_OPEN_CALL})
            INSERT INTO transcripts (call_id, turn_number, speaker, text, confidence, started_at, metadata,
                                     event_id, interrupted)
            SELECT $1, $5, $6, $7, $8, COALESCE($9, $4, NOW()), $10::jsonb, $11, $12 WHERE {_OURS}
            ON CONFLICT (event_id) WHERE event_id IS NOT NULL DO NOTHING RETURNING TRUE""",
        call_record_id(event.tenant_id, event.call_id),
        tenant_uuid(event),
        event.call_id,
        at(event.time),
        t.turn_index,
        _SPEAKER.get(t.speaker, "unknown"),
        t.text,
        t.confidence,
        at(t.timestamp),
        json.dumps({"interrupted": t.interrupted}),
        event.event_id,
        t.interrupted,
    )
    return bool(inserted)


async def store_tool_call(conn: Conn, event: events_pb2.Event) -> bool:
    c = event.tool_called
    inserted = await conn.fetchval(
        f"""WITH opened AS ({_OPEN_CALL})
            INSERT INTO tool_calls (call_id, tool_name, input, output, status, latency_ms, created_at,
                                    event_id)
            SELECT $1, $5, $6::jsonb, $7::jsonb, $8, $9, COALESCE($4, NOW()), $10 WHERE {_OURS}
            ON CONFLICT (event_id) WHERE event_id IS NOT NULL DO NOTHING RETURNING TRUE""",
        call_record_id(event.tenant_id, event.call_id),
        tenant_uuid(event),
        event.call_id,
        at(event.time),
        c.tool_name[:64],
        json.dumps(json_format.MessageToDict(c.input)),
        json.dumps(json_format.MessageToDict(c.output)),
        (c.status or "ok")[:20],
        round(c.latency.ToTimedelta().total_seconds() * 1000),
        event.event_id,
    )
    return bool(inserted)
