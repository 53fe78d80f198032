"""The LanguageModel port on Anthropic Claude (Messages API, streaming, tool use) with the `anthropic` SDK.

The SDK is pointed at `llm.anthropic_base_url` (the real API by default, a local peer in tests). Raw
stream events are read directly: text deltas go to the sentence chunker as they arrive, a tool use is
reported once its `input_json_delta`s have been assembled (at its `content_block_stop`). Every SDK
failure becomes ProviderUnavailable so the degradation chain (resilience/) can switch model without
knowing the SDK. The SDK's own retries default to none: on a phone call, waiting out a backoff is dead
air, and the next tier (Haiku, then the policy) answers sooner than a retry would.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import anthropic

from services.agent.ports import (
    ChatMessage,
    Completed,
    LlmEvent,
    LlmRequest,
    ProviderUnavailable,
    TextDelta,
    ToolCallRequested,
    ToolUse,
)

log = logging.getLogger(__name__)

# Claude needs the conversation to open with the caller; our history opens with the greeting.
CALL_CONNECTED = "(The call has connected.)"
CANCELLED_TOOL_RESULT = json.dumps({"status": "cancelled", "error": "the call moved on before a result"})


def new_client(
    api_key: str, base_url: str, *, timeout_s: float = 30.0, max_retries: int = 0
) -> anthropic.AsyncAnthropic:
    """One client per process: it pools the HTTP connections every call's requests reuse."""
    return anthropic.AsyncAnthropic(
        api_key=api_key, base_url=base_url, timeout=timeout_s, max_retries=max_retries
    )


def to_messages(messages: Sequence[ChatMessage]) -> list[dict[str, Any]]:
    """Our history as Messages API `messages`: strictly alternating roles starting with the user, each
    assistant tool_use answered by a tool_result in the next user turn (the API rejects anything else)."""
    out: list[dict[str, Any]] = []
    pending_tool_ids: list[str] = []

    def add(role: str, blocks: list[dict[str, Any]]) -> None:
        if out and out[-1]["role"] == role:
            out[-1]["content"].extend(blocks)
        else:
            out.append({"role": role, "content": blocks})

    for message in messages:
        if message.role == "user":
            blocks: list[dict[str, Any]] = []
            for tool_id in pending_tool_ids:
                content = message.tool_results.get(tool_id, CANCELLED_TOOL_RESULT)
                blocks.append({"type": "tool_result", "tool_use_id": tool_id, "content": content})
            pending_tool_ids = []
            if message.text:
                blocks.append({"type": "text", "text": message.text})
            if blocks:
                add("user", blocks)
        else:
            if pending_tool_ids:  # two assistant turns in a row after tool uses: close them first
                add("user", [_cancelled(i) for i in pending_tool_ids])
                pending_tool_ids = []
            blocks = [{"type": "text", "text": message.text}] if message.text else []
            for use in message.tool_uses:
                blocks.append({"type": "tool_use", "id": use.id, "name": use.name, "input": dict(use.input)})
                pending_tool_ids.append(use.id)
            if blocks:
                add("assistant", blocks)
    if pending_tool_ids:
        add("user", [_cancelled(i) for i in pending_tool_ids])
    if out and out[0]["role"] == "assistant":
        out.insert(0, {"role": "user", "content": [{"type": "text", "text": CALL_CONNECTED}]})
    # Tool results first in a user turn: the API requires them before any text.
    for turn in out:
        if turn["role"] == "user":
            turn["content"].sort(key=lambda b: 0 if b["type"] == "tool_result" else 1)
    return out


def _cancelled(tool_id: str) -> dict[str, Any]:
    return {"type": "tool_result", "tool_use_id": tool_id, "content": CANCELLED_TOOL_RESULT}


def _retry_after(headers: Mapping[str, str]) -> float | None:
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value:
            try:
                return float(value) * scale
            except ValueError:
                return None
    return None


class ClaudeModel:
    """One Claude model. `prefill` (capability flag): a request may end with an assistant turn that the
    model continues, which the fallback chain uses to finish a sentence another tier started."""

    supports_prefill = True

    def __init__(self, client: anthropic.AsyncAnthropic, model: str, *, name: str | None = None) -> None:
        self._client = client
        self.model = model
        self.name = name or model

    async def stream(self, request: LlmRequest) -> AsyncIterator[LlmEvent]:
        params: dict[str, Any] = {
            "model": self.model,
            "max_tokens": request.max_tokens,
            "messages": to_messages(request.messages),
            # SDK 2.x no longer lists sampling parameters (newer models fix them); the models of spec
            # 3.3.5 still take `temperature`, so it rides in the body as the API documents it.
            "extra_body": {"temperature": request.temperature},
        }
        if request.system:
            params["system"] = request.system
        if request.tools:
            params["tools"] = [
                {"name": t.name, "description": t.description, "input_schema": dict(t.input_schema)}
                for t in request.tools
            ]
        if request.prefill:
            params["messages"].append(
                {"role": "assistant", "content": [{"type": "text", "text": request.prefill}]}
            )
        try:
            stream = await self._client.messages.create(stream=True, **params)
        except anthropic.APIStatusError as exc:
            raise self._unavailable(exc) from None
        except anthropic.APIError as exc:
            raise ProviderUnavailable(self.name, f"{type(exc).__name__}: {exc}") from None
        stop_reason = "end_turn"
        tools: dict[int, dict[str, Any]] = {}  # content block index -> tool_use being assembled
        try:
            async with stream:
                async for event in stream:
                    if event.type == "content_block_start":
                        block = event.content_block
                        if block.type == "tool_use":
                            tools[event.index] = {"id": block.id, "name": block.name, "json": ""}
                    elif event.type == "content_block_delta":
                        delta = event.delta
                        if delta.type == "text_delta":
                            if delta.text:
                                yield TextDelta(delta.text)
                        elif delta.type == "input_json_delta" and event.index in tools:
                            tools[event.index]["json"] += delta.partial_json
                    elif event.type == "content_block_stop" and event.index in tools:
                        yield ToolCallRequested(self._tool_use(tools.pop(event.index)))
                    elif event.type == "message_delta" and event.delta.stop_reason:
                        stop_reason = event.delta.stop_reason
        except anthropic.APIStatusError as exc:  # an `error` event inside the stream (e.g. overloaded)
            raise self._unavailable(exc) from None
        except anthropic.APIError as exc:
            raise ProviderUnavailable(self.name, f"{type(exc).__name__}: {exc}") from None
        yield Completed(stop_reason)

    def _tool_use(self, tool: dict[str, Any]) -> ToolUse:
        raw = tool["json"] or "{}"
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            # Passed on as-is: the tool runner's schema check turns it into an error the model sees.
            log.warning("tool input is not JSON", extra={"data": {"tool": tool["name"], "input": raw}})
            value = {"_unparsed": raw}
        if not isinstance(value, dict):
            value = {"_unparsed": raw}
        return ToolUse(tool["id"], tool["name"], value)

    def _unavailable(self, exc: anthropic.APIStatusError) -> ProviderUnavailable:
        kind = ""
        body = exc.body
        if isinstance(body, dict):
            error = body.get("error")
            if isinstance(error, dict):
                kind = str(error.get("type", ""))
        headers = exc.response.headers if exc.response is not None else {}
        # An `error` event inside a 200 stream surfaces as a status error with the stream's status.
        where = "stream error" if exc.status_code == 200 else f"HTTP {exc.status_code}"
        return ProviderUnavailable(
            self.name,
            f"{where} {kind}".strip(),
            retry_after_s=_retry_after(headers),
        )
