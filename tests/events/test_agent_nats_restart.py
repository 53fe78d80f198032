"""NATS restarted in the middle of a call to the demo agent: the call goes on, the agent's publisher spools
what it cannot send and replays it in order, and the stream ends up with the whole call."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from nats.js.api import ConsumerConfig, DeliverPolicy

from services.agent.demo_agent import DEMO_AGENT_ID, DEMO_TENANT_ID, demo_agent
from services.agent.directory import StaticDirectory
from services.agent.providers.tts import TritonTextToSpeech
from services.agent.server import build_server
from services.shared.events import EventBus
from services.shared.grpc_server import GrpcServer
from services.shared.settings import Settings
from services.softphone.caller import CallScript, ScriptedCaller
from tests.events.nats_server import PrivateNats
from voice.v1 import events_pb2


@pytest.fixture
async def agent_on_private_nats(bus_settings: Settings, triton: str) -> AsyncIterator[GrpcServer]:
    section = bus_settings.agent_service.model_copy(update={"grpc_port": 0, "metrics_port": 0})
    server = build_server(
        bus_settings.model_copy(update={"agent_service": section}), StaticDirectory([demo_agent()])
    )
    await server.start()
    yield server
    await server.stop(grace=1)


async def test_nats_restart_mid_call_loses_nothing_and_keeps_order(
    bus_settings: Settings, private_nats: PrivateNats, agent_on_private_nats: GrpcServer, settings: Settings
) -> None:
    tts = TritonTextToSpeech(settings.agent_service.tts)
    caller = ScriptedCaller(
        agent_on_private_nats.address, tts, tenant_id=DEMO_TENANT_ID, agent_id=DEMO_AGENT_ID
    )

    async def outage() -> None:
        await asyncio.sleep(2.0)  # after the greeting started: agent.joined and usage.minute are out
        await private_nats.stop()
        await asyncio.sleep(6.0)  # the caller's first line and the answer happen while NATS is down
        await private_nats.start()

    try:
        record, _ = await asyncio.gather(
            caller.call(CallScript(lines=["What are your opening hours?", "Where is the clinic?"])), outage()
        )
    finally:
        await tts.close()
    assert record.status == "OK"
    spooled = agent_on_private_nats.registry.get_sample_value("events_spooled_total")
    assert spooled is not None and spooled > 0  # the outage did hit the publisher

    bus = await EventBus.connect(bus_settings, name="test-reader")
    events: list[events_pb2.Event] = []
    try:
        for _ in range(100):  # the spool is replayed once the publisher sees NATS again
            sub = await bus.js.subscribe(
                f"voice.{DEMO_TENANT_ID}.{record.call_id}.>",
                ordered_consumer=True,
                config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
            )
            events = []
            with contextlib.suppress(TimeoutError):
                while True:
                    events.append(events_pb2.Event.FromString((await sub.next_msg(timeout=0.5)).data))
            await sub.unsubscribe()
            if events and events[-1].type == "call.ended":
                break
            await asyncio.sleep(0.2)
    finally:
        await bus.close()
    kinds = [e.type for e in events]
    assert kinds[0] == "agent.joined" and kinds[-1] == "call.ended" and kinds.count("call.ended") == 1
    turns = [e.transcript_turn for e in events if e.type == "transcript.turn"]
    texts = " ".join(t.text for t in turns).lower()
    assert "open" in texts and "harbour street" in texts  # both answers, including the one during the outage
    indices = [t.turn_index for t in turns]
    assert indices == sorted(indices)  # in the order they happened
    assert len({e.event_id for e in events}) == len(events)
