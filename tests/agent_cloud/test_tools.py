"""Tool webhooks: schema validation, HMAC signature with timestamp, timeouts, failures, concurrency cap."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from google.protobuf.struct_pb2 import Struct

from services.agent.ports import ToolUse
from services.agent.tools import signing
from services.agent.tools.webhook import WebhookToolRunner
from services.shared.outbound_http import safe_client
from services.shared.settings import OutboundHttpSettings
from tests.agent_cloud.conftest import TOOL_SECRET, TenantWebhooks
from voice.v1 import agents_pb2

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "provider": {"type": "string"},
        "date": {"type": "string", "pattern": r"^\d{4}-\d{2}-\d{2}$"},
    },
    "required": ["provider", "date"],
    "additionalProperties": False,
}


def tool(
    name: str, url: str, *, timeout_ms: int = 0, schema: dict[str, Any] | None = None
) -> agents_pb2.ToolDefinition:
    struct = Struct()
    struct.update(schema if schema is not None else SCHEMA)
    return agents_pb2.ToolDefinition(
        name=name,
        description=name,
        input_schema=struct,
        kind=agents_pb2.TOOL_KIND_WEBHOOK,
        webhook_url=url,
        timeout_ms=timeout_ms,
    )


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    # The platform's SSRF-safe client, with the loopback receiver allowed explicitly.
    async with safe_client(OutboundHttpSettings(allowed_networks=["127.0.0.0/8"])) as client:
        yield client


def runner(
    hooks: TenantWebhooks, http: httpx.AsyncClient, *tools: agents_pb2.ToolDefinition
) -> WebhookToolRunner:
    return WebhookToolRunner(
        tools=list(tools), http=http, secret=TOOL_SECRET, tenant_id="t_1", agent_id="a_1", call_id="c_1"
    )


GOOD = {"provider": "Dr. Smith", "date": "2026-01-21"}


async def test_success_is_signed_and_recorded(webhooks: TenantWebhooks, http: httpx.AsyncClient) -> None:
    tools = runner(webhooks, http, tool("check_availability", webhooks.url + "/ok"))
    outcome = await tools.run(ToolUse("toolu_1", "check_availability", GOOD))
    assert outcome.status == "ok"
    assert outcome.output["available_slots"] == ["9:00 AM", "2:00 PM", "4:30 PM"]
    (call,) = webhooks.calls
    assert call.verified  # the tenant's endpoint verified HMAC-SHA256 over timestamp.body
    assert call.body == {
        "tool": "check_availability",
        "tool_use_id": "toolu_1",
        "input": GOOD,
        "call_id": "c_1",
        "tenant_id": "t_1",
        "agent_id": "a_1",
    }
    (record,) = tools.records
    event = record.to_event()
    assert event.tool_name == "check_availability" and event.status == "ok"
    assert dict(event.input) == GOOD
    assert event.output["available_slots"] == outcome.output["available_slots"]


def test_signature_rejects_tampering_and_replay() -> None:
    body = b'{"a":1}'
    headers = signing.signature_headers(TOOL_SECRET, 1_700_000_000, body)
    ts, sig = headers[signing.TIMESTAMP_HEADER], headers[signing.SIGNATURE_HEADER]
    assert signing.verify(TOOL_SECRET, ts, sig, body, now=1_700_000_010)
    assert not signing.verify(TOOL_SECRET, ts, sig, b'{"a":2}', now=1_700_000_010)
    assert not signing.verify(b"other", ts, sig, body, now=1_700_000_010)
    assert not signing.verify(TOOL_SECRET, ts, sig, body, now=1_700_000_000 + 3600)  # replayed an hour later
    assert not signing.verify(TOOL_SECRET, str(int(ts) + 1), sig, body, now=1_700_000_010)
    assert signing.tenant_secret(b"m", "t_1") != signing.tenant_secret(b"m", "t_2")


async def test_schema_invalid_input_never_reaches_the_tenant(
    webhooks: TenantWebhooks, http: httpx.AsyncClient
) -> None:
    tools = runner(webhooks, http, tool("check_availability", webhooks.url + "/ok"))
    outcome = await tools.run(
        ToolUse("t", "check_availability", {"provider": "Dr. Smith", "date": "Tuesday"})
    )
    assert outcome.status == "invalid_input"
    assert any("date" in d for d in outcome.output["details"])
    unknown = await tools.run(ToolUse("t2", "no_such_tool", {}))
    assert unknown.status == "error"
    assert webhooks.calls == []


@pytest.mark.parametrize(
    ("path", "status", "needle"),
    [
        ("/fail", "error", "HTTP 500"),
        ("/garbage", "error", "not JSON"),
        ("/slow", "timeout", "did not answer"),
    ],
)
async def test_failing_tools_give_an_outcome_the_model_can_explain(
    webhooks: TenantWebhooks, http: httpx.AsyncClient, path: str, status: str, needle: str
) -> None:
    tools = runner(webhooks, http, tool("lookup", webhooks.url + path, timeout_ms=300))
    outcome = await tools.run(ToolUse("t", "lookup", GOOD))
    assert outcome.status == status
    assert needle in outcome.output["error"]
    assert tools.records[0].status == status


async def test_at_most_three_tool_calls_run_at_once(
    webhooks: TenantWebhooks, http: httpx.AsyncClient
) -> None:
    counting = tool("count", webhooks.url + "/count", schema={"type": "object"})
    tools = runner(webhooks, http, counting)
    outcomes = await asyncio.gather(*(tools.run(ToolUse(f"t{i}", "count", {"n": i})) for i in range(7)))
    assert [o.output["n"] for o in outcomes] == list(range(7))
    assert webhooks.max_in_flight == 3
