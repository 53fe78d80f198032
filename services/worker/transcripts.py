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
from services.worker.records import upsert_call
from voice.v1 import agent_session_pb2, events_pb2

_SPEAKER = {agent_session_pb2.SPEAKER_CALLER: "caller", agent_session_pb2.SPEAKER_AGENT: "agent"}


async def store_turn(conn: Conn, event: events_pb2.Event) -> bool:
    """True when the turn was new."""
    record_id = await upsert_call(conn, event)
    if record_id is None:
        return False
    t = event.transcript_turn
    inserted = await conn.fetchval(
        """INSERT INTO transcripts (call_id, turn_number, speaker, text, confidence, started_at, metadata,
                                    event_id, interrupted)
           VALUES ($1, $2, $3, $4, $5, COALESCE($6, $7, NOW()), $8::jsonb, $9, $10)
           ON CONFLICT (event_id) WHERE event_id IS NOT NULL DO NOTHING RETURNING TRUE""",
        record_id,
        t.turn_index,
        _SPEAKER.get(t.speaker, "unknown"),
        t.text,
        t.confidence,
        at(t.timestamp),
        at(event.time),
        json.dumps({"interrupted": t.interrupted}),
        event.event_id,
        t.interrupted,
    )
    return bool(inserted)


async def store_tool_call(conn: Conn, event: events_pb2.Event) -> bool:
    record_id = await upsert_call(conn, event)
    if record_id is None:
        return False
    c = event.tool_called
    inserted = await conn.fetchval(
        """INSERT INTO tool_calls (call_id, tool_name, input, output, status, latency_ms, created_at,
                                   event_id)
           VALUES ($1, $2, $3::jsonb, $4::jsonb, $5, $6, COALESCE($7, NOW()), $8)
           ON CONFLICT (event_id) WHERE event_id IS NOT NULL DO NOTHING RETURNING TRUE""",
        record_id,
        c.tool_name[:64],
        json.dumps(json_format.MessageToDict(c.input)),
        json.dumps(json_format.MessageToDict(c.output)),
        (c.status or "ok")[:20],
        round(c.latency.ToTimedelta().total_seconds() * 1000),
        at(event.time),
        event.event_id,
    )
    return bool(inserted)
