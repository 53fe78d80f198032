"""Malformed, unknown, mistyped, oversized and hostile input: a clear 4xx and nothing written."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import httpx
import pytest

from tests.control.env import ControlPlane
from tests.gateway.helpers import error, ok


async def _counts(cp: ControlPlane, tenant_id: str) -> tuple[int, ...]:
    async with cp.pool.acquire() as conn:
        row = await conn.fetchrow(
            """SELECT (SELECT count(*) FROM agents WHERE tenant_id = $1),
                      (SELECT count(*) FROM phone_numbers WHERE tenant_id = $1),
                      (SELECT count(*) FROM webhooks WHERE tenant_id = $1),
                      (SELECT count(*) FROM calls WHERE tenant_id = $1)""",
            uuid.UUID(tenant_id),
        )
    assert row is not None
    return tuple(row)


@pytest.mark.parametrize(
    ("method", "path", "content", "field"),
    [
        ("POST", "/v1/agents", b'{"name": "x",', ""),  # malformed JSON
        ("POST", "/v1/agents", b"[1, 2]", ""),  # not an object
        ("POST", "/v1/agents", b'"just a string"', ""),
        ("POST", "/v1/agents", b'{"name": "x", "noSuchField": 1}', ""),  # unknown field
        ("POST", "/v1/agents", b'{"name": "x", "tools": [{"name": "t", "bogus": true}]}', ""),
        ("POST", "/v1/agents", b'{"name": 42}', ""),  # wrong type
        ("POST", "/v1/agents", b'{"name": "x", "llm": {"maxTokens": "lots"}}', ""),
        ("POST", "/v1/agents", b'{"name": "x", "llm": {"temperature": 7}}', "agent.llm.temperature"),
        ("POST", "/v1/agents", b'{"name": "x", "conversation": {"idlePromptSeconds": -1}}', ""),
        ("POST", "/v1/agents", b'{"name": ""}', "agent.name"),
        ("POST", "/v1/agents", b'{"name": "a\\u0000b"}', "agent.name"),
        ("POST", "/v1/agents", b'{"name": "x", "description": "\\ud800"}', ""),  # lone surrogate
        ("POST", "/v1/agents", b"\xff\xfe{}", ""),  # not UTF-8
        ("POST", "/v1/numbers", b'{"e164": "5551234"}', "number.e164"),
        ("POST", "/v1/numbers", b'{"e164": "+0123456789"}', "number.e164"),
        ("POST", "/v1/numbers", b'{"e164": "+1 555 123 4567"}', "number.e164"),
        ("POST", "/v1/numbers", b'{"e164": "+15551234567\'; DROP TABLE phone_numbers; --"}', "number.e164"),
        ("POST", "/v1/webhooks", b'{"url": "javascript:alert(1)"}', "webhook.url"),
        ("POST", "/v1/calls", b'{"agentId": "1 OR 1=1", "toNumber": "+15551234567"}', "agent_id"),
        (
            "POST",
            "/v1/calls",
            b'{"agentId": "00000000-0000-4000-8000-000000000009", "toNumber": "911"}',
            "to_number",
        ),
        ("GET", "/v1/agents?page_size=abc", b"", ""),
        ("GET", "/v1/agents?page_size=99999999999", b"", ""),
        ("GET", "/v1/agents?bogus=1", b"", "bogus"),
        ("GET", "/v1/calls?status=NOT_A_STATUS", b"", ""),
        ("GET", "/v1/calls?start_time=yesterday", b"", ""),
        ("DELETE", "/v1/agents/x", b'{"unexpected": "body"}', ""),
    ],
)
async def test_bad_input_is_a_clear_400_and_writes_nothing(  # noqa: PLR0917  (pytest parameters)
    cp: ControlPlane, http: httpx.AsyncClient, method: str, path: str, content: bytes, field: str
) -> None:
    tenant_id, key = await cp.tenant()
    before = await _counts(cp, tenant_id)
    response = await http.request(
        method, path, content=content, headers={"X-API-Key": key, "Content-Type": "application/json"}
    )
    body = error(response, 400, 3)
    if field:
        assert body["details"][0]["fieldViolations"][0]["field"] == field, body
    assert await _counts(cp, tenant_id) == before


async def test_sql_injection_looking_strings_are_just_data(cp: ControlPlane, http: httpx.AsyncClient) -> None:
    tenant_id, key = await cp.tenant()
    h = {"X-API-Key": key}
    nasty = "Robert'); DROP TABLE agents; -- \" OR '1'='1"
    agent = ok(await http.post("/v1/agents", json={"name": nasty, "systemPrompt": nasty}, headers=h))["agent"]
    assert ok(await http.get(f"/v1/agents/{agent['id']}", headers=h))["agent"]["name"] == nasty
    error(await http.get("/v1/agents/' OR '1'='1", headers=h), 404, 5)
    error(await http.get("/v1/agents/%27%3B%20DROP%20TABLE%20agents%3B--", headers=h), 404, 5)
    assert (await _counts(cp, tenant_id))[0] == 1


async def test_huge_body_is_413(cp: ControlPlane, http: httpx.AsyncClient) -> None:
    tenant_id, key = await cp.tenant()
    huge = b'{"name": "x", "systemPrompt": "' + b"a" * 2_000_000 + b'"}'
    response = await http.post("/v1/agents", content=huge, headers={"X-API-Key": key})
    error(response, 413, 8)

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(40):
            yield b"a" * 65536

    # Without Content-Length (chunked): counted while reading.
    response = await http.post("/v1/agents", content=chunks(), headers={"X-API-Key": key})
    error(response, 413, 8)
    assert (await _counts(cp, tenant_id))[0] == 0


async def test_long_values_are_refused(cp: ControlPlane, http: httpx.AsyncClient) -> None:
    _, key = await cp.tenant()
    error(await http.post("/v1/agents", json={"name": "n" * 300}, headers={"X-API-Key": key}), 400, 3)
    long_label = {"e164": "+15559876543", "label": "l" * 300}
    error(await http.post("/v1/numbers", json=long_label, headers={"X-API-Key": key}), 400, 3)


async def test_unauthenticated_and_unknown(http: httpx.AsyncClient) -> None:
    error(await http.get("/v1/agents"), 401, 16)
    error(await http.get("/v1/agents", headers={"X-API-Key": "vk_live_nope"}), 401, 16)
    error(await http.get("/v1/agents", headers={"Authorization": "Basic dTpw"}), 401, 16)
    error(await http.get("/v1/nothing-here"), 404, 5)
    response = await http.delete("/v1/agents")
    error(response, 405, 12)
    assert "GET" in response.headers["allow"] and "POST" in response.headers["allow"]
