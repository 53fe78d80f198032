"""The bridge's agent pool against real agent servers: a call refused by a full agent process goes to the
next connection after the retry hint, and a call nobody takes fails with AgentAtCapacity."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import grpc
import pytest

from services.agent.demo_agent import DEMO_AGENT_ID, DEMO_TENANT_ID, demo_agent
from services.agent.directory import StaticDirectory
from services.agent.server import build_server
from services.bridge.agent_pool import AgentAtCapacity, AgentPool
from services.shared.grpc_channels import DEFAULT_CHANNEL_OPTIONS, open_channel
from services.shared.grpc_server import GrpcServer
from services.shared.settings import CapacitySettings, Settings
from services.softphone.caller import CALLER_RATE
from voice.v1 import agent_session_pb2 as pb
from voice.v1 import agent_session_pb2_grpc, media_pb2


async def agent(settings: Settings, max_calls: int) -> GrpcServer:
    capacity = CapacitySettings(
        max_active_calls=max_calls, max_loop_lag_ms=1e6, max_cpu_percent=1e6, retry_after_ms=100
    )
    section = settings.agent_service.model_copy(
        update={"grpc_port": 0, "metrics_port": 0, "capacity": capacity}
    )
    server = build_server(
        settings.model_copy(update={"agent_service": section}),
        StaticDirectory([demo_agent()]),
        publish_events=False,
    )
    await server.start()
    return server


@pytest.fixture
async def agents(settings: Settings, triton: str) -> AsyncIterator[tuple[GrpcServer, GrpcServer]]:
    """One agent process that takes a single call, and a second one with room."""
    full = await agent(settings, 1)
    roomy = await agent(settings, 0)
    yield full, roomy
    await asyncio.gather(full.stop(grace=1), roomy.stop(grace=1))


def requests(call_id: str, hang_up: asyncio.Event) -> Callable[[], AsyncIterator[pb.ConverseRequest]]:
    fmt = media_pb2.AudioFormat(codec=media_pb2.AUDIO_CODEC_PCM16, sample_rate=CALLER_RATE, channels=1)

    async def stream() -> AsyncIterator[pb.ConverseRequest]:
        yield pb.ConverseRequest(
            start=pb.SessionStart(
                call_id=call_id, tenant_id=DEMO_TENANT_ID, agent_id=DEMO_AGENT_ID, input_format=fmt
            )
        )
        await hang_up.wait()

    return stream


def connect(settings: Settings, address: str) -> grpc.aio.Channel:
    # As AgentPool.connect does: the bridge's identity, the agent's required, a connection of its own.
    options = [*DEFAULT_CHANNEL_OPTIONS, ("grpc.use_local_subchannel_pool", 1)]
    return open_channel(settings, address, options=options, identity="bridge", expect="agent")


async def test_a_refused_call_goes_to_the_next_agent(
    agents: tuple[GrpcServer, GrpcServer], settings: Settings
) -> None:
    full, roomy = agents
    channels = [
        connect(settings, full.address),
        connect(settings, full.address),
        connect(settings, roomy.address),
    ]
    stubs = [agent_session_pb2_grpc.AgentSessionServiceStub(c) for c in channels]
    # Round robin: the first call lands on the full process (its one slot); the second goes to the next
    # connection (the same full process), is refused there and is retried on the second process.
    pool = AgentPool(stubs, attempts=3, max_pushback_ms=500, channels=channels)
    hang_up = asyncio.Event()
    seen: list[object] = []
    try:
        first = await pool.converse(requests("pool-1", hang_up), seen.append)
        assert first.first is not None  # the agent answered
        second = await pool.converse(requests("pool-2", hang_up), seen.append)
        assert second.first is not None  # both concurrent calls have an agent
        assert len(seen) == 3  # one attempt for the first call, two for the second

        # Nobody has room now for a pool that only reaches the full process.
        lone = AgentPool(stubs[:1], attempts=2, max_pushback_ms=50)
        with pytest.raises(AgentAtCapacity) as err:
            await lone.converse(requests("pool-3", hang_up))
        assert err.value.attempts == 2 and "capacity" in err.value.details
    finally:
        hang_up.set()
        await pool.close()


async def test_a_plain_stub_is_a_pool_of_one(settings: Settings) -> None:
    channel = connect(settings, "127.0.0.1:1")
    stub = agent_session_pb2_grpc.AgentSessionServiceStub(channel)
    pool = AgentPool.of(stub)
    assert pool.attempts == 1 and pool.pick() is stub and AgentPool.of(pool) is pool
    await channel.close()
