"""AgentService: a tenant's AI agents (prompt, greeting, voice, tools, provider settings).

Columns hold what the spec's agents table names; the rest of voice.v1.Agent is stored as its proto3
JSON in `settings`, so the proto stays the single schema of an agent's configuration.
"""

from __future__ import annotations

import json
import math
import re
import uuid
from typing import Any

import asyncpg
import jsonschema
from google.protobuf import json_format

from services.control.auth import Permission
from services.control.common import (
    Conn,
    apply_mask,
    check_strings,
    check_text,
    next_token,
    page,
    parse_id,
)
from services.control.errors import invalid, not_found
from services.control.state import ControlState
from services.shared.grpc_server import Context
from services.shared.outbound_http import OutboundPolicy
from voice.v1 import agents_pb2, agents_pb2_grpc

OUTPUT_ONLY = frozenset({"id", "tenant_id", "create_time", "update_time", "tool_signing_version"})
# Fields with their own columns; everything else of Agent goes to the `settings` JSON.
_COLUMNS = ("id", "tenant_id", "name", "description", "system_prompt", "greeting", "tools")
_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_TRANSFER_TARGET = re.compile(r"^(\+[1-9][0-9]{6,14}|ext:[0-9]{1,10})$")
MAX_PROMPT_CHARS = 100_000
MAX_TOOLS = 64


def to_proto(row: asyncpg.Record) -> agents_pb2.Agent:
    agent = agents_pb2.Agent()
    json_format.ParseDict(json.loads(row["settings"]), agent, ignore_unknown_fields=True)
    for tool in json.loads(row["tools"]):
        json_format.ParseDict(tool, agent.tools.add(), ignore_unknown_fields=True)
    agent.id = str(row["id"])
    agent.tenant_id = str(row["tenant_id"])
    agent.name = row["name"]
    agent.description = row["description"] or ""
    agent.system_prompt = row["system_prompt"]
    agent.greeting = row["greeting_message"] or ""
    agent.create_time.FromDatetime(row["created_at"])
    agent.update_time.FromDatetime(row["updated_at"])
    return agent


def _settings_json(agent: agents_pb2.Agent) -> str:
    rest = agents_pb2.Agent()
    rest.CopyFrom(agent)
    for name in (*_COLUMNS, "create_time", "update_time", "tool_signing_version"):
        rest.ClearField(name)  # type: ignore[arg-type]
    return json.dumps(json_format.MessageToDict(rest))


def _tools_json(agent: agents_pb2.Agent) -> str:
    return json.dumps([json_format.MessageToDict(t) for t in agent.tools])


def _check_unit(value: float, field: str, lo: float, hi: float) -> None:
    if math.isnan(value) or not lo <= value <= hi:
        raise invalid(field, f"must be between {lo} and {hi}")


