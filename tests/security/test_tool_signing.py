"""Tenants can verify tool webhook signatures: the per-tenant secret is readable and rotatable through
the API, and it is the one the agent signs with."""

from __future__ import annotations

import time

import httpx

from services.agent.tools import signing
from services.control.auth import resolve_secret
from tests.control.env import ControlPlane
from tests.gateway.helpers import error, ok


async def test_tenant_reads_and_rotates_its_signing_secret(cp: ControlPlane, http: httpx.AsyncClient) -> None:
    tenant_id, key = await cp.tenant()
    other_id, other_key = await cp.tenant("Other")
    h = {"X-API-Key": key}
    first = ok(await http.get(f"/v1/tenants/{tenant_id}/tool-signing-secret", headers=h))["secret"]
    assert first["version"] == 1 and len(bytes.fromhex(first["secretHex"])) == 32

    # What the agent signs with (TOOL_WEBHOOK_SECRET, the tenant, the version) verifies with it.
    master = resolve_secret(cp.settings, "tool_webhook_secret")
    body = b'{"tool":"check_availability","input":{}}'
    now = int(time.time())
    headers = signing.signature_headers(signing.tenant_secret(master, tenant_id, 1), now, body)
    assert signing.verify(
        bytes.fromhex(first["secretHex"]),
        headers[signing.TIMESTAMP_HEADER],
        headers[signing.SIGNATURE_HEADER],
        body,
        now=now,
    )

    agent = ok(await http.post("/v1/agents", json={"name": "A"}, headers=h))["agent"]
    rotated = ok(await http.post(f"/v1/tenants/{tenant_id}/tool-signing-secret:rotate", json={}, headers=h))
    second = rotated["secret"]
    assert second["version"] == 2 and second["secretHex"] != first["secretHex"] and second["rotateTime"]
    assert second["secretHex"] == signing.tenant_secret(master, tenant_id, 2).hex()
    # Calls starting now sign with the new version (the agent reads it with the agent).
    got = ok(await http.get(f"/v1/agents/{agent['id']}", headers=h))["agent"]
    assert got["toolSigningVersion"] == 2

    # Another tenant's secret is not found; a write key may not read its own.
    error(await http.get(f"/v1/tenants/{other_id}/tool-signing-secret", headers=h), 404, 5)
    error(
        await http.post(
            f"/v1/tenants/{tenant_id}/tool-signing-secret:rotate", json={}, headers={"X-API-Key": other_key}
        ),
        404,
        5,
    )
    writer = ok(
        await http.post(
            "/v1/api-keys", json={"name": "w", "permission": "API_KEY_PERMISSION_WRITE"}, headers=h
        )
    )["key"]
    error(
        await http.get(f"/v1/tenants/{tenant_id}/tool-signing-secret", headers={"X-API-Key": writer}), 403, 7
    )
