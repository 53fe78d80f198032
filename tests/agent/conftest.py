"""A real agent service in-process (Silero, PocketSphinx, the policy, Triton TTS) and a scripted caller."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from services.agent.demo_agent import DEMO_AGENT_ID, DEMO_TENANT_ID, demo_agent
from services.agent.directory import StaticDirectory
from services.agent.pipeline.session import CallSession
from services.agent.providers.tts import TritonTextToSpeech
from services.agent.server import build_server
from services.shared.grpc_server import GrpcServer
from services.shared.settings import Settings
from services.softphone.caller import ScriptedCaller
from voice.v1 import agents_pb2


class FinishedSessions:
    """Sessions handed to the server's observer when they end, by call id."""

    def __init__(self) -> None:
        self.by_call: dict[str, CallSession] = {}

    def __call__(self, session: CallSession) -> None:
        self.by_call[session.start.call_id] = session


@pytest.fixture(scope="session")
def finished() -> FinishedSessions:
    return FinishedSessions()


IDLE_AGENT_ID = "a_idle"


def idle_agent() -> agents_pb2.Agent:
    """The demo agent, impatient: prompts after 1 s of silence, once, then says goodbye."""
    agent = demo_agent()
    agent.id = IDLE_AGENT_ID
    agent.conversation.idle_prompt_seconds = 1
    agent.conversation.max_idle_prompts = 1
    return agent


@pytest.fixture(scope="session")
async def agent_server(
    settings: Settings, triton: str, finished: FinishedSessions
) -> AsyncIterator[GrpcServer]:
    section = settings.agent_service.model_copy(update={"grpc_port": 0, "metrics_port": 0})
    directory = StaticDirectory([demo_agent(), idle_agent()])
    server = build_server(
        settings.model_copy(update={"agent_service": section}), directory, observer=finished
    )
    await server.start()
    yield server
    await server.stop(grace=1)


@pytest.fixture(scope="session")
async def caller_tts(settings: Settings, triton: str) -> AsyncIterator[TritonTextToSpeech]:
    tts = TritonTextToSpeech(settings.agent_service.tts)
    yield tts
    await tts.close()


@pytest.fixture
def caller(agent_server: GrpcServer, caller_tts: TritonTextToSpeech) -> ScriptedCaller:
    return ScriptedCaller(agent_server.address, caller_tts, tenant_id=DEMO_TENANT_ID, agent_id=DEMO_AGENT_ID)