def validate(agent: agents_pb2.Agent, outbound: OutboundPolicy | None = None) -> None:
    """Everything the agent service relies on, checked on write so a bad agent never reaches a call."""
    check_strings(agent, "agent.")
    check_text(agent.name, "agent.name", max_len=255, required=True)
    check_text(agent.description, "agent.description", max_len=10_000)
    check_text(agent.system_prompt, "agent.system_prompt", max_len=MAX_PROMPT_CHARS)
    check_text(agent.greeting, "agent.greeting", max_len=2_000)
    check_text(agent.language, "agent.language", max_len=35)
    if len(agent.tools) > MAX_TOOLS:
        raise invalid("agent.tools", f"at most {MAX_TOOLS} tools")
    seen: set[str] = set()
    for i, tool in enumerate(agent.tools):
        field = f"agent.tools[{i}]"
        if not _TOOL_NAME.fullmatch(tool.name):
            raise invalid(f"{field}.name", "must match ^[a-zA-Z0-9_-]{1,64}$")
        if tool.name in seen:
            raise invalid(f"{field}.name", f"duplicate tool name {tool.name!r}")
        seen.add(tool.name)
        check_text(tool.description, f"{field}.description", max_len=2_000)
        if tool.HasField("input_schema"):
            schema: Any = json_format.MessageToDict(tool.input_schema)
            try:
                jsonschema.Draft202012Validator.check_schema(schema)
            except jsonschema.SchemaError as exc:
                raise invalid(f"{field}.input_schema", f"is not a valid JSON Schema: {exc.message}") from None
        check_text(tool.webhook_url, f"{field}.webhook_url", max_len=2048)
        if tool.kind == agents_pb2.TOOL_KIND_WEBHOOK:
            # The agent will POST there on a caller's behalf: a public https URL only (no SSRF).
            try:
                (outbound or OutboundPolicy()).check_url(tool.webhook_url)
            except ValueError as exc:
                raise invalid(f"{field}.webhook_url", str(exc)) from None
        if tool.timeout_ms > 60_000:
            raise invalid(f"{field}.timeout_ms", "must be at most 60000")
    for i, target in enumerate(agent.transfer_targets):
        if not _TRANSFER_TARGET.fullmatch(target.target):
            raise invalid(f"agent.transfer_targets[{i}].target", "must be E.164 (+15551234567) or ext:NNNN")
    for intent in agent.intents:
        if (
            intent.tool_name
            and intent.tool_name not in seen
            and intent.tool_name
            not in (
                "transfer_call",
                "end_call",
            )
        ):
            raise invalid("agent.intents", f"intent {intent.name!r} names unknown tool {intent.tool_name!r}")
    if agent.llm.HasField("temperature"):
        _check_unit(agent.llm.temperature, "agent.llm.temperature", 0.0, 1.0)
    if agent.llm.max_tokens > 64_000:
        raise invalid("agent.llm.max_tokens", "must be at most 64000")
    if agent.tts.HasField("exaggeration"):
        _check_unit(agent.tts.exaggeration, "agent.tts.exaggeration", 0.25, 2.0)
    if agent.tts.HasField("cfg_weight"):
        _check_unit(agent.tts.cfg_weight, "agent.tts.cfg_weight", 0.0, 1.0)
    if agent.vad.HasField("threshold"):
        _check_unit(agent.vad.threshold, "agent.vad.threshold", 0.01, 0.99)
    for key, value in agent.metadata.items():
        if len(key) > 64 or len(value) > 1024:
            raise invalid("agent.metadata", "keys are at most 64 and values 1024 characters")


async def _voice_ref(conn: Conn, tenant_id: uuid.UUID, agent: agents_pb2.Agent) -> uuid.UUID | None:
    """tts.voice_id is either a voice registry name of the TTS service ("default_female_1") or the id of
    a voice from VoiceService; an id must name a built-in voice or one of this tenant's."""
    try:
        voice_id = uuid.UUID(agent.tts.voice_id)
    except ValueError:
        return None
    found = await conn.fetchval(
        """SELECT 1 FROM voices WHERE id = $1 AND deleted_at IS NULL
             AND (tenant_id IS NULL OR tenant_id = $2)""",
        voice_id,
        tenant_id,
    )
    if found is None:
        raise invalid("agent.tts.voice_id", "no such voice")
    return voice_id


