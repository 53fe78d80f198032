"""Hostile input is refused with 400 and a clear message, never 500: deep JSON, deep tool schemas,
oversized maps and lists, E.164 with a trailing newline, absurd Grpc-Timeout values."""

from __future__ import annotations

from typing import Any

import grpc
import httpx
import pytest
from google.protobuf.struct_pb2 import Struct

from services.shared.grpc_channels import open_channel
from tests.control.env import ControlPlane
from tests.gateway.helpers import error
from voice.v1 import agents_pb2, agents_pb2_grpc


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {"type": "string"}
    for _ in range(depth):
        value = {"type": "object", "properties": {"x": value}}
    return value


async def test_deeply_nested_json_body(cp: ControlPlane, http: httpx.AsyncClient) -> None:
    _, key = await cp.tenant()
    h = {"X-API-Key": key, "Content-Type": "application/json"}
    body = b'{"name": "deep", "metadata": ' + b"[" * 1000 + b"]" * 1000 + b"}"
    assert (
        "nested too deeply"
        in error(await http.post("/v1/agents", content=body, headers=h), 400, 3)["message"]
    )
    body = b"[" * 100_000 + b"]" * 100_000
    error(await http.post("/v1/agents", content=body, headers=h), 400, 3)


async def test_deeply_nested_tool_input_schema(cp: ControlPlane, http: httpx.AsyncClient) -> None:
    _, key = await cp.tenant()
    for depth in (20, 400):
        agent = {"name": "tools", "tools": [{"name": "t", "description": "d", "inputSchema": nested(depth)}]}
        body = error(await http.post("/v1/agents", json=agent, headers={"X-API-Key": key}), 400, 3)
        assert "deep" in body["message"], body


async def test_map_and_list_sizes(cp: ControlPlane, http: httpx.AsyncClient) -> None:
    _, key = await cp.tenant()
    h = {"X-API-Key": key}
    big_map = {f"k{i}": "v" for i in range(65)}
    assert (
        "entries"
        in error(await http.post("/v1/agents", json={"name": "m", "metadata": big_map}, headers=h), 400, 3)[
            "message"
        ]
    )
    long_value = {"k": "v" * 5000}
    error(await http.post("/v1/agents", json={"name": "m", "metadata": long_value}, headers=h), 400, 3)
    faq = [{"question": f"q{i}", "answer": "a"} for i in range(257)]
    assert (
        "items"
        in error(await http.post("/v1/agents", json={"name": "f", "faq": faq}, headers=h), 400, 3)["message"]
    )


async def test_e164_is_anchored_at_the_end(cp: ControlPlane, http: httpx.AsyncClient) -> None:
    _, key = await cp.tenant()
    e164 = await cp.number()
    body = error(
        await http.post("/v1/numbers", json={"e164": e164 + "\n"}, headers={"X-API-Key": key}), 400, 3
    )
    assert "E.164" in body["message"]
    error(
        await http.post(
            "/v1/calls", json={"agentId": "x", "toNumber": "+15551234567\n"}, headers={"X-API-Key": key}
        ),
        400,
        3,
    )


async def test_grpc_timeout_is_capped(cp: ControlPlane, http: httpx.AsyncClient) -> None:
    _, key = await cp.tenant()
    for value in ("99999999H", "3601S"):
        body = error(await http.get("/v1/agents", headers={"X-API-Key": key, "Grpc-Timeout": value}), 400, 3)
        assert "at most" in body["message"]


async def test_grpc_refuses_undecodable_and_too_deep_requests(cp: ControlPlane) -> None:
    _, key = await cp.tenant()
    md = [("x-api-key", key)]
    async with open_channel(cp.settings, cp.server.address, identity="client") as channel:
        raw: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
            "/voice.v1.AgentService/ListAgents"
        )
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await raw(b"\xff\xff\xff", metadata=md)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        schema = Struct()
        schema.update(nested(9))  # 19 JSON levels: decodable, deeper than the control plane accepts
        agent = agents_pb2.Agent(
            name="deep", tools=[agents_pb2.ToolDefinition(name="t", description="d", input_schema=schema)]
        )
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await agents_pb2_grpc.AgentServiceStub(channel).CreateAgent(
                agents_pb2.CreateAgentRequest(agent=agent), metadata=md
            )
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "deep" in (err.value.details() or "")


async def test_openapi_declares_errors_and_the_servers_constraints(http: httpx.AsyncClient) -> None:
    doc = (await http.get("/openapi.json")).json()
    schemas = doc["components"]["schemas"]
    assert set(schemas["google.rpc.Status"]["properties"]) == {"code", "message", "details"}
    operations = [op for item in doc["paths"].values() for op in item.values()]
    assert len({op["operationId"] for op in operations}) == len(operations)
    assert all(
        op["responses"]["default"]["content"]["application/json"]["schema"]["$ref"].endswith(
            "google.rpc.Status"
        )
        for op in operations
    )
    assert schemas["voice.v1.PhoneNumber"]["properties"]["e164"]["pattern"] == r"^\+[1-9][0-9]{6,14}$"
    assert schemas["voice.v1.Agent"]["properties"]["metadata"]["maxProperties"] == 64
    listing = doc["paths"]["/v1/agents"]["get"]["parameters"]
    assert next(p for p in listing if p["name"] == "page_size")["schema"]["minimum"] == 0
