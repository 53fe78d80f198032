"""Events in, records out: the call record (status forward only), transcript, tool calls, usage and
credits, each applied once however often an event arrives; poison and malformed events dead-lettered
without blocking the consumer."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from typing import Any

import pytest
from nats.js.api import ConsumerConfig, DeliverPolicy

from services.shared.events import DEAD_LETTER_PREFIX, EventBus, call_event_id, new_event
from services.shared.events_consumer import Delivery, subscribe
from services.shared.events_publisher import EventPublisher
from services.shared.settings import Settings
from services.worker.records import call_record_id
from services.worker.server import WorkerServer
from services.worker.usage import record_minute
from tests.control.env import ControlPlane
from tests.worker.conftest import eventually
from voice.v1 import (
    agent_session_pb2,
    calls_pb2,
    calls_pb2_grpc,
    common_pb2,
    events_pb2,
    usage_pb2,
    usage_pb2_grpc,
)

INBOUND = common_pb2.CALL_DIRECTION_INBOUND


def lifecycle(tenant: str, call: str, agent: str) -> list[events_pb2.Event]:
    def ev(**payload: Any) -> events_pb2.Event:
        return new_event(tenant, call, "test", **payload)

    turns = [
        (agent_session_pb2.SPEAKER_AGENT, "Hello, thank you for calling.", 0, False),
        (agent_session_pb2.SPEAKER_CALLER, "what are your opening hours", 1, False),
        (agent_session_pb2.SPEAKER_AGENT, "We are open Monday to Friday", 1, True),
    ]
    ended = events_pb2.CallEnded(end_reason="caller_hangup", direction=INBOUND, agent_id=agent)
    ended.duration.FromSeconds(75)
    return [
        ev(agent_joined=events_pb2.AgentJoined(agent_id=agent, direction=INBOUND, from_number="+15550100")),
        ev(usage_minute=events_pb2.UsageMinute(minute_count=1, direction=INBOUND, agent_id=agent)),
        *[
            ev(transcript_turn=events_pb2.TranscriptTurnEvent(speaker=s, text=t, turn_index=i, interrupted=x))
            for s, t, i, x in turns
        ],
        ev(tool_called=events_pb2.ToolCalled(tool_name="book", status="ok")),
        ev(usage_minute=events_pb2.UsageMinute(minute_count=2, direction=INBOUND, agent_id=agent)),
        new_event(tenant, call, "test", event_id=call_event_id(tenant, call, "call.ended"), call_ended=ended),
    ]


async def test_a_call_is_projected_once_however_often_its_events_arrive(
    cp: ControlPlane, worker: WorkerServer, publisher: EventPublisher, wsettings: Settings
) -> None:
    tenant, _ = await cp.tenant("Projections")
    call = f"call_{uuid.uuid4().hex[:12]}"  # a softphone-style id, not a UUID
    events = lifecycle(tenant, call, "a_static")
    for event in events:
        publisher.publish(event)
    publisher.publish(events[1])  # the same event again: deduplicated by JetStream
    assert await publisher.flush(10)
    # ...and once more under another message id, so the worker itself must see it twice.
    bus = await EventBus.connect(wsettings, name="test-dup")
    try:
        await bus.js.publish(
            f"voice.{tenant}.{call}.usage.minute",
            events[1].SerializeToString(),
            headers={"Nats-Msg-Id": "dup"},
        )
        # A late call.connected must not move a completed call back.
        await bus.publish(new_event(tenant, call, "test", call_connected=events_pb2.CallConnected()))
    finally:
        await bus.close()
    record_id = call_record_id(tenant, call)
    meta = cp.metadata(tenant)
    calls = calls_pb2_grpc.CallServiceStub(cp.channel)

    async def done() -> bool:
        reply = await calls.GetCall(calls_pb2.GetCallRequest(id=str(record_id)), metadata=meta)
        return reply.call.status == common_pb2.CALL_STATUS_COMPLETED and len(reply.transcript) == 3

    await eventually(done)
    await asyncio.sleep(0.5)  # let the duplicates and the late event be handled too

    reply = await calls.GetCall(calls_pb2.GetCallRequest(id=str(record_id)), metadata=meta)
    assert reply.call.status == common_pb2.CALL_STATUS_COMPLETED and reply.call.end_reason == "caller_hangup"
    assert reply.call.duration.seconds == 75 and reply.call.from_number == "+15550100"
    assert [(t.turn_index, t.speaker, t.interrupted) for t in reply.transcript] == [
        (0, agent_session_pb2.SPEAKER_AGENT, False),
        (1, agent_session_pb2.SPEAKER_CALLER, False),
        (1, agent_session_pb2.SPEAKER_AGENT, True),
    ]
    assert [t.tool_name for t in reply.tool_calls] == ["book"]
    listed = await calls.ListCalls(calls_pb2.ListCallsRequest(), metadata=meta)
    assert [c.id for c in listed.calls] == [str(record_id)]

    usage = await usage_pb2_grpc.UsageServiceStub(cp.channel).GetUsage(
        usage_pb2.GetUsageRequest(), metadata=meta
    )
    assert usage.inbound_minutes == 2 and usage.calls == 1
    assert usage.credit_minutes_remaining == 58  # 60 trial minutes, two started minutes billed
    async with cp.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM usage_records WHERE call_id = $1", record_id) == 2
        assert await conn.fetchval("SELECT transcript_complete FROM calls WHERE id = $1", record_id)
        hits = await conn.fetchval(
            """SELECT count(*) FROM transcripts
               WHERE call_id = $1 AND search @@ websearch_to_tsquery('english', $2)""",
            record_id,
            "opening hour",
        )
        assert hits == 1


async def test_redelivery_after_ack_timeout_is_applied_once(
    cp: ControlPlane, wsettings: Settings, publisher: EventPublisher
) -> None:
    tenant, _ = await cp.tenant("Redelivery")
    call = f"call_{uuid.uuid4().hex[:12]}"
    event = new_event(
        tenant, call, "test", usage_minute=events_pb2.UsageMinute(minute_count=1, direction=INBOUND)
    )
    publisher.publish(event)
    assert await publisher.flush(10)
    bus = await EventBus.connect(wsettings, name="test-redelivery")
    seen: list[int] = []

    async def slow_then_store(delivery: Delivery) -> None:
        if delivery.event.tenant_id != tenant:
            return
        seen.append(delivery.attempt)
        async with cp.pool.acquire() as conn, conn.transaction():
            await record_minute(conn, delivery.event)
        if delivery.attempt == 1:
            await asyncio.sleep(1.5)  # past ack_wait: the stream redelivers it meanwhile

    sub = await subscribe(
        bus, f"test_redeliver_{uuid.uuid4().hex[:6]}", f"voice.{tenant}.>", slow_then_store, ack_wait_s=0.5
    )
    try:
        await eventually(lambda: len(seen) >= 2)
    finally:
        await sub.stop()
        await bus.close(drain=False)
    async with cp.pool.acquire() as conn:
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM usage_records WHERE call_id = $1", call_record_id(tenant, call)
            )
            == 1
        )
        used = await conn.fetchval(
            "SELECT sum(minutes_used) FROM credit_buckets WHERE tenant_id = $1::uuid", tenant
        )
        assert used == 1


async def test_poison_and_malformed_events_are_dead_lettered_without_blocking(
    cp: ControlPlane, worker: WorkerServer, wsettings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    tenant, _ = await cp.tenant("Poison")
    call = f"call_{uuid.uuid4().hex[:12]}"
    bus = await EventBus.connect(wsettings, name="test-poison")
    try:
        with caplog.at_level(logging.ERROR):
            await bus.js.publish(f"voice.{tenant}.{call}.transcript.turn", b"\xff\x00 not protobuf")
            await bus.js.publish(  # decodes, but no payload: malformed
                f"voice.{tenant}.{call}.transcript.turn",
                events_pb2.Event(event_id="e1", type="transcript.turn", tenant_id=tenant).SerializeToString(),
            )
            good = new_event(
                tenant, call, "test", transcript_turn=events_pb2.TranscriptTurnEvent(text="after the poison")
            )
            await bus.publish(good)

            async def stored() -> bool:
                async with cp.pool.acquire() as conn:
                    return bool(
                        await conn.fetchval("SELECT 1 FROM transcripts WHERE event_id = $1", good.event_id)
                    )

            await eventually(stored)
            sub = await bus.js.subscribe(
                f"{DEAD_LETTER_PREFIX}.worker_transcripts.{tenant}.>",
                ordered_consumer=True,
                config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
            )
            reasons: list[str] = []
            with contextlib.suppress(TimeoutError):
                while len(reasons) < 2:
                    msg = await sub.next_msg(timeout=5)
                    reasons.append((msg.headers or {}).get("Voice-Dead-Reason", ""))
            await sub.unsubscribe()
    finally:
        await bus.close()
    assert len(reasons) == 2 and all(r.startswith("malformed payload") for r in reasons)
    assert any("malformed payload" in r.getMessage() for r in caplog.records)
    # ... and /metrics shows them: per handler and outcome, and the dead-letter stream's depth.
    registry = worker.registry
    dead = {"handler": "transcripts", "outcome": "dead_lettered"}
    assert (registry.get_sample_value("worker_events_total", dead) or 0) >= 2
    await eventually(lambda: (registry.get_sample_value("worker_dead_letter_depth") or 0) >= 2)
    assert registry.get_sample_value("worker_consumers_running") == 5
