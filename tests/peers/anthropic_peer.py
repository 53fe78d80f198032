"""A local peer speaking the Anthropic Messages API over HTTP with Server-Sent Events.

POST /v1/messages with `stream: true` answers as the API documents: `message_start`, `ping`, then per
content block `content_block_start` / `content_block_delta` (`text_delta`, or `input_json_delta` pieces of
a tool use's input) / `content_block_stop`, then `message_delta` (stop_reason, usage) and `message_stop`.
Errors: HTTP status with `{"type": "error", "error": {"type": ..., "message": ...}}` (401
authentication_error, 429 rate_limit_error with retry-after, 500 api_error, 529 overloaded_error), or
an `error` event in the middle of a stream. Requests are checked the way the API checks them (key,
version header, alternating roles starting with the user, every tool_use answered by a tool_result).

Each test scripts what the "model" answers, per model name; unscripted requests get `default`.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tests.peers.asgi import LoopbackServer, Receive, Scope, Send, header, read_body, send_json

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


@dataclass
class Reply:
    """One scripted answer. `status` != 200 answers with that HTTP error instead."""

    text: str = ""
    tool_uses: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    status: int = 200
    retry_after_s: float | None = None
    # Seconds before the first byte (a slow or stalled model); between deltas.
    delay_s: float = 0.0
    delta_delay_s: float = 0.0
    # Send an `error` event (overloaded) after this many text deltas, then end the stream.
    fail_after_deltas: int | None = None
    # Tool input sent as this raw string instead of the JSON of the dict (malformed model output).
    raw_tool_json: str | None = None
    stop_reason: str | None = None


@dataclass
class Received:
    model: str
    body: dict[str, Any]
    headers: dict[str, str]


class AnthropicPeer:
    def __init__(self, api_key: str = "test-anthropic-key") -> None:
        self.api_key = api_key
        self.server = LoopbackServer(self)
        self.requests: list[Received] = []
        self.scripts: dict[str, deque[Reply]] = defaultdict(deque)
        self.default: Callable[[dict[str, Any]], Reply] = lambda _body: Reply(text="Okay.")

    @property
    def url(self) -> str:
        return self.server.url

    def script(self, model: str, *replies: Reply) -> None:
        self.scripts[model].extend(replies)

    def reset(self) -> None:
        self.requests.clear()
        self.scripts.clear()
        self.default = lambda _body: Reply(text="Okay.")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["method"] != "POST" or scope["path"] != "/v1/messages":
            await _error(send, 404, "not_found_error", f"{scope['method']} {scope['path']} not found")
            return
        raw = await read_body(receive)
        # API keys travel as `x-api-key` (older SDKs) or `Authorization: Bearer` (SDK 2.x).
        if self.api_key not in (header(scope, "x-api-key"), header(scope, "authorization")[len("Bearer ") :]):
            await _error(send, 401, "authentication_error", "invalid x-api-key")
            return
        if not header(scope, "anthropic-version"):
            await _error(send, 400, "invalid_request_error", "anthropic-version header is required")
            return
        try:
            body = json.loads(raw)
        except json.JSONDecodeError:
            await _error(send, 400, "invalid_request_error", "body is not JSON")
            return
        problem = validate(body)
        if problem:
            await _error(send, 400, "invalid_request_error", problem)
            return
        model = str(body["model"])
        self.requests.append(Received(model, body, {k.decode(): v.decode() for k, v in scope["headers"]}))
        queue = self.scripts.get(model)
        reply = queue.popleft() if queue else self.default(body)
        if reply.delay_s:
            await asyncio.sleep(reply.delay_s)
        if reply.status != 200:
            headers = {}
            if reply.retry_after_s is not None:
                headers["retry-after"] = str(reply.retry_after_s)
            # The API says whether a retry makes sense; our adapter does not retry anyway.
            await _error(
                send, reply.status, ERROR_TYPES.get(reply.status, "api_error"), "scripted failure", headers
            )
            return
        if not body.get("stream"):
            await _error(send, 400, "invalid_request_error", "this peer only streams")
            return
        await self._stream(send, model, body, reply)

    async def _stream(self, send: Send, model: str, body: dict[str, Any], reply: Reply) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream; charset=utf-8"),
                    (b"cache-control", b"no-cache"),
                    (b"request-id", f"req_{uuid.uuid4().hex[:24]}".encode()),
                ],
            }
        )

        async def event(name: str, data: dict[str, Any]) -> None:
            chunk = f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()
            await send({"type": "http.response.body", "body": chunk, "more_body": True})

        input_tokens = len(json.dumps(body["messages"])) // 4
        await event(
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": f"msg_{uuid.uuid4().hex[:24]}",
                    "type": "message",
                    "role": "assistant",
                    "content": [],
                    "model": model,
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {"input_tokens": input_tokens, "output_tokens": 1},
                },
            },
        )
        await event("ping", {"type": "ping"})
        index = 0
        output_tokens = 0
        if reply.text:
            await event(
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": index,
                    "content_block": {"type": "text", "text": ""},
                },
            )
            words = reply.text.split(" ")
            for i, word in enumerate(words):
                if reply.fail_after_deltas is not None and i >= reply.fail_after_deltas:
                    await event(
                        "error",
                        {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
                    )
                    await send({"type": "http.response.body", "body": b""})
                    return
                if reply.delta_delay_s:
                    await asyncio.sleep(reply.delta_delay_s)
                piece = word if i == 0 else " " + word
                await event(
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": index,
                        "delta": {"type": "text_delta", "text": piece},
                    },
                )
                output_tokens += 1
            await event("content_block_stop", {"type": "content_block_stop", "index": index})
            index += 1
        for name, tool_input in reply.tool_uses:
            await event(
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": index,
                    "content_block": {
                        "type": "tool_use",
                        "id": f"toolu_{uuid.uuid4().hex[:24]}",
                        "name": name,
                        "input": {},
                    },
                },
            )
            raw = reply.raw_tool_json if reply.raw_tool_json is not None else json.dumps(tool_input)
            for start in range(0, len(raw), 12):  # the API streams tool input in small JSON fragments
                await event(
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": index,
                        "delta": {"type": "input_json_delta", "partial_json": raw[start : start + 12]},
                    },
                )
            await event("content_block_stop", {"type": "content_block_stop", "index": index})
            output_tokens += max(1, len(raw) // 4)
            index += 1
        stop = reply.stop_reason or ("tool_use" if reply.tool_uses else "end_turn")
        await event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop, "stop_sequence": None},
                "usage": {"output_tokens": output_tokens},
            },
        )
        await event("message_stop", {"type": "message_stop"})
        await send({"type": "http.response.body", "body": b""})


async def _error(
    send: Send, status: int, kind: str, message: str, headers: dict[str, str] | None = None
) -> None:
    payload = {
        "type": "error",
        "error": {"type": kind, "message": message},
        "request_id": f"req_{uuid.uuid4().hex[:24]}",
    }
    await send_json(send, status, payload, headers)


def validate(body: dict[str, Any]) -> str:
    """What the real API would reject in a request body, or ''."""
    for key in ("model", "max_tokens", "messages"):
        if key not in body:
            return f"{key}: Field required"
    messages = body["messages"]
    if not isinstance(messages, list) or not messages:
        return "messages: at least one message is required"
    if messages[0].get("role") != "user":
        return "messages: first message must use the user role"
    open_tool_ids: set[str] = set()
    for i, message in enumerate(messages):
        role = message.get("role")
        if role not in ("user", "assistant"):
            return f"messages.{i}.role: Input should be 'user' or 'assistant'"
        if i and messages[i - 1].get("role") == role:
            return f"messages.{i}: roles must alternate between user and assistant"
        content = message.get("content")
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        if not blocks and not (role == "assistant" and i == len(messages) - 1):
            return f"messages.{i}: content must be non-empty"
        seen_text = False
        results: set[str] = set()
        for block in blocks:
            kind = block.get("type")
            if kind == "text":
                if not block.get("text") and not (role == "assistant" and i == len(messages) - 1):
                    return f"messages.{i}: text content blocks must be non-empty"
                seen_text = True
            elif kind == "tool_use":
                if role != "assistant":
                    return f"messages.{i}: tool_use blocks are only allowed in assistant messages"
            elif kind == "tool_result":
                if role != "user" or seen_text:
                    return f"messages.{i}: tool_result blocks must come first in a user message"
                results.add(block.get("tool_use_id", ""))
        if role == "user":
            if open_tool_ids - results:
                missing = sorted(open_tool_ids - results)
                return f"messages.{i}: tool_use ids without tool_result blocks: {missing}"
            if results - open_tool_ids:
                return f"messages.{i}: unexpected tool_use_id in tool_result blocks"
            open_tool_ids = set()
        else:
            open_tool_ids = {b["id"] for b in blocks if b.get("type") == "tool_use"}
    for tool in body.get("tools", []):
        if not {"name", "input_schema"} <= tool.keys():
            return "tools: each tool needs name and input_schema"
    return ""
