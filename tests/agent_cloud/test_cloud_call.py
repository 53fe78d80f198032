"""Whole calls over real gRPC with the cloud configuration: Deepgram (peer) -> Claude (peer) -> Triton TTS,
tools through a signed tenant webhook, and a warm transfer carrying its briefing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from google.protobuf.struct_pb2 import Struct

from services.agent.demo_agent import DEMO_AGENT_ID, DEMO_TENANT_ID, demo_agent
from services.agent.directory import StaticDirectory
from services.agent.pipeline.session import CallSession
from services.agent.providers.factory import ProviderFactory, ProviderSecrets
from services.agent.providers.tts import TritonTextToSpeech
from services.agent.server import build_server
from services.agent.tools.signing import tenant_secret
from services.agent.tools.webhook import WebhookToolRunner
from services.shared.grpc_server import GrpcServer
from services.shared.settings import OutboundHttpSettings, Settings
from services.softphone.caller import CallScript, ScriptedCaller
from tests.agent_cloud.conftest import TenantWebhooks
from tests.peers.anthropic_peer import AnthropicPeer, Reply
from tests.peers.deepgram_peer import DeepgramPeer
from voice.v1 import agent_session_pb2 as pb
from voice.v1 import agents_pb2

MASTER_SECRET = b"platform-tool-secret"
SONNET = "claude-sonnet-4-20250514"
FILLER = "One moment while I check the calendar."
ANSWER = "Doctor Smith has three openings on Tuesday: 9 AM, 2 PM and 4:30 PM. Which works best for you?"


def cloud_agent(webhook_url: str) -> agents_pb2.Agent:
    agent = demo_agent()
    schema = Struct()
    schema.update(
        {
            "type": "object",
            "properties": {"provider": {"type": "string"}, "date": {"type": "string"}},
            "required": ["provider", "date"],
        }
    )
    agent.tools.append(
        agents_pb2.ToolDefinition(
            name="check_availability",
            description="Free appointment slots of a provider on a date",
            input_schema=schema,
            kind=agents_pb2.TOOL_KIND_WEBHOOK,
            webhook_url=webhook_url,
            filler=FILLER,
        )
    )
    return agent


@dataclass
class CloudPlatform:
    server: GrpcServer
    sessions: dict[str, CallSession]
    caller: ScriptedCaller


@pytest.fixture(scope="module")
async def cloud(
    settings: Settings,
    triton: str,
    anthropic_server: AnthropicPeer,
    deepgram_server: DeepgramPeer,
    webhook_server: TenantWebhooks,
) -> AsyncIterator[CloudPlatform]:
    agent_settings = settings.agent_service.model_copy(
        update={
            "grpc_port": 0,
            "metrics_port": 0,
            "stt": settings.agent_service.stt.model_copy(
                update={"provider": "deepgram", "deepgram_url": deepgram_server.url}
            ),
            "llm": settings.agent_service.llm.model_copy(
                update={"provider": "anthropic", "anthropic_base_url": anthropic_server.url}
            ),
        }
    )
    keys = ProviderSecrets(deepgram_server.api_key, anthropic_server.api_key, MASTER_SECRET)
    # The tenant's tool endpoint is a loopback receiver: allowed explicitly, as tests must.
    loopback = OutboundHttpSettings(allowed_networks=["127.0.0.0/8"])
    factory = ProviderFactory.from_settings(agent_settings, keys, outbound=loopback)
    sessions: dict[str, CallSession] = {}

    def observe(session: CallSession) -> None:
        sessions[session.start.call_id] = session

    server = build_server(
        settings.model_copy(update={"agent_service": agent_settings}),
        StaticDirectory([cloud_agent(webhook_server.url + "/ok")]),
        providers=factory,
        observer=observe,
    )
    await server.start()
    caller_tts = TritonTextToSpeech(settings.agent_service.tts)
    caller = ScriptedCaller(server.address, caller_tts, tenant_id=DEMO_TENANT_ID, agent_id=DEMO_AGENT_ID)
    yield CloudPlatform(server, sessions, caller)
    await caller_tts.close()
    await server.stop(grace=1)


def agent_lines(transcript: list[tuple[float, str, str, bool]]) -> list[str]:
    return [text for _, who, text, _ in transcript if who == "agent"]


async def test_tool_call_with_filler_and_signed_webhook(
    cloud: CloudPlatform,
    anthropic_peer: AnthropicPeer,
    deepgram_peer: DeepgramPeer,
    webhooks: TenantWebhooks,
) -> None:
    webhooks.secret = tenant_secret(MASTER_SECRET, DEMO_TENANT_ID)
    deepgram_peer.utterances.append("Can you check if Doctor Smith has availability next Tuesday?")
    anthropic_peer.script(
        SONNET,
        Reply(tool_uses=[("check_availability", {"provider": "Dr. Smith", "date": "2026-01-20"})]),
        Reply(text=ANSWER),
    )
    record = await cloud.caller.call(CallScript(lines=["Is Doctor Smith available on Tuesday?"]))
    assert record.status == "OK"
    heard = [text for _, who, text, _ in record.transcript if who == "caller"]
    assert heard == ["Can you check if Doctor Smith has availability next Tuesday?"]
    said = " ".join(agent_lines(record.transcript))
    assert FILLER in said and ANSWER in said
    (call,) = webhooks.calls
    assert call.verified and call.body["input"] == {"provider": "Dr. Smith", "date": "2026-01-20"}
    # Claude got the webhook's result as a tool_result and answered from it.
    second = anthropic_peer.requests[1].body["messages"][-1]["content"][0]
    assert second["type"] == "tool_result" and "available_slots" in second["content"]
    session = cloud.sessions[record.call_id]
    assert isinstance(session.providers.tools, WebhookToolRunner)
    (tool_record,) = session.providers.tools.records
    assert tool_record.status == "ok" and tool_record.tool_name == "check_availability"
    assert record.latencies and record.latencies[0].first_audio_frame_sent.ToNanoseconds() > 0


async def test_warm_transfer_carries_the_context_briefing(
    cloud: CloudPlatform, anthropic_peer: AnthropicPeer, deepgram_peer: DeepgramPeer
) -> None:
    deepgram_peer.utterances.append("I'd like to talk to a person about my bill.")
    anthropic_peer.script(
        SONNET,
        Reply(
            text="Of course, I'm connecting you with reception.",
            tool_uses=[
                (
                    "transfer_call",
                    {
                        "target": "ext:100",
                        "type": "warm",
                        "context": "Billing question.",
                        "reason": "caller_request",
                    },
                )
            ],
        ),
    )
    record = await cloud.caller.call(CallScript(lines=["Can I talk to a person please?"]))
    assert record.transfer is not None
    assert record.transfer.type == pb.TRANSFER_TYPE_WARM and record.transfer.target == "ext:100"
    assert record.transfer.context.startswith("Billing question.")
    assert "I'd like to talk to a person about my bill." in record.transfer.context
