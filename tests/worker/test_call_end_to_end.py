"""A call through the demo agent, straight on Converse, and nothing else: the agent publishes its events,
the worker turns them into the call record, transcript, tool calls, usage and debited credits, and a
signed call.ended reaches the tenant's webhook. The test writes no row itself (the tenant, the agent
and the webhook are created through the control plane's API)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest

from services.agent.demo_agent import demo_agent
from services.agent.directory import StaticDirectory
from services.agent.providers.tts import TritonTextToSpeech
from services.agent.server import build_server
from services.shared.grpc_server import GrpcServer
from services.shared.settings import Settings
from services.softphone.caller import CallScript, ScriptedCaller
from services.worker.records import call_record_id
from services.worker.server import WorkerServer
from tests.control.env import ControlPlane
from tests.worker.conftest import eventually
from tests.worker.receiver import WebhookReceiver
from tests.worker.test_webhooks import deliveries, register
from voice.v1 import (
    agent_session_pb2,
    agents_pb2,
    agents_pb2_grpc,
    calls_pb2,
    calls_pb2_grpc,
    common_pb2,
    usage_pb2,
    usage_pb2_grpc,
    webhooks_pb2,
)


@pytest.fixture
async def tenant_agent(cp: ControlPlane) -> tuple[str, agents_pb2.Agent]:
    tenant, _ = await cp.tenant("Dr. Smith end to end")
    agent = demo_agent()
    agent.ClearField("id")
    agent.ClearField("tenant_id")
    created = await agents_pb2_grpc.AgentServiceStub(cp.channel).CreateAgent(
        agents_pb2.CreateAgentRequest(agent=agent), metadata=cp.metadata(tenant)
    )
    return tenant, created.agent


@pytest.fixture
async def agent_server(
    wsettings: Settings, triton: str, tenant_agent: tuple[str, agents_pb2.Agent]
) -> AsyncIterator[GrpcServer]:
    section = wsettings.agent_service.model_copy(update={"grpc_port": 0, "metrics_port": 0})
    server = build_server(
        wsettings.model_copy(update={"agent_service": section}), StaticDirectory([tenant_agent[1]])
    )
    await server.start()
    yield server
    await server.stop(grace=1)


async def test_a_demo_call_becomes_record_transcript_usage_and_a_signed_webhook(
    cp: ControlPlane,
    worker: WorkerServer,
    agent_server: GrpcServer,
    tenant_agent: tuple[str, agents_pb2.Agent],
    settings: Settings,
) -> None:
    tenant, agent = tenant_agent
    receiver = WebhookReceiver()
    url = await receiver.start()
    try:
        webhook_id, secret = await register(cp, tenant, f"{url}/events", ["call.ended"])
        receiver.secrets["/events"] = secret
        tts = TritonTextToSpeech(settings.agent_service.tts)
        try:
            caller = ScriptedCaller(agent_server.address, tts, tenant_id=tenant, agent_id=agent.id)
            record = await caller.call(
                CallScript(
                    lines=["What are your opening hours?", "Can I speak to someone at reception please?"]
                )
            )
        finally:
            await tts.close()
        assert record.status == "OK" and record.transfer is not None

        meta = cp.metadata(tenant)
        calls = calls_pb2_grpc.CallServiceStub(cp.channel)
        record_id = str(call_record_id(tenant, record.call_id))

        async def ended() -> bool:
            found = await deliveries(cp, tenant, webhook_id)
            return bool(found) and found[0].status == webhooks_pb2.WEBHOOK_DELIVERY_STATUS_DELIVERED

        await eventually(ended, within_s=30)
        got = await calls.GetCall(calls_pb2.GetCallRequest(id=record_id), metadata=meta)
    finally:
        await receiver.stop()

    call = got.call
    assert call.status == common_pb2.CALL_STATUS_TRANSFERRED and call.end_reason == "transferred"
    assert call.agent_id == agent.id and call.direction == common_pb2.CALL_DIRECTION_INBOUND
    assert call.from_number == "+15550100" and call.duration.seconds >= 1
    speakers = [t.speaker for t in got.transcript]
    assert speakers[0] == agent_session_pb2.SPEAKER_AGENT and agent_session_pb2.SPEAKER_CALLER in speakers
    assert any(
        "opening" in t.text.lower() for t in got.transcript if t.speaker == agent_session_pb2.SPEAKER_CALLER
    )
    assert "transfer_call" in [t.tool_name for t in got.tool_calls]
    listed = await calls.ListCalls(calls_pb2.ListCallsRequest(query="opening hours"), metadata=meta)
    assert [c.id for c in listed.calls] == [record_id]

    usage = await usage_pb2_grpc.UsageServiceStub(cp.channel).GetUsage(
        usage_pb2.GetUsageRequest(), metadata=meta
    )
    assert usage.inbound_minutes >= 1 and usage.calls == 1
    assert usage.credit_minutes_remaining == 60 - usage.total_minutes

    (hook,) = [r for r in receiver.received if r.path == "/events"]
    assert hook.signed and json.loads(hook.body)["type"] == "call.ended"
