"""Tenant isolation: tenant B can neither read, list, update, delete nor infer the existence of tenant
A's objects; every answer is the one a missing object gets (404, never 403)."""

from __future__ import annotations

import base64
import uuid

import httpx

from tests.control.env import ControlPlane
from tests.gateway.helpers import error, ok, wav


async def test_tenant_b_cannot_reach_tenant_a(cp: ControlPlane, http: httpx.AsyncClient) -> None:
    a_id, a_key = await cp.tenant("A")
    _, b_key = await cp.tenant("B")
    a, b = {"X-API-Key": a_key}, {"X-API-Key": b_key}

    agent = ok(await http.post("/v1/agents", json={"name": "A's agent"}, headers=a))["agent"]
    e164 = await cp.number()
    number = ok(await http.post("/v1/numbers", json={"e164": e164, "agentId": agent["id"]}, headers=a))[
        "number"
    ]
    hook = ok(await http.post("/v1/webhooks", json={"url": "https://a.example.com/h"}, headers=a))["webhook"]
    audio = base64.b64encode(wav(5.5)).decode()
    voice = ok(await http.post("/v1/voices", json={"name": "A voice", "referenceAudio": audio}, headers=a))[
        "voice"
    ]
    call = ok(
        await http.post("/v1/calls", json={"agentId": agent["id"], "toNumber": "+15550001234"}, headers=a),
        202,
    )
    call_id = call["call"]["id"]
    a_key_id = ok(await http.get("/v1/api-keys", headers=a))["apiKeys"][0]["id"]

    missing = str(uuid.uuid4())
    for kind, obj_id in [
        ("agents", agent["id"]),
        ("numbers", number["id"]),
        ("webhooks", hook["id"]),
        ("voices", voice["id"]),
        ("calls", call_id),
        ("api-keys", a_key_id),
        ("tenants", a_id),
    ]:
        theirs = error(await http.get(f"/v1/{kind}/{obj_id}", headers=b), 404, 5)
        nobody = error(await http.get(f"/v1/{kind}/{missing}", headers=b), 404, 5)
        # Same body for "someone else's" and "does not exist": nothing to infer.
        assert theirs == nobody, kind

    # Lists hold none of A's objects.
    for kind, field in [
        ("agents", "agents"),
        ("numbers", "numbers"),
        ("webhooks", "webhooks"),
        ("calls", "calls"),
    ]:
        assert ok(await http.get(f"/v1/{kind}", headers=b))[field] == [], kind
    assert voice["id"] not in {v["id"] for v in ok(await http.get("/v1/voices", headers=b))["voices"]}
    assert ok(await http.get("/v1/usage", headers=b))["calls"] == "0"

    # Updates, deletes and actions: 404, and nothing changed.
    error(await http.patch(f"/v1/agents/{agent['id']}", json={"name": "pwned"}, headers=b), 404, 5)
    error(await http.put(f"/v1/agents/{agent['id']}", json={"name": "pwned"}, headers=b), 404, 5)
    error(await http.delete(f"/v1/agents/{agent['id']}", headers=b), 404, 5)
    error(await http.patch(f"/v1/numbers/{number['id']}", json={"label": "x"}, headers=b), 404, 5)
    error(await http.delete(f"/v1/numbers/{number['id']}", headers=b), 404, 5)
    error(await http.patch(f"/v1/webhooks/{hook['id']}", json={"active": False}, headers=b), 404, 5)
    error(await http.delete(f"/v1/webhooks/{hook['id']}", headers=b), 404, 5)
    error(await http.delete(f"/v1/voices/{voice['id']}", headers=b), 404, 5)
    error(
        await http.post(f"/v1/calls/{call_id}/transfer", json={"target": "+15550000000"}, headers=b), 404, 5
    )
    error(await http.post(f"/v1/calls/{call_id}/hangup", json={}, headers=b), 404, 5)
    error(await http.post(f"/v1/api-keys/{a_key_id}:revoke", json={}, headers=b), 404, 5)
    # Another tenant is not found (as with GET), whatever the caller's role in its own tenant.
    error(await http.patch(f"/v1/tenants/{a_id}", json={"name": "x"}, headers=b), 404, 5)

    # B cannot point its objects at A's: same answer as for a missing agent.
    own_number = {"e164": await cp.number("+1556"), "agentId": agent["id"]}
    theirs = error(await http.post("/v1/numbers", json=own_number, headers=b), 400, 3)
    nobody = error(await http.post("/v1/numbers", json={**own_number, "agentId": missing}, headers=b), 400, 3)
    assert theirs == nobody
    theirs = error(
        await http.post("/v1/calls", json={"agentId": agent["id"], "toNumber": "+15550001"}, headers=b),
        400,
        3,
    )
    error(
        await http.post("/v1/agents", json={"name": "x", "tts": {"voiceId": voice["id"]}}, headers=b), 400, 3
    )
    # A number belongs to one tenant; whether another holds it is not disclosed (same as unprovisioned).
    held = error(await http.post("/v1/numbers", json={"e164": e164}, headers=b), 400, 3)
    never = error(await http.post("/v1/numbers", json={"e164": "+15550000002"}, headers=b), 400, 3)
    assert held == never

    # A tenant field in a request body is ignored: the tenant comes from the credential only.
    spoof = ok(await http.post("/v1/agents", json={"name": "mine", "tenantId": a_id}, headers=b))["agent"]
    assert spoof["tenantId"] != a_id
    assert ok(await http.get(f"/v1/agents/{agent['id']}", headers=a))["agent"]["name"] == "A's agent"
    assert ok(await http.get(f"/v1/numbers/{number['id']}", headers=a))["number"]["label"] == ""


async def test_internal_headers_from_clients_are_not_forwarded(
    cp: ControlPlane, http: httpx.AsyncClient
) -> None:
    a_id, a_key = await cp.tenant("A")
    _, b_key = await cp.tenant("B")
    agent = ok(await http.post("/v1/agents", json={"name": "A"}, headers={"X-API-Key": a_key}))["agent"]
    forged = {
        "X-API-Key": b_key,
        "x-voice-tenant-id": a_id,
        "Grpc-Metadata-x-voice-tenant-id": a_id,
        "Grpc-Metadata-x-voice-platform-admin": "1",
    }
    error(await http.get(f"/v1/agents/{agent['id']}", headers=forged), 404, 5)