class AgentServicer(agents_pb2_grpc.AgentServiceServicer):
    def __init__(self, state: ControlState) -> None:
        self._s = state
        self._outbound = OutboundPolicy.from_settings(state.settings.outbound_http)

    async def _signed(self, agent: agents_pb2.Agent) -> agents_pb2.Agent:
        """`agent` with the version of its tenant's tool-signing secret, which the agent service signs
        its tool webhooks with (the same on every read, so answers stay comparable)."""
        version = await self._s.pool.fetchval(
            "SELECT tool_signing_version FROM tenants WHERE id = $1", uuid.UUID(agent.tenant_id)
        )
        agent.tool_signing_version = int(version or 1)
        return agent

    async def ListAgents(
        self, request: agents_pb2.ListAgentsRequest, context: Context
    ) -> agents_pb2.ListAgentsResponse:
        p = self._s.principal(context, Permission.READ)
        pg = page(request.page_size, request.page_token)
        rows = await self._s.pool.fetch(
            """SELECT * FROM agents
               WHERE tenant_id = $1 AND deleted_at IS NULL
                 AND ($2::timestamptz IS NULL OR (created_at, id) < ($2, $3::uuid))
               ORDER BY created_at DESC, id DESC LIMIT $4""",
            uuid.UUID(p.tenant_id),
            pg.after[0] if pg.after else None,
            pg.after[1] if pg.after else None,
            pg.size + 1,
        )
        return agents_pb2.ListAgentsResponse(
            agents=[await self._signed(to_proto(r)) for r in rows[: pg.size]],
            next_page_token=next_token(rows, pg.size),
        )

    async def CreateAgent(
        self, request: agents_pb2.CreateAgentRequest, context: Context
    ) -> agents_pb2.CreateAgentResponse:
        p = self._s.principal(context, Permission.WRITE)
        agent = request.agent
        validate(agent, self._outbound)
        tenant_id = uuid.UUID(p.tenant_id)
        async with self._s.pool.acquire() as conn:
            voice_id = await _voice_ref(conn, tenant_id, agent)
            row = await conn.fetchrow(
                """INSERT INTO agents (tenant_id, name, description, voice_id, system_prompt,
                                       greeting_message, tools, settings)
                   VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, $8::jsonb) RETURNING *""",
                tenant_id,
                agent.name,
                agent.description,
                voice_id,
                agent.system_prompt,
                agent.greeting,
                _tools_json(agent),
                _settings_json(agent),
            )
        assert row is not None
        return agents_pb2.CreateAgentResponse(agent=await self._signed(to_proto(row)))

    async def GetAgent(
        self, request: agents_pb2.GetAgentRequest, context: Context
    ) -> agents_pb2.GetAgentResponse:
        p = self._s.principal(context, Permission.READ)
        row = await self._s.pool.fetchrow(
            "SELECT * FROM agents WHERE id = $1 AND tenant_id = $2 AND deleted_at IS NULL",
            parse_id(request.id, "agent"),
            uuid.UUID(p.tenant_id),
        )
        if row is None:
            raise not_found("agent")
        return agents_pb2.GetAgentResponse(agent=await self._signed(to_proto(row)))

    async def UpdateAgent(
        self, request: agents_pb2.UpdateAgentRequest, context: Context
    ) -> agents_pb2.UpdateAgentResponse:
        p = self._s.principal(context, Permission.WRITE)
        agent_id = parse_id(request.agent.id, "agent")
        tenant_id = uuid.UUID(p.tenant_id)
        async with self._s.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                """SELECT * FROM agents WHERE id = $1 AND tenant_id = $2 AND deleted_at IS NULL
                   FOR UPDATE""",
                agent_id,
                tenant_id,
            )
            if row is None:
                raise not_found("agent")
            merged = apply_mask(to_proto(row), request.agent, request.update_mask, OUTPUT_ONLY)
            validate(merged, self._outbound)
            voice_id = await _voice_ref(conn, tenant_id, merged)
            row = await conn.fetchrow(
                """UPDATE agents SET name = $3, description = $4, voice_id = $5, system_prompt = $6,
                          greeting_message = $7, tools = $8::jsonb, settings = $9::jsonb, updated_at = NOW()
                   WHERE id = $1 AND tenant_id = $2 RETURNING *""",
                agent_id,
                tenant_id,
                merged.name,
                merged.description,
                voice_id,
                merged.system_prompt,
                merged.greeting,
                _tools_json(merged),
                _settings_json(merged),
            )
        assert row is not None
        return agents_pb2.UpdateAgentResponse(agent=await self._signed(to_proto(row)))

    async def DeleteAgent(
        self, request: agents_pb2.DeleteAgentRequest, context: Context
    ) -> agents_pb2.DeleteAgentResponse:
        p = self._s.principal(context, Permission.WRITE)
        tenant_id = uuid.UUID(p.tenant_id)
        agent_id = parse_id(request.id, "agent")
        async with self._s.pool.acquire() as conn, conn.transaction():
            # Soft delete: calls and transcripts keep pointing at it; its numbers stop routing to it.
            deleted = await conn.fetchval(
                """UPDATE agents SET deleted_at = NOW(), status = 'deleted', updated_at = NOW()
                   WHERE id = $1 AND tenant_id = $2 AND deleted_at IS NULL RETURNING id""",
                agent_id,
                tenant_id,
            )
            if deleted is None:
                raise not_found("agent")
            await conn.execute(
                """UPDATE phone_numbers SET agent_id = NULL, updated_at = NOW()
                   WHERE agent_id = $1 AND tenant_id = $2""",
                agent_id,
                tenant_id,
            )
        return agents_pb2.DeleteAgentResponse()
