"""A tenant's webhook endpoint on loopback: records each request, answers the scripted status codes
(then 200), and checks the signature with the secret the API returned."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from services.worker.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify
from tests.peers.asgi import LoopbackServer, Receive, Scope, Send, read_body, send_json


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    signed: bool


@dataclass
class WebhookReceiver:
    secrets: dict[str, str] = field(default_factory=dict)  # path -> signing secret
    failures: dict[str, list[int]] = field(default_factory=dict)  # path -> status codes to answer first
    received: list[Received] = field(default_factory=list)
    server: LoopbackServer | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = await read_body(receive)
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        path = scope["path"]
        secret = self.secrets.get(path, "")
        signed = verify(
            secret,
            headers.get(TIMESTAMP_HEADER.lower(), ""),
            headers.get(SIGNATURE_HEADER.lower(), ""),
            body,
            now=time.time(),
        )
        self.received.append(Received(path, headers, body, signed))
        script = self.failures.get(path) or []
        await send_json(send, script.pop(0) if script else 200, {"ok": True})

    async def start(self) -> str:
        self.server = LoopbackServer(self)
        await self.server.start()
        return self.server.url

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop()
