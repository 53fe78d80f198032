"""The agent's events: ids bounded and unique at Start, the catalog's events published with the stream's
turn numbers and a trace id, and call.ended (stable id) when a Converse stream ends."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from nats.js.api import ConsumerConfig, DeliverPolicy

from services.agent.demo_agent import DEMO_AGENT_ID, DEMO_TENANT_ID
from services.shared.events import EventBus, call_event_id
from services.shared.grpc_channels import open_channel
from services.shared.grpc_server import GrpcServer
from services.shared.settings import Settings
from services.softphone.caller import CallScript, ScriptedCaller
from voice.v1 import agent_session_pb2 as pb
from voice.v1 import agent_session_pb2_grpc, events_pb2


async def start_only(settings: Settings, address: str, call_id: str) -> grpc.aio.AioRpcError:
    async def stream() -> AsyncIterator[pb.ConverseRequest]:
        yield pb.ConverseRequest(
            start=pb.SessionStart(call_id=call_id, tenant_id=DEMO_TENANT_ID, agent_id=DEMO_AGENT_ID)
        )
        await asyncio.sleep(5)

    async with open_channel(settings, address) as channel:
        call = agent_session_pb2_grpc.AgentSessionServiceStub(channel).Converse(stream())
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for _ in call:
                pass
    return err.value


@pytest.mark.parametrize("call_id", ["c" * 129, "c" * 1_100_000, "has.dot", "sp ace"])
async def test_call_ids_that_cannot_be_event_subjects_are_refused_at_start(
    settings: Settings, agent_server: GrpcServer, call_id: str
) -> None:
    error = await start_only(settings, agent_server.address, call_id)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "call_id must be 1-128 characters" in (error.details() or "")


async def test_a_live_call_id_is_refused_a_second_session(
    settings: Settings, agent_server: GrpcServer, caller: ScriptedCaller
) -> None:
    first = asyncio.create_task(caller.call(CallScript(lines=[], hangup_after_s=4.0), call_id="c_live_once"))
    await asyncio.sleep(1.5)
    error = await start_only(settings, agent_server.address, "c_live_once")
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    assert (await first).status == "OK"


async def test_events_match_the_stream(settings: Settings, caller: ScriptedCaller) -> None:
    since = datetime.now(UTC) - timedelta(seconds=1)
    record = await caller.call(
        CallScript(lines=["What are your opening hours?", "Can I speak to someone at reception please?"])
    )
    assert record.transfer is not None
    bus = await EventBus.connect(settings, name="test-agent-events")
    try:
        sub = await bus.js.subscribe(
            f"voice.{DEMO_TENANT_ID}.{record.call_id}.>",
            ordered_consumer=True,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_TIME, opt_start_time=since),
        )
        events: list[events_pb2.Event] = []
        with contextlib.suppress(TimeoutError):
            while True:
                events.append(events_pb2.Event.FromString((await sub.next_msg(timeout=3)).data))
        await sub.unsubscribe()
    finally:
        await bus.close()
    kinds = [e.type for e in events]
    assert kinds[0] == "agent.joined" and kinds[-1] == "call.ended"
    joined = events[0].agent_joined
    assert (joined.from_number, joined.to_number) == ("+15550100", "+15550199")
    assert all(e.trace_id for e in events) and len({e.trace_id for e in events}) == 1
    caller_turns = [e.transcript_turn.turn_index for e in events if e.type == "transcript.turn"
                    and e.transcript_turn.speaker == pb.SPEAKER_CALLER]  # fmt: skip
    agent_turns = [e.transcript_turn.turn_index for e in events if e.type == "transcript.turn"
                   and e.transcript_turn.speaker == pb.SPEAKER_AGENT]  # fmt: skip
    # The greeting is turn 0; caller turn n is answered in agent turn n, as on the stream.
    assert agent_turns[0] == 0 and sorted(set(caller_turns)) == [1, 2] and {1, 2} <= set(agent_turns)
    transfer = next(e for e in events if e.type == "call.transfer_requested").call_transfer_requested
    assert transfer.target == record.transfer.target and transfer.context
    ended = events[-1]
    assert ended.event_id == call_event_id(DEMO_TENANT_ID, record.call_id, "call.ended")
    assert ended.call_ended.end_reason == "transferred" and ended.call_ended.agent_id == DEMO_AGENT_ID
