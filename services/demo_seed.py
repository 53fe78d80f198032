"""Puts the demo agent into the platform the way a tenant would: a tenant and an API key (the
bootstrap path), then the agent itself through the REST gateway (`PUT`/`POST /v1/agents`). The agent
service then reads it from the control plane at call start, like any tenant's agent."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
from google.protobuf.json_format import MessageToDict

from services.agent.demo_agent import demo_agent
from services.control.api_keys import insert_api_key
from services.control.bootstrap import bootstrap
from services.shared.settings import Settings

DEMO_TENANT_NAME = "Dr. Smith's clinic (demo)"


@dataclass(frozen=True)
class SeededAgent:
    tenant_id: str
    agent_id: str
    created: bool
    # The demo tenant's API key: the softphone starts its call with it (a tenant credential on gRPC).
    api_key: str


async def demo_api_key(settings: Settings) -> tuple[uuid.UUID, str]:
    """The demo tenant (created on first run) and a fresh admin API key for it."""
    conn = await asyncpg.connect(settings.database_url)
    try:
        tenant_id = await conn.fetchval(
            "SELECT id FROM tenants WHERE name = $1 AND deleted_at IS NULL ORDER BY created_at LIMIT 1",
            DEMO_TENANT_NAME,
        )
        if tenant_id is None:
            tenant_id, _, key = await bootstrap(
                conn,
                DEMO_TENANT_NAME,
                trial_minutes=settings.control.trial_credit_minutes,
                platform_admin=False,
            )
            return tenant_id, key
        _, key = await insert_api_key(conn, tenant_id, "make demo", "admin", None)
        return tenant_id, key
    finally:
        await conn.close()


async def seed_demo_agent(settings: Settings, gateway_url: str) -> SeededAgent:
    tenant_id, key = await demo_api_key(settings)
    agent = demo_agent()
    body: dict[str, Any] = MessageToDict(agent)
    for output_only in ("id", "tenantId"):
        body.pop(output_only, None)
    async with httpx.AsyncClient(base_url=gateway_url, headers={"X-API-Key": key}, timeout=10) as http:
        listed = await http.get("/v1/agents", params={"pageSize": 100})
        listed.raise_for_status()
        existing = [a for a in listed.json().get("agents", []) if a.get("name") == agent.name]
        if existing:
            reply = await http.put(f"/v1/agents/{existing[0]['id']}", json=body)
        else:
            reply = await http.post("/v1/agents", json=body)
        if reply.is_error:
            raise RuntimeError(f"gateway refused the demo agent: {reply.status_code} {reply.text}")
        return SeededAgent(
            str(tenant_id), str(reply.json()["agent"]["id"]), created=not existing, api_key=key
        )
