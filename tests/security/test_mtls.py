"""Service identity: every internal gRPC server requires a certificate of the platform's CA and
authorises the caller's identity per method; plaintext is an explicit development choice only."""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from services.bridge.server import build_server as build_bridge
from services.shared.grpc_channels import open_channel
from services.shared.grpc_server import GrpcServer
from services.shared.service_identity import allowed, load_material, plaintext, with_identity
from services.shared.settings import Settings, SettingsError
from voice.v1 import call_control_pb2, call_control_pb2_grpc

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
async def bridge(settings: Settings) -> AsyncIterator[GrpcServer]:
    sip = settings.webrtc_bridge.sip.model_copy(update={"port": 0})
    ports = settings.webrtc_bridge.model_copy(update={"grpc_port": 0, "metrics_port": 0, "sip": sip})
    server = build_bridge(settings.model_copy(update={"webrtc_bridge": ports}))
    await server.start()
    yield server
    await server.stop(grace=0.5)


async def dial(channel: grpc.aio.Channel) -> grpc.StatusCode:
    stub = call_control_pb2_grpc.CallControlServiceStub(channel)
    try:
        await stub.Dial(call_control_pb2.DialRequest(call_id="c1"), timeout=5)
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def rogue_pki(tmp_path: Path) -> Path:
    """A second CA issuing certificates with the platform's service names (an attacker's)."""
    subprocess.run(
        ["bash", "scripts/certs.sh", str(tmp_path / "rogue")], cwd=REPO, check=True, capture_output=True
    )
    return tmp_path / "rogue"


async def test_allowed_service_identity_reaches_the_method(settings: Settings, bridge: GrpcServer) -> None:
    async with open_channel(settings, bridge.address, identity="control") as channel:
        # Past the ACL: the contract is served, its PBX side answers UNIMPLEMENTED or its own status.
        assert await dial(channel) != grpc.StatusCode.PERMISSION_DENIED


async def test_identity_not_in_the_acl_is_denied(settings: Settings, bridge: GrpcServer) -> None:
    async with open_channel(settings, bridge.address, identity="client") as channel:
        assert await dial(channel) == grpc.StatusCode.PERMISSION_DENIED
    async with open_channel(settings, bridge.address, identity="worker") as channel:
        assert await dial(channel) == grpc.StatusCode.PERMISSION_DENIED


async def test_plaintext_client_is_refused(bridge: GrpcServer) -> None:
    async with grpc.aio.insecure_channel(bridge.address) as channel:
        assert await dial(channel) == grpc.StatusCode.UNAVAILABLE


async def test_client_without_certificate_is_refused(settings: Settings, bridge: GrpcServer) -> None:
    ca = load_material(settings.internal_tls, "client").ca
    creds = grpc.ssl_channel_credentials(root_certificates=ca)
    async with grpc.aio.secure_channel(bridge.address, creds) as channel:
        assert await dial(channel) == grpc.StatusCode.UNAVAILABLE


async def test_certificate_of_another_ca_is_refused(
    settings: Settings, bridge: GrpcServer, tmp_path: Path
) -> None:
    rogue = rogue_pki(tmp_path)
    ca = load_material(settings.internal_tls, "client").ca
    creds = grpc.ssl_channel_credentials(
        root_certificates=ca,
        private_key=(rogue / "control.key").read_bytes(),
        certificate_chain=(rogue / "control.crt").read_bytes(),
    )
    async with grpc.aio.secure_channel(bridge.address, creds) as channel:
        assert await dial(channel) == grpc.StatusCode.UNAVAILABLE


async def test_client_refuses_a_server_of_another_ca(settings: Settings, tmp_path: Path) -> None:
    """A rogue server (certificate from another CA) is not trusted by the platform's clients."""
    rogue = rogue_pki(tmp_path)
    tls = settings.internal_tls.model_copy(update={"pki_dir": str(rogue)})
    ports = settings.webrtc_bridge.model_copy(update={"grpc_port": 0, "metrics_port": 0})
    server = GrpcServer(
        "bridge",
        ports,
        [],
        serve_metrics_http=False,
        platform=settings.model_copy(update={"internal_tls": tls}),
    )
    await server.start()
    try:
        async with open_channel(settings, server.address, identity="control") as channel:
            assert await dial(channel) == grpc.StatusCode.UNAVAILABLE
    finally:
        await server.stop(0)


def test_acl_table() -> None:
    assert allowed("agent", "bridge", "/voice.v1.AgentSessionService/Converse")
    assert not allowed("agent", "worker", "/voice.v1.AgentSessionService/Converse")
    assert not allowed("control", "agent", "/voice.v1.TenantService/UpdateTenant")
    assert allowed("control", "agent", "/voice.v1.AgentService/GetAgent")
    assert allowed("worker", "client", "/grpc.health.v1.Health/Check")
    assert not allowed("worker", "stranger", "/grpc.health.v1.Health/Check")


def test_plaintext_is_explicit_and_never_in_production(settings: Settings) -> None:
    assert settings.internal_tls.mode == "mtls" or settings.environment == "development"
    dev = settings.model_copy(
        update={"internal_tls": settings.internal_tls.model_copy(update={"mode": "plaintext"})}
    )
    assert plaintext(dev.model_copy(update={"environment": "development"}))
    with pytest.raises(SettingsError):
        plaintext(dev.model_copy(update={"environment": "production"}))
    assert with_identity(settings, "agent").internal_tls.identity == "agent"


async def test_client_expecting_a_service_refuses_another_services_certificate(
    settings: Settings, bridge: GrpcServer
) -> None:
    """A worker's (or any other service's) certificate cannot stand in for the bridge: a client that
    expects the bridge checks the name in the server's certificate, not only the CA."""
    async with open_channel(settings, bridge.address, identity="control", expect="bridge") as channel:
        assert await dial(channel) != grpc.StatusCode.UNAVAILABLE
    async with open_channel(settings, bridge.address, identity="control", expect="agent") as channel:
        assert await dial(channel) == grpc.StatusCode.UNAVAILABLE
    with pytest.raises(ValueError, match="unknown service"):
        open_channel(settings, bridge.address, expect="stranger")
