"""AgentSessionService/Converse: only the bridge or the tenant's own credential with call permission may
run a tenant's agent, and a credentialed call takes a slot of the tenant's concurrent-call limit."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import grpc
import httpx
import pytest
import redis.asyncio as aioredis

from services.agent.server import build_server
from services.shared.call_slots import CallSlots, active_calls_key
from services.shared.grpc_channels import open_channel
from services.shared.grpc_server import GrpcServer
from services.shared.service_identity import with_identity
from services.shared.settings import load_settings
from tests.control.env import ControlPlane
from tests.gateway.helpers import ok
from voice.v1 import agent_session_pb2 as pb
from voice.v1 import agent_session_pb2_grpc


@pytest.fixture(scope="module")
async def agent(cp: ControlPlane) -> AsyncIterator[GrpcServer]:
    """The real agent service on the control plane's database (its admission reads tenants there)."""
    section = cp.settings.agent_service.model_copy(
        update={
            "grpc_port": 0,
            "metrics_port": 0,
            "vad": cp.settings.agent_service.vad.model_copy(update={"model": "energy"}),
        }
    )
    control = cp.settings.control.model_copy(update={"grpc_port": cp.server.port})
    # As `python -m services.agent` runs it: presenting the agent's certificate to the control plane.
    settings = with_identity(
        cp.settings.model_copy(update={"agent_service": section, "control": control}), "agent"
    )
    server = build_server(settings, publish_events=False)
    await server.start()
    yield server
    await server.stop(grace=0.5)


async def converse(
    address: str, tenant_id: str, *, identity: str, metadata: tuple[tuple[str, str], ...] = ()
) -> grpc.StatusCode:
    """Starts a call for an agent id that does not exist: NOT_FOUND means the Start was admitted."""
    start = pb.SessionStart(
        call_id=f"c_{uuid.uuid4().hex[:12]}",
        tenant_id=tenant_id,
        agent_id=str(uuid.uuid4()),
    )

    async def requests() -> AsyncIterator[pb.ConverseRequest]:
        yield pb.ConverseRequest(start=start)
        await asyncio.sleep(5)

    async with open_channel(load_settings(), address, identity=identity) as channel:
        call = agent_session_pb2_grpc.AgentSessionServiceStub(channel).Converse(
            requests(), metadata=metadata or None
        )
        try:
            async for _ in call:
                pass
        except grpc.aio.AioRpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


async def test_anonymous_converse_is_refused(cp: ControlPlane, agent: GrpcServer) -> None:
    tenant_id, _ = await cp.tenant()
    assert await converse(agent.address, tenant_id, identity="client") == grpc.StatusCode.UNAUTHENTICATED
    # Other services are not the bridge: the ACL refuses them before the handler.
    assert await converse(agent.address, tenant_id, identity="worker") == grpc.StatusCode.PERMISSION_DENIED


async def test_cross_tenant_and_read_only_credentials_are_refused(
    cp: ControlPlane, agent: GrpcServer, http: httpx.AsyncClient
) -> None:
    a_id, _ = await cp.tenant("A")
    _, b_key = await cp.tenant("B")
    code = await converse(agent.address, a_id, identity="client", metadata=(("x-api-key", b_key),))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    _, a_admin = await cp.tenant("A2")
    reader = ok(
        await http.post(
            "/v1/api-keys",
            json={"name": "ro", "permission": "API_KEY_PERMISSION_READ"},
            headers={"X-API-Key": a_admin},
        )
    )
    own = reader["apiKey"]["tenantId"]
    code = await converse(agent.address, own, identity="client", metadata=(("x-api-key", reader["key"]),))
    assert code == grpc.StatusCode.PERMISSION_DENIED


async def test_tenant_credential_is_admitted_and_counted(cp: ControlPlane, agent: GrpcServer) -> None:
    tenant_id, key = await cp.tenant()
    redis = aioredis.Redis.from_url(cp.settings.redis_url)
    try:
        code = await converse(agent.address, tenant_id, identity="client", metadata=(("x-api-key", key),))
        assert code == grpc.StatusCode.NOT_FOUND  # admitted; the agent id does not exist
        # The slot is released when the RPC ends.
        for _ in range(50):
            if await redis.scard(active_calls_key(tenant_id)) == 0:
                break
            await asyncio.sleep(0.05)
        assert await redis.scard(active_calls_key(tenant_id)) == 0
        # At the limit (10 for a new tenant), a further call is refused.
        slots = CallSlots(redis, ttl_seconds=30)
        held = [f"held_{i}_{uuid.uuid4().hex[:6]}" for i in range(10)]
        for call_id in held:
            assert await slots.admit(tenant_id, call_id, 10)
        try:
            code = await converse(agent.address, tenant_id, identity="client", metadata=(("x-api-key", key),))
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        finally:
            for call_id in held:
                await slots.release(call_id)
    finally:
        await redis.aclose()


async def test_bridge_identity_is_admitted_for_any_tenant(cp: ControlPlane, agent: GrpcServer) -> None:
    tenant_id, _ = await cp.tenant()
    assert await converse(agent.address, tenant_id, identity="bridge") == grpc.StatusCode.NOT_FOUND
