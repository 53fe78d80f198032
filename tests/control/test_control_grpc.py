"""The control plane over gRPC: the signed tenant context is required, cannot be forged, and scopes
every query; the client used by the agent service caches GetAgent."""

from __future__ import annotations

import time

import grpc
import pytest
from google.protobuf import field_mask_pb2

from services.control.auth import InternalAuth, Permission, Principal
from services.control.client import AgentConfigClient
from tests.control.env import ControlPlane
from voice.v1 import agents_pb2, agents_pb2_grpc


async def test_unsigned_and_forged_contexts_are_unauthenticated(cp: ControlPlane) -> None:
    tenant_id, _ = await cp.tenant()
    stub = agents_pb2_grpc.AgentServiceStub(cp.channel)
    request = agents_pb2.ListAgentsRequest()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ListAgents(request)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED

    # Plain tenant header, no signature (what a client reaching the port directly could send).
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ListAgents(request, metadata=[("x-voice-tenant-id", tenant_id)])
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED

    # Signed with another secret.
    other = InternalAuth(b"0" * 32).metadata(Principal(tenant_id, "x", Permission.ADMIN))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ListAgents(request, metadata=other)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED

    # A valid signature with one value changed (read -> admin).
    tampered = [
        (k, "admin" if k == "x-voice-permission" else v) for k, v in cp.metadata(tenant_id, Permission.READ)
    ]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ListAgents(request, metadata=tampered)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED

    # Replayed after the allowed age.
    stale = cp.auth.metadata(Principal(tenant_id, "x", Permission.READ), now=time.time() - 3600)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ListAgents(request, metadata=stale)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED

    reply = await stub.ListAgents(request, metadata=cp.metadata(tenant_id, Permission.READ))
    assert list(reply.agents) == []


async def test_permissions_are_enforced_by_the_control_plane(cp: ControlPlane) -> None:
    tenant_id, _ = await cp.tenant()
    stub = agents_pb2_grpc.AgentServiceStub(cp.channel)
    create = agents_pb2.CreateAgentRequest(agent=agents_pb2.Agent(name="x"))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.CreateAgent(create, metadata=cp.metadata(tenant_id, Permission.READ))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    created = await stub.CreateAgent(create, metadata=cp.metadata(tenant_id, Permission.WRITE))
    assert created.agent.tenant_id == tenant_id


async def test_agent_client_caches_get_agent(cp: ControlPlane) -> None:
    tenant_id, _ = await cp.tenant()
    stub = agents_pb2_grpc.AgentServiceStub(cp.channel)
    agent = (
        await stub.CreateAgent(
            agents_pb2.CreateAgentRequest(agent=agents_pb2.Agent(name="cached", greeting="v1")),
            metadata=cp.metadata(tenant_id, Permission.WRITE),
        )
    ).agent
    client = AgentConfigClient(cp.channel, cp.auth, ttl_seconds=60.0)
    first = await client.get_agent(tenant_id, agent.id)
    assert first.greeting == "v1"
    await stub.UpdateAgent(
        agents_pb2.UpdateAgentRequest(
            agent=agents_pb2.Agent(id=agent.id, greeting="v2"),
            update_mask=field_mask_pb2.FieldMask(paths=["greeting"]),
        ),
        metadata=cp.metadata(tenant_id, Permission.WRITE),
    )
    assert (await client.get_agent(tenant_id, agent.id)).greeting == "v1"  # still cached
    client.invalidate(tenant_id, agent.id)
    assert (await client.get_agent(tenant_id, agent.id)).greeting == "v2"
    # The cache key includes the tenant: another tenant gets NOT_FOUND, not the cached agent.
    other, _ = await cp.tenant()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.get_agent(other, agent.id)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert client.stats() == {"hits": 1, "misses": 3}
