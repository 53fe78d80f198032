"""CallService: call history with transcripts, outbound calls (credits and concurrency checked), and
transfer / hang-up requests that the telephony edge executes from the event bus."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg
import grpc
from google.api import httpbody_pb2
from google.protobuf import json_format
from google.rpc import error_details_pb2  # type: ignore[import-untyped]

from services.control.auth import Permission
from services.control.common import (
    Conn,
    check_e164,
    check_strings,
    check_text,
    from_timestamp,
    next_token,
    page,
    parse_id,
    parse_ref,
    timestamp,
)
from services.control.edge import Edge
from services.control.errors import ApiError, failed_precondition, invalid, not_found
from services.control.state import ControlState
from services.shared.call_slots import CallSlots
from services.shared.events import call_event_id, new_event
from services.shared.grpc_server import Context
from services.shared.recordings.archive import RecordingNotFoundError
from services.shared.recordings.crypto import RecordingCryptoError
from voice.v1 import agent_session_pb2, call_control_pb2, calls_pb2, calls_pb2_grpc, common_pb2, events_pb2

log = logging.getLogger(__name__)

_STATUS = {
    common_pb2.CALL_STATUS_INITIATING: "initiating",
    common_pb2.CALL_STATUS_RINGING: "ringing",
    common_pb2.CALL_STATUS_CONNECTED: "connected",
    common_pb2.CALL_STATUS_ON_HOLD: "on_hold",
    common_pb2.CALL_STATUS_TRANSFERRING: "transferring",
    common_pb2.CALL_STATUS_TRANSFERRED: "transferred",
    common_pb2.CALL_STATUS_COMPLETED: "completed",
    common_pb2.CALL_STATUS_FAILED: "failed",
    common_pb2.CALL_STATUS_NO_ANSWER: "no_answer",
    common_pb2.CALL_STATUS_BUSY: "busy",
}
_STATUS_ENUM = {v: k for k, v in _STATUS.items()}
_DIRECTION = {common_pb2.CALL_DIRECTION_INBOUND: "inbound", common_pb2.CALL_DIRECTION_OUTBOUND: "outbound"}
_DIRECTION_ENUM = {v: k for k, v in _DIRECTION.items()}
_SPEAKER = {
    "caller": agent_session_pb2.SPEAKER_CALLER,
    "agent": agent_session_pb2.SPEAKER_AGENT,
}
ACTIVE = ("initiating", "ringing", "connected", "on_hold", "transferring")
_TRANSFER_TARGET = re.compile(r"^(\+[1-9][0-9]{6,14}|ext:[0-9]{1,10})$")

CALL_STATE_TTL_SECONDS = 7200


def call_state_key(call_id: str) -> str:
    return f"call:{call_id}:state"


def to_proto(row: asyncpg.Record) -> calls_pb2.Call:
    call = calls_pb2.Call(
        id=str(row["id"]),
        tenant_id=str(row["tenant_id"]),
        agent_id=str(row["agent_id"]) if row["agent_id"] else "",
        direction=_DIRECTION_ENUM.get(row["direction"], common_pb2.CALL_DIRECTION_UNSPECIFIED),
        status=_STATUS_ENUM.get(row["status"], common_pb2.CALL_STATUS_UNSPECIFIED),
        from_number=row["from_number"] or "",
        to_number=row["to_number"] or "",
        create_time=timestamp(row["created_at"]),
        answer_time=timestamp(row["answered_at"]),
        end_time=timestamp(row["ended_at"]),
        end_reason=row["end_reason"] or "",
        transferred_to=row["transferred_to"] or "",
        context={str(k): str(v) for k, v in json.loads(row["metadata"]).items()},
    )
    if row["duration_seconds"] is not None:
        call.duration.FromSeconds(row["duration_seconds"])
    return call


def _transcript(row: asyncpg.Record) -> calls_pb2.TranscriptTurn:
    meta = json.loads(row["metadata"])
    return calls_pb2.TranscriptTurn(
        turn_index=row["turn_number"],
        speaker=_SPEAKER.get(row["speaker"], agent_session_pb2.SPEAKER_UNSPECIFIED),
        text=row["text"],
        confidence=row["confidence"] or 0.0,
        time=timestamp(row["started_at"]),
        interrupted=bool(meta.get("interrupted", False)),
    )


def _tool_call(row: asyncpg.Record) -> calls_pb2.ToolCall:
    tc = calls_pb2.ToolCall(id=str(row["id"]), tool_name=row["tool_name"], status=row["status"])
    json_format.ParseDict(json.loads(row["input"]), tc.input)
    json_format.ParseDict(json.loads(row["output"]), tc.output)
    if row["latency_ms"] is not None:
        tc.latency.FromMilliseconds(row["latency_ms"])
    tc.time.FromDatetime(row["created_at"])
    return tc


class CallServicer(calls_pb2_grpc.CallServiceServicer):
    def __init__(self, state: ControlState) -> None:
        self._s = state
        self._edge = Edge(lambda: state.settings)
        # Outbound calls being handed to the bridge (Dial in progress), by call id.
        self._dials: dict[str, asyncio.Task[None]] = {}

    async def ListCalls(
        self, request: calls_pb2.ListCallsRequest, context: Context
    ) -> calls_pb2.ListCallsResponse:
        p = self._s.principal(context, Permission.READ)
        pg = page(request.page_size, request.page_token)
        status = _STATUS.get(request.status) if request.status else None
        if request.status and status is None:
            raise invalid("status", "unknown call status")
        direction = _DIRECTION.get(request.direction) if request.direction else None
        if request.direction and direction is None:
            raise invalid("direction", "unknown call direction")
        agent_id = parse_ref(request.agent_id, "agent_id") if request.agent_id else None
        try:
            since = from_timestamp(request.start_time) if request.HasField("start_time") else None
            until = from_timestamp(request.end_time) if request.HasField("end_time") else None
        except (ValueError, OverflowError):
            raise invalid("start_time", "is not a valid time") from None
        check_text(request.query, "query", max_len=500)
        rows = await self._s.pool.fetch(
            """SELECT * FROM calls
               WHERE tenant_id = $1
                 AND ($2::text IS NULL OR status = $2) AND ($3::text IS NULL OR direction = $3)
                 AND ($4::uuid IS NULL OR agent_id = $4)
                 AND ($5::timestamptz IS NULL OR created_at >= $5)
                 AND ($6::timestamptz IS NULL OR created_at < $6)
                 AND ($7::timestamptz IS NULL OR (created_at, id) < ($7, $8::uuid))
                 AND ($10::text IS NULL OR EXISTS (
                       SELECT 1 FROM transcripts t WHERE t.call_id = calls.id
                         AND t.search @@ websearch_to_tsquery('english', $10)))
               ORDER BY created_at DESC, id DESC LIMIT $9""",
            uuid.UUID(p.tenant_id),
            status,
            direction,
            agent_id,
            since,
            until,
            pg.after[0] if pg.after else None,
            pg.after[1] if pg.after else None,
            pg.size + 1,
            request.query or None,
        )
        return calls_pb2.ListCallsResponse(
            calls=[to_proto(r) for r in rows[: pg.size]], next_page_token=next_token(rows, pg.size)
        )

    async def _existing(self, tenant_id: uuid.UUID, request_id: str) -> asyncpg.Record | None:
        if not request_id:
            return None
        return await self._s.pool.fetchrow(
            "SELECT * FROM calls WHERE tenant_id = $1 AND request_id = $2", tenant_id, request_id
        )

    async def CreateCall(
        self, request: calls_pb2.CreateCallRequest, context: Context
    ) -> calls_pb2.CreateCallResponse:
        p = self._s.principal(context, Permission.WRITE)
        check_strings(request)
        agent_id = parse_ref(request.agent_id, "agent_id")
        check_e164(request.to_number, "to_number")
        if request.from_number:
            check_e164(request.from_number, "from_number")
        check_text(request.request_id, "request_id", max_len=255)
        if len(request.context) > 50 or any(len(k) > 64 or len(v) > 1024 for k, v in request.context.items()):
            raise invalid("context", "at most 50 entries; keys up to 64 and values up to 1024 characters")
        tenant_id = uuid.UUID(p.tenant_id)
        # The call is answered with 202 Accepted by the gateway (grpc-gateway's x-http-code convention):
        # dialing happens after this returns.
        await context.send_initial_metadata((("x-http-code", "202"),))

        existing = await self._existing(tenant_id, request.request_id)
        if existing is not None:
            return calls_pb2.CreateCallResponse(call=to_proto(existing))

        async with self._s.pool.acquire() as conn:
            agent = await conn.fetchrow(
                "SELECT id FROM agents WHERE id = $1 AND tenant_id = $2 AND deleted_at IS NULL",
                agent_id,
                tenant_id,
            )
            if agent is None:
                raise invalid("agent_id", "no such agent")
            from_number = await self._caller_id(conn, tenant_id, agent_id, request.from_number)
            tenant = await conn.fetchrow(
                """SELECT t.max_concurrent_calls,
                          (SELECT COALESCE(SUM(minutes_total - minutes_used), 0) FROM credit_buckets c
                            WHERE c.tenant_id = t.id
                              AND (c.expires_at IS NULL OR c.expires_at > NOW())) AS credit
                   FROM tenants t WHERE t.id = $1""",
                tenant_id,
            )
        assert tenant is not None
        if float(tenant["credit"]) < self._s.settings.control.min_credit_minutes:
            raise failed_precondition("INSUFFICIENT_CREDITS", "the tenant has no call minutes left")

        call_id = uuid.uuid4()
        # The slot is held from here until the bridge ends the call (it refreshes it while live).
        slots = CallSlots(self._s.redis)
        admitted = await slots.admit(p.tenant_id, str(call_id), tenant["max_concurrent_calls"])
        if not admitted:
            raise ApiError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"the tenant already has {tenant['max_concurrent_calls']} calls in progress",
                error_details_pb2.QuotaFailure(
                    violations=[
                        error_details_pb2.QuotaFailure.Violation(
                            subject=f"tenant:{p.tenant_id}", description="concurrent calls limit reached"
                        )
                    ]
                ),
            )
        try:
            row = await self._s.pool.fetchrow(
                """INSERT INTO calls (id, tenant_id, agent_id, direction, status, from_number, to_number,
                                      request_id, metadata)
                   VALUES ($1, $2, $3, 'outbound', 'initiating', $4, $5, $6, $7::jsonb) RETURNING *""",
                call_id,
                tenant_id,
                agent_id,
                from_number,
                request.to_number,
                request.request_id or None,
                json.dumps(dict(request.context)),
            )
        except asyncpg.UniqueViolationError:
            # The same request_id raced us: answer with the call that won.
            await slots.release(str(call_id))
            existing = await self._existing(tenant_id, request.request_id)
            if existing is None:
                raise
            return calls_pb2.CreateCallResponse(call=to_proto(existing))
        except BaseException:
            await slots.release(str(call_id))
            raise
        assert row is not None
        await self._s.redis.hset(
            call_state_key(str(call_id)),
            mapping={
                "status": "initiating",
                "tenant_id": p.tenant_id,
                "agent_id": str(agent_id),
                "direction": "outbound",
                "created_at": row["created_at"].isoformat(),
            },
        )
        # Kept by the bridge while the call lives; this bounds a call that never reaches it.
        await self._s.redis.expire(call_state_key(str(call_id)), CALL_STATE_TTL_SECONDS)
        dial = call_control_pb2.DialRequest(
            call_id=str(call_id),
            tenant_id=p.tenant_id,
            agent_id=str(agent_id),
            from_number=from_number,
            to_number=request.to_number,
            context=dict(request.context),
        )
        task = asyncio.get_running_loop().create_task(self._place(dial), name=f"dial-{call_id}")
        self._dials[str(call_id)] = task
        task.add_done_callback(lambda _t: self._dials.pop(str(call_id), None))
        return calls_pb2.CreateCallResponse(call=to_proto(row))

    async def _place(self, dial: call_control_pb2.DialRequest) -> None:
        """Hands the call to the bridge. If no bridge takes it, the call fails here: its slot is freed
        and call.failed says why (the bridge reports everything after a successful Dial)."""
        try:
            await self._edge.dial_until_placed(dial)
            return
        except grpc.aio.AioRpcError as exc:
            reason = (
                "no_capacity" if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED else "bridge_unavailable"
            )
            log.warning(
                f"outbound call not placed: {exc.code().name}: {exc.details()}",
                extra={"data": {"call_id": dial.call_id, "code": exc.code().name, "details": exc.details()}},
            )
        try:
            await CallSlots(self._s.redis).release(dial.call_id)
            await self._s.redis.hset(
                call_state_key(dial.call_id), mapping={"status": "failed", "end_reason": reason}
            )
            failed = events_pb2.CallFailed(
                reason=reason,
                direction=common_pb2.CALL_DIRECTION_OUTBOUND,
                agent_id=dial.agent_id,
                from_number=dial.from_number,
                to_number=dial.to_number,
            )
            await self._publish(dial.tenant_id, dial.call_id, call_failed=failed)
        except Exception:
            log.exception("failed call not recorded", extra={"data": {"call_id": dial.call_id}})

    async def _caller_id(self, conn: Conn, tenant_id: uuid.UUID, agent_id: uuid.UUID, requested: str) -> str:
        if requested:
            owned = await conn.fetchval(
                "SELECT 1 FROM phone_numbers WHERE e164 = $1 AND tenant_id = $2", requested, tenant_id
            )
            if owned is None:
                raise invalid("from_number", "is not one of this tenant's numbers")
            return requested
        number: str | None = await conn.fetchval(
            """SELECT e164 FROM phone_numbers WHERE tenant_id = $1 AND agent_id = $2
               ORDER BY created_at LIMIT 1""",
            tenant_id,
            agent_id,
        )
        if number is None:
            raise failed_precondition(
                "NO_CALLER_ID", "the agent has no phone number; assign one or pass from_number"
            )
        return number

    async def _call(self, tenant_id: uuid.UUID, call_id: str) -> asyncpg.Record:
        row = await self._s.pool.fetchrow(
            "SELECT * FROM calls WHERE id = $1 AND tenant_id = $2", parse_id(call_id, "call"), tenant_id
        )
        if row is None:
            raise not_found("call")
        return row

    async def GetCall(self, request: calls_pb2.GetCallRequest, context: Context) -> calls_pb2.GetCallResponse:
        p = self._s.principal(context, Permission.READ)
        row = await self._call(uuid.UUID(p.tenant_id), request.id)
        turns = await self._s.pool.fetch(
            "SELECT * FROM transcripts WHERE call_id = $1 ORDER BY turn_number, started_at, id", row["id"]
        )
        tools = await self._s.pool.fetch(
            "SELECT * FROM tool_calls WHERE call_id = $1 ORDER BY created_at", row["id"]
        )
        return calls_pb2.GetCallResponse(
            call=to_proto(row),
            transcript=[_transcript(t) for t in turns],
            tool_calls=[_tool_call(t) for t in tools],
        )

    async def GetCallRecording(
        self, request: calls_pb2.GetCallRecordingRequest, context: Context
    ) -> httpbody_pb2.HttpBody:
        p = self._s.principal(context, Permission.READ)
        call_id = parse_id(request.id, "recording")
        try:
            wav = await self._s.recordings().fetch(self._s.pool, uuid.UUID(p.tenant_id), call_id)
        except RecordingNotFoundError:
            raise not_found("recording") from None
        except RecordingCryptoError as exc:
            log.error(
                "recording does not decrypt", extra={"data": {"call_id": str(call_id), "error": str(exc)}}
            )
            raise ApiError(grpc.StatusCode.DATA_LOSS, "the recording cannot be decrypted") from None
        return httpbody_pb2.HttpBody(content_type="audio/wav", data=wav)

    async def _publish(self, tenant_id: str, call_id: str, *, event_id: str = "", **payload: Any) -> None:
        bus = await self._s.bus()
        await bus.publish(new_event(tenant_id, call_id, "control", event_id=event_id, **payload))

    async def TransferCall(
        self, request: calls_pb2.TransferCallRequest, context: Context
    ) -> calls_pb2.TransferCallResponse:
        p = self._s.principal(context, Permission.WRITE)
        check_strings(request)
        tenant_id = uuid.UUID(p.tenant_id)
        call = await self._call(tenant_id, request.id)
        if not _TRANSFER_TARGET.fullmatch(request.target):
            raise invalid("target", "must be E.164 (+15551234567) or ext:NNNN")
        check_text(request.context, "context", max_len=4_000)
        check_text(request.reason, "reason", max_len=255)
        # The bridge carrying the call executes the transfer; without one the request is recorded for
        # whichever edge carries the call (call.transfer_requested on the bus).
        try:
            await self._edge.transfer(
                str(call["id"]), request.type, request.target, request.context, request.reason
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.FAILED_PRECONDITION:
                raise failed_precondition(
                    "CALL_NOT_CONNECTED", "only a connected call can be transferred"
                ) from None
            raise
        row = await self._s.pool.fetchrow(
            """UPDATE calls SET status = 'transferring', transferred_to = $3, updated_at = NOW()
               WHERE id = $1 AND tenant_id = $2 AND status IN ('connected', 'on_hold') RETURNING *""",
            call["id"],
            tenant_id,
            request.target,
        )
        if row is None:
            raise failed_precondition("CALL_NOT_CONNECTED", "only a connected call can be transferred")
        await self._publish(
            p.tenant_id,
            str(row["id"]),
            call_transfer_requested=events_pb2.CallTransferRequested(
                type=request.type, target=request.target, context=request.context, reason=request.reason
            ),
        )
        return calls_pb2.TransferCallResponse(call=to_proto(row))

    async def HangupCall(
        self, request: calls_pb2.HangupCallRequest, context: Context
    ) -> calls_pb2.HangupCallResponse:
        p = self._s.principal(context, Permission.WRITE)
        check_strings(request)
        check_text(request.reason, "reason", max_len=100)
        tenant_id = uuid.UUID(p.tenant_id)
        call = await self._call(tenant_id, request.id)
        pending = self._dials.pop(str(call["id"]), None)
        if pending is not None:
            pending.cancel()
        # A live call is hung up by its bridge (which reports call.ended); the record is closed here too,
        # so the answer shows it ended.
        await self._edge.hangup(str(call["id"]), request.reason or "api_hangup")
        now = datetime.now(UTC)
        row = await self._s.pool.fetchrow(
            """UPDATE calls SET status = 'completed', ended_at = $3, end_reason = $4, updated_at = NOW(),
                      duration_seconds = CASE WHEN answered_at IS NULL THEN 0
                                              ELSE GREATEST(0, EXTRACT(EPOCH FROM $3 - answered_at))::int END
               WHERE id = $1 AND tenant_id = $2 AND status = ANY($5::text[]) RETURNING *""",
            call["id"],
            tenant_id,
            now,
            request.reason or "api_hangup",
            list(ACTIVE),
        )
        if row is None:
            raise failed_precondition("CALL_ENDED", "the call has already ended")
        await CallSlots(self._s.redis).release(str(row["id"]))
        await self._s.redis.hset(call_state_key(str(row["id"])), "status", "completed")
        await self._s.redis.expire(call_state_key(str(row["id"])), 3600)
        ended = events_pb2.CallEnded(
            end_reason=row["end_reason"], direction=_DIRECTION_ENUM[row["direction"]]
        )
        ended.duration.FromSeconds(row["duration_seconds"] or 0)
        # The same stable id as the bridge's and the agent's report of this call's end: stored once.
        call_id = str(row["id"])
        await self._publish(
            p.tenant_id, call_id, event_id=call_event_id(p.tenant_id, call_id, "call.ended"), call_ended=ended
        )
        return calls_pb2.HangupCallResponse(call=to_proto(row))
