"""Local protocol peers (Deepgram live WebSocket, Anthropic Messages SSE) and a tenant webhook server, all on
loopback; the cloud adapters reach them through their base-URL settings with their real SDKs."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from services.agent.tools import signing
from tests.peers.anthropic_peer import AnthropicPeer
from tests.peers.asgi import LoopbackServer, Receive, Scope, Send, header, read_body, send_bytes, send_json
from tests.peers.deepgram_peer import DeepgramPeer

TOOL_SECRET = b"tenant-secret-for-tests"


@pytest.fixture(scope="session")
async def anthropic_server() -> AsyncIterator[AnthropicPeer]:
    peer = AnthropicPeer()
    await peer.server.start()
    yield peer
    await peer.server.stop()


@pytest.fixture
def anthropic_peer(anthropic_server: AnthropicPeer) -> AnthropicPeer:
    anthropic_server.reset()
    return anthropic_server


@pytest.fixture(scope="session")
async def deepgram_server() -> AsyncIterator[DeepgramPeer]:
    peer = DeepgramPeer()
    await peer.start()
    yield peer
    await peer.stop()


@pytest.fixture
def deepgram_peer(deepgram_server: DeepgramPeer) -> DeepgramPeer:
    deepgram_server.reset()
    return deepgram_server


@dataclass
class WebhookCall:
    path: str
    body: dict[str, Any]
    verified: bool


@dataclass
class TenantWebhooks:
    """A tenant's tool endpoints. Paths: /ok (echoes availability), /slow, /fail (500), /garbage (not
    JSON), /count (slow, counts how many run at once). Every request's signature is checked."""

    secret: bytes
    server: LoopbackServer | None = None
    calls: list[WebhookCall] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    slow_s: float = 2.0

    @property
    def url(self) -> str:
        assert self.server is not None
        return self.server.url

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        raw = await read_body(receive)
        verified = signing.verify(
            self.secret,
            header(scope, signing.TIMESTAMP_HEADER),
            header(scope, signing.SIGNATURE_HEADER),
            raw,
            now=time.time(),
        )
        body = json.loads(raw)
        self.calls.append(WebhookCall(scope["path"], body, verified))
        if not verified:
            await send_json(send, 401, {"error": "bad signature"})
            return
        path = scope["path"]
        if path == "/ok":
            slots = ["9:00 AM", "2:00 PM", "4:30 PM"]
            await send_json(send, 200, {"provider": body["input"].get("provider"), "available_slots": slots})
        elif path == "/slow":
            await asyncio.sleep(self.slow_s)
            await send_json(send, 200, {"late": True})
        elif path == "/fail":
            await send_json(send, 500, {"error": "calendar backend down"})
        elif path == "/garbage":
            await send_bytes(send, 200, b"<html>oops</html>", "text/html")
        elif path == "/count":
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            await asyncio.sleep(0.15)
            self.in_flight -= 1
            await send_json(send, 200, {"n": body["input"].get("n")})
        else:
            await send_json(send, 404, {"error": "no such tool"})


@pytest.fixture(scope="session")
async def webhook_server() -> AsyncIterator[TenantWebhooks]:
    hooks = TenantWebhooks(TOOL_SECRET)
    hooks.server = LoopbackServer(hooks)
    await hooks.server.start()
    yield hooks
    await hooks.server.stop()


@pytest.fixture
def webhooks(webhook_server: TenantWebhooks) -> TenantWebhooks:
    webhook_server.secret = TOOL_SECRET
    webhook_server.calls.clear()
    webhook_server.in_flight = webhook_server.max_in_flight = 0
    return webhook_server
