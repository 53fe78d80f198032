"""Every server: health, reflection, metrics, clear statuses for bad requests, clean stop."""

from __future__ import annotations

import asyncio
import signal
import socket
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from services.bridge.server import build_server as build_bridge
from services.control.server import build_server as build_control
from services.launcher import Platform, health_status, http_status, platform_servers, reflected_services
from services.shared.grpc_channels import open_channel
from services.shared.grpc_server import GrpcServer
from services.shared.settings import Settings, load_settings
from voice.v1 import call_control_pb2, call_control_pb2_grpc, system_pb2, system_pb2_grpc


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())


@pytest.fixture
async def control(settings: Settings) -> AsyncIterator[GrpcServer]:
    ports = settings.control.model_copy(update={"grpc_port": 0, "metrics_port": 0})
    ephemeral = settings.model_copy(update={"control": ports})
    server = build_control(ephemeral)
    await server.start()
    yield server
    await server.stop(grace=1)


async def test_health_serving_for_server_and_each_service(control: GrpcServer) -> None:
    assert await health_status(control.address) == "SERVING"
    assert await health_status(control.address, "voice.v1.AgentService") == "SERVING"
    assert (await health_status(control.address, "voice.v1.NoSuchService")).startswith("NOT_FOUND")


async def test_reflection_lists_services(control: GrpcServer) -> None:
    services = await reflected_services(control.address)
    assert {"voice.v1.SystemService", "voice.v1.AgentService", "grpc.health.v1.Health"} <= set(services)
    assert "grpc.reflection.v1alpha.ServerReflection" in services


async def test_system_health_checks_real_dependencies(control: GrpcServer) -> None:
    async with open_channel(load_settings(), control.address, identity="gateway") as channel:
        reply = await system_pb2_grpc.SystemServiceStub(channel).CheckHealth(system_pb2.CheckHealthRequest())
    assert reply.status == "ok"
    assert {c.name for c in reply.components} == {"postgres", "redis", "nats"}
    assert all(c.healthy for c in reply.components)


async def test_bad_rpc_has_a_clear_status_and_is_counted(settings: Settings) -> None:
    # The bridge's call control answers a malformed Dial with INVALID_ARGUMENT (and counts it).
    sip = settings.webrtc_bridge.sip.model_copy(update={"port": 0})
    ports = settings.webrtc_bridge.model_copy(update={"grpc_port": 0, "metrics_port": 0, "sip": sip})
    bridge = build_bridge(settings.model_copy(update={"webrtc_bridge": ports}))
    await bridge.start()
    try:
        async with open_channel(load_settings(), bridge.address, identity="control") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call_control_pb2_grpc.CallControlServiceStub(channel).Dial(
                    call_control_pb2.DialRequest(call_id="c1")
                )
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        metrics = await asyncio.to_thread(fetch, f"http://127.0.0.1:{bridge.metrics_port}/metrics")
    finally:
        await bridge.stop(grace=1)
    assert (
        'grpc_server_handled_total{grpc_code="INVALID_ARGUMENT",grpc_method="Dial",'
        'grpc_service="voice.v1.CallControlService"} 1.0' in metrics
    )
    assert 'service_up{service="bridge"} 1.0' in metrics


async def test_stop_reports_not_serving_first(settings: Settings) -> None:
    ephemeral = settings.control.model_copy(update={"grpc_port": 0, "metrics_port": 0})
    server = GrpcServer("probe", ephemeral, [], serve_metrics_http=False, identity="control")
    await server.start()
    await server.health.enter_graceful_shutdown()
    assert await health_status(server.address) == "NOT_SERVING"
    await server.stop(grace=0.5)
    status = await health_status(server.address, deadline_s=0.5)
    assert status.startswith(("UNAVAILABLE", "DEADLINE_EXCEEDED"))


async def test_each_service_runs_as_a_process(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """`python -m services.<name>` for every server, on free ports set through the environment."""
    for section in ("CONTROL", "AGENT_SERVICE", "WEBRTC_BRIDGE", "WORKER_SERVICE"):
        monkeypatch.setenv(f"{section}__GRPC_PORT", str(free_port()))
        monkeypatch.setenv(f"{section}__METRICS_PORT", str(free_port()))
    monkeypatch.setenv("API_GATEWAY__PORT", str(free_port()))
    monkeypatch.setenv("API_GATEWAY__WORKERS", "1")
    platform = Platform(platform_servers(load_settings()), run_dir=tmp_path)
    await platform.start(startup_timeout=60)
    procs = list(platform.procs.values())
    try:
        for spec in platform.specs:
            if spec.kind == "grpc":
                assert await health_status(platform.address(spec.name)) == "SERVING", spec.name
        gateway_health = f"http://{platform.address('gateway')}/health"
        assert await asyncio.to_thread(http_status, gateway_health) == 200
        assert "voice.v1.AgentSessionService" in await reflected_services(platform.address("agent"))
        assert "voice.v1.CallControlService" in await reflected_services(platform.address("bridge"))
    finally:
        await platform.stop()
    codes = {spec.name: proc.returncode for spec, proc in zip(platform.specs, procs, strict=True)}
    # SIGTERM -> graceful stop; uvicorn re-raises the signal after its graceful shutdown.
    assert codes == {"control": 0, "agent": 0, "bridge": 0, "worker": 0, "gateway": -signal.SIGTERM}
    assert "gRPC server stopped" in (tmp_path / "agent.log").read_text()
