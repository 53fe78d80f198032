"""The ToolRunner port for tenant webhooks (spec 4.4): validate, POST signed JSON, bounded in time and number.

For each tool use the model asks for:
1. the input is validated against the tool's JSON Schema (draft 2020-12); an invalid input never reaches
   the tenant, the model gets the validation errors and can correct itself or tell the caller;
2. at most `max_concurrent` webhooks of one call run at once (spec: 3), others wait for a slot;
3. the POST carries the tool use as JSON, signed with the tenant's secret (tools/signing.py);
4. a webhook that fails, is slow (`timeout_ms`, default 10 s) or answers something that is not JSON gives
   an error outcome the model sees, so the agent tells the caller and carries on, never hangs.
Each call is recorded (name, input, output, status, latency) for the `tool.called` event.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import jsonschema
from google.protobuf.duration_pb2 import Duration
from google.protobuf.json_format import MessageToDict
from google.protobuf.struct_pb2 import Struct

from services.agent.ports import ToolOutcome, ToolUse
from services.agent.tools.signing import signature_headers
from services.shared.outbound_http import ResponseTooLargeError, UnsafeDestinationError, read_capped
from voice.v1 import agents_pb2, events_pb2

log = logging.getLogger(__name__)

MAX_RESPONSE_BYTES = 64 * 1024  # a tool result rides in the model's context: keep it bounded
USER_AGENT = "voice-aiconnected-tools/1"


@dataclass(frozen=True)
class ToolCallRecord:
    tool_use_id: str
    tool_name: str
    input: Mapping[str, Any]
    output: Mapping[str, Any]
    status: str
    latency_s: float

    def to_event(self) -> events_pb2.ToolCalled:
        tool_input, output = Struct(), Struct()
        tool_input.update(dict(self.input))
        output.update(dict(self.output))
        latency = Duration()
        latency.FromNanoseconds(int(self.latency_s * 1e9))
        return events_pb2.ToolCalled(
            tool_name=self.tool_name, input=tool_input, output=output, status=self.status, latency=latency
        )


@dataclass(frozen=True)
class _Tool:
    definition: agents_pb2.ToolDefinition
    validator: jsonschema.protocols.Validator | None
    schema_error: str
    timeout_s: float


class WebhookToolRunner:
    """One call's tool runner (the concurrency cap is per call)."""

    def __init__(
        self,
        *,
        tools: Sequence[agents_pb2.ToolDefinition],
        http: httpx.AsyncClient,
        secret: bytes,
        tenant_id: str,
        agent_id: str,
        call_id: str = "",
        default_timeout_s: float = 10.0,
        max_concurrent: int = 3,
        wall_clock: Callable[[], float] = time.time,
        on_record: Callable[[ToolCallRecord], None] | None = None,
    ) -> None:
        self._http = http
        self._secret = secret
        self._tenant_id = tenant_id
        self._agent_id = agent_id
        self.call_id = call_id
        self._wall_clock = wall_clock
        self._slots = asyncio.Semaphore(max_concurrent)
        self._on_record = on_record
        self.records: list[ToolCallRecord] = []
        self._tools: dict[str, _Tool] = {}
        for definition in tools:
            if definition.kind not in (agents_pb2.TOOL_KIND_WEBHOOK, agents_pb2.TOOL_KIND_UNSPECIFIED):
                continue  # transfer_call / end_call are built into the session
            schema = MessageToDict(definition.input_schema) if definition.HasField("input_schema") else {}
            validator, problem = None, ""
            try:
                cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
                cls.check_schema(schema)
                validator = cls(schema)
            except jsonschema.SchemaError as exc:
                problem = f"the tool's input schema is invalid: {exc.message}"
            timeout_s = definition.timeout_ms / 1000 if definition.timeout_ms else default_timeout_s
            self._tools[definition.name] = _Tool(definition, validator, problem, timeout_s)

    async def run(self, tool_use: ToolUse) -> ToolOutcome:
        started = time.monotonic()
        status, output = await self._run(tool_use)
        outcome = ToolOutcome(status, output, time.monotonic() - started)  # type: ignore[arg-type]
        record = ToolCallRecord(
            tool_use.id, tool_use.name, dict(tool_use.input), output, status, outcome.latency_s
        )
        self.records.append(record)
        if self._on_record is not None:
            self._on_record(record)
        log.info(
            "tool called",
            extra={
                "data": {
                    "tool": tool_use.name,
                    "status": status,
                    "latency_ms": round(outcome.latency_s * 1000, 1),
                }
            },
        )
        return outcome

    async def _run(self, use: ToolUse) -> tuple[str, dict[str, Any]]:
        tool = self._tools.get(use.name)
        if tool is None:
            return "error", {"error": f"there is no tool named {use.name!r}"}
        if tool.validator is None:
            return "error", {"error": tool.schema_error}
        problems = sorted(tool.validator.iter_errors(dict(use.input)), key=lambda e: list(e.absolute_path))
        if problems:
            details = [
                f"{'/'.join(str(p) for p in e.absolute_path) or '(input)'}: {e.message}" for e in problems[:5]
            ]
            return "invalid_input", {
                "error": "the input does not match the tool's schema",
                "details": details,
            }
        url = tool.definition.webhook_url
        if not url:
            return "error", {"error": f"tool {use.name!r} has no webhook URL"}
        body = json.dumps(
            {
                "tool": use.name,
                "tool_use_id": use.id,
                "input": dict(use.input),
                "call_id": self.call_id,
                "tenant_id": self._tenant_id,
                "agent_id": self._agent_id,
            },
            separators=(",", ":"),
        ).encode()
        async with self._slots:
            headers = {
                "Content-Type": "application/json",
                "User-Agent": USER_AGENT,
                **signature_headers(self._secret, int(self._wall_clock()), body),
            }
            try:
                # A total deadline: httpx's own timeouts are per read, and a server trickling bytes
                # would otherwise keep the caller waiting.
                async with (
                    asyncio.timeout(tool.timeout_s),
                    self._http.stream("POST", url, content=body, headers=headers) as response,
                ):
                    # Stop reading past the cap: a tool answer rides in the model's context.
                    raw = await read_capped(response, MAX_RESPONSE_BYTES)
            except TimeoutError:
                return "timeout", {"error": f"the tool did not answer within {tool.timeout_s:g} s"}
            except ResponseTooLargeError:
                return "error", {"error": "the tool's answer is too large"}
            except UnsafeDestinationError:
                return "error", {"error": "the tool's URL is not allowed: it must be a public https address"}
            except httpx.HTTPError as exc:
                return "error", {"error": f"the tool could not be reached ({type(exc).__name__})"}
        if not response.is_success:
            return "error", {"error": f"the tool failed (HTTP {response.status_code})"}
        try:
            value = json.loads(raw) if raw else {}
        except (json.JSONDecodeError, UnicodeDecodeError):
            return "error", {"error": "the tool answered something that is not JSON"}
        return "ok", value if isinstance(value, dict) else {"result": value}
