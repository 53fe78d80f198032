"""Outbound requests to tenant URLs (tool and event webhooks) reach public https addresses only."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import AsyncIterator

import httpx
import pytest

from services.agent.ports import ToolUse
from services.agent.tools.webhook import WebhookToolRunner
from services.shared.outbound_http import (
    OutboundPolicy,
    ResponseTooLargeError,
    UnsafeDestinationError,
    is_public,
    read_capped,
    safe_client,
)
from services.shared.settings import OutboundHttpSettings
from tests.control.env import ControlPlane
from tests.gateway.helpers import error
from tests.peers.asgi import LoopbackServer, Receive, Scope, Send, read_body, send_bytes
from voice.v1 import agents_pb2

STRICT = OutboundHttpSettings()
LOOPBACK_ALLOWED = OutboundHttpSettings(allowed_networks=["127.0.0.0/8"])


class Receiver:
    """A loopback endpoint that counts what reaches it: /big answers 1 MB, /redirect points inside."""

    def __init__(self) -> None:
        self.hits = 0
        self.server = LoopbackServer(self)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        await read_body(receive)
        self.hits += 1
        if scope["path"] == "/big":
            await send_bytes(send, 200, b"x" * 1_000_000, "application/octet-stream")
        elif scope["path"] == "/redirect":
            target = "http://169.254.169.254/latest/meta-data/"
            await send_bytes(send, 302, b"", "text/plain", {"location": target})
        else:
            await send_bytes(send, 200, b"{}", "application/json")


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    await r.server.start()
    yield r
    await r.server.stop()


@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1/hook",
        "https://10.1.2.3/hook",
        "https://169.254.169.254/latest/meta-data/",
        "https://[::1]/hook",
        "https://100.64.0.1/hook",
        "https://[fd00::1]/hook",
        "https://224.0.0.1/hook",
        "https://[::ffff:127.0.0.1]/hook",
        "https://localhost/hook",
        "http://example.com/hook",
        "file:///etc/passwd",
    ],
)
async def test_non_public_targets_are_refused(url: str) -> None:
    with pytest.raises(ValueError):
        OutboundPolicy.from_settings(STRICT).check_url(url)
    async with safe_client(STRICT, timeout=5) as http:
        with pytest.raises(UnsafeDestinationError):
            await http.post(url, content=b"{}")


async def test_loopback_receiver_is_not_reached_without_the_allow_list(receiver: Receiver) -> None:
    async with safe_client(STRICT, timeout=5) as http:
        for url in (receiver.server.url, receiver.server.url.replace("http://", "https://")):
            with pytest.raises(UnsafeDestinationError):
                await http.post(url + "/hook", content=b"{}")
    assert receiver.hits == 0


async def test_a_host_name_resolving_inside_is_refused_on_its_resolved_address() -> None:
    """Names pass the URL check; the address they resolve to (and connect to) is what is checked."""
    # Short and hex IPv4 forms are names to the URL parser; getaddrinfo turns them into 127.0.0.1.
    names = ["127.1", "0x7f000001"]
    own = socket.gethostname()
    if all(not is_public(ipaddress.ip_address(i[4][0])) for i in socket.getaddrinfo(own, 443)):
        names.append(own)  # this machine's name resolves to a loopback or private address
    async with safe_client(STRICT, timeout=5) as http:
        for name in names:
            OutboundPolicy.from_settings(STRICT).check_url(f"https://{name}/hook")
            with pytest.raises(UnsafeDestinationError, match="non-public"):
                await http.post(f"https://{name}/hook", content=b"{}")


async def test_redirects_are_never_followed_to_inside(receiver: Receiver) -> None:
    async with safe_client(LOOPBACK_ALLOWED, timeout=5) as http:
        response = await http.post(receiver.server.url + "/redirect", content=b"{}")
        assert response.status_code == 302  # handed back, not followed
        with pytest.raises(UnsafeDestinationError):
            await http.get(receiver.server.url + "/redirect", follow_redirects=True)
    assert receiver.hits == 2


async def test_response_size_is_capped_while_reading(receiver: Receiver) -> None:
    async with (
        safe_client(LOOPBACK_ALLOWED, timeout=5) as http,
        http.stream("GET", receiver.server.url + "/big") as response,
    ):
        with pytest.raises(ResponseTooLargeError):
            await read_capped(response, 64 * 1024)


async def test_allow_listed_receiver_works(receiver: Receiver) -> None:
    async with (
        safe_client(LOOPBACK_ALLOWED, timeout=5) as http,
        http.stream("POST", receiver.server.url + "/hook", content=b"{}") as response,
    ):
        assert await read_capped(response, 1024) == b"{}"


async def test_tool_webhook_to_loopback_never_leaves_the_agent(receiver: Receiver) -> None:
    """The hole: an anonymous call made the agent POST a signed request to a loopback address."""
    definition = agents_pb2.ToolDefinition(
        name="lookup",
        kind=agents_pb2.TOOL_KIND_WEBHOOK,
        webhook_url=receiver.server.url.replace("http://", "https://") + "/hook",
    )
    async with safe_client(STRICT, timeout=5) as http:
        runner = WebhookToolRunner(
            tools=[definition], http=http, secret=b"s" * 32, tenant_id="t", agent_id="a", call_id="c"
        )
        outcome = await runner.run(ToolUse(id="tu_1", name="lookup", input={}))
    assert outcome.status == "error" and "public https" in outcome.output["error"]
    assert receiver.hits == 0


def test_public_address_table() -> None:
    for public in ("8.8.8.8", "1.1.1.1", "2606:4700:4700::1111"):
        assert is_public(ipaddress.ip_address(public)), public
    for inside in (
        "127.0.0.1",
        "10.0.0.1",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "::1",
        "fd12::1",
        "fe80::1",
        "ff02::1",
        "::ffff:10.0.0.1",
        "::127.0.0.1",
        "64:ff9b::a00:1",
        "2002:7f00:1::1",
    ):
        assert not is_public(ipaddress.ip_address(inside)), inside


@pytest.mark.parametrize(
    "url",
    ["https://169.254.169.254/latest", "https://10.0.0.5/hook", "http://127.0.0.1:9/hook", "https://[::1]/x"],
)
async def test_inside_urls_are_refused_when_configured(
    cp: ControlPlane, http: httpx.AsyncClient, url: str
) -> None:
    _, key = await cp.tenant()
    h = {"X-API-Key": key}
    tool = {"name": "t", "description": "d", "kind": "TOOL_KIND_WEBHOOK", "webhookUrl": url}
    error(await http.post("/v1/agents", json={"name": "a", "tools": [tool]}, headers=h), 400, 3)
    error(await http.post("/v1/webhooks", json={"url": url}, headers=h), 400, 3)
