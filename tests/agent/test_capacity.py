"""Admission by load: a full agent process refuses the next session with RESOURCE_EXHAUSTED and a retry
hint, says NOT_SERVING while full, and takes calls again once load falls; loop lag in /metrics."""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections.abc import AsyncIterator

import grpc
import pytest
from prometheus_client import CollectorRegistry

from services.agent.demo_agent import DEMO_AGENT_ID, DEMO_TENANT_ID, demo_agent
from services.agent.directory import StaticDirectory
from services.agent.load import LoadMonitor
from services.agent.server import build_server
from services.launcher import health_status
from services.shared.grpc_channels import open_channel
from services.shared.grpc_server import GrpcServer
from services.shared.settings import CapacitySettings, Settings
from services.softphone.caller import CALLER_RATE
from voice.v1 import agent_session_pb2 as pb
from voice.v1 import agent_session_pb2_grpc, media_pb2

# Generous bound for a state change on a loaded machine (a poll limit, not a timing assertion).
WAIT_S = 30.0


@pytest.fixture
async def full_at_one(settings: Settings, triton: str) -> AsyncIterator[GrpcServer]:
    capacity = CapacitySettings(
        max_active_calls=1, max_loop_lag_ms=1e6, max_cpu_percent=1e6, retry_after_ms=250
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
    yield server
    await server.stop(grace=1)


def start(call_id: str) -> pb.ConverseRequest:
    fmt = media_pb2.AudioFormat(codec=media_pb2.AUDIO_CODEC_PCM16, sample_rate=CALLER_RATE, channels=1)
    return pb.ConverseRequest(
        start=pb.SessionStart(
            call_id=call_id, tenant_id=DEMO_TENANT_ID, agent_id=DEMO_AGENT_ID, input_format=fmt
        )
    )


async def until_health(address: str, settings: Settings, wanted: str) -> None:
    end = time.monotonic() + WAIT_S
    status = ""
    while time.monotonic() < end:
        status = await health_status(address, settings=settings)
        if status == wanted:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"health stayed {status}, never {wanted}")


async def test_full_process_refuses_with_a_retry_hint_and_recovers(
    full_at_one: GrpcServer, settings: Settings
) -> None:
    address = full_at_one.address
    hang_up = asyncio.Event()

    async def first_call() -> AsyncIterator[pb.ConverseRequest]:
        yield start("cap-1")
        await hang_up.wait()

    async with open_channel(settings, address, identity="bridge") as channel:
        stub = agent_session_pb2_grpc.AgentSessionServiceStub(channel)
        held = aiter(stub.Converse(first_call()))
        await anext(held)  # the session is running (its first message is on the way back)
        await until_health(address, settings, "NOT_SERVING")

        refused = stub.Converse(iter([start("cap-2")]))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for _ in refused:
                pass
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "capacity" in (err.value.details() or "")
        trailing = dict(err.value.trailing_metadata() or ())
        assert trailing.get("grpc-retry-pushback-ms") == "250"

        hang_up.set()  # the caller hangs up: the process has room again
        async for _ in held:
            pass
        await until_health(address, settings, "SERVING")

        again = stub.Converse(iter([start("cap-3")]))
        assert await anext(aiter(again)) is not None  # admitted: the session answers
        again.cancel()

    url = f"http://127.0.0.1:{full_at_one.metrics_port}/metrics"
    text = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read().decode())
    assert "agent_event_loop_lag_seconds_bucket" in text and "agent_event_loop_lag_ms" in text
    assert 'agent_sessions_refused_total{reason="calls:"} 1.0' in text


async def test_a_late_loop_saturates_and_recovers() -> None:
    monitor = LoadMonitor(
        CapacitySettings(max_loop_lag_ms=20, max_cpu_percent=1e6, sample_interval_ms=10),
        CollectorRegistry(),
    )
    changes: list[bool] = []
    recovered = asyncio.Event()

    async def record(saturated: bool) -> None:
        changes.append(saturated)
        if not saturated:
            recovered.set()

    monitor.listeners.append(record)
    await monitor.start()
    try:
        end = time.monotonic() + WAIT_S
        while not monitor.saturated and time.monotonic() < end:
            time.sleep(0.06)  # noqa: ASYNC251 - a stalled loop on purpose
            await asyncio.sleep(0)
        assert monitor.saturated
        refusal = monitor.admit()
        assert refusal is not None and refusal.reason.startswith("loop_lag")
        await asyncio.wait_for(recovered.wait(), WAIT_S)
        assert not monitor.saturated and monitor.admit() is None and monitor.active == 1
        assert changes[:2] == [True, False]
    finally:
        await monitor.stop()
