"""Every REST route of the spec's table (3.1.4) through the gateway, against the real control plane."""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime, timedelta

import httpx

from tests.control.env import ControlPlane
from tests.gateway.helpers import error, ok, wav

AGENT = {
    "name": "Front desk",
    "systemPrompt": "You answer calls for Acme Dental.",
    "greeting": "Thanks for calling Acme Dental!",
    "language": "en-US",
    "tools": [
        {
            "name": "book_appointment",
            "description": "Books a slot",
            "kind": "TOOL_KIND_WEBHOOK",
            "webhookUrl": "https://hooks.example.com/book",
            "inputSchema": {"type": "object", "properties": {"day": {"type": "string"}}, "required": ["day"]},
        }
    ],
    "tts": {"provider": "espeak", "voiceId": "default_female_1"},
    "llm": {"provider": "policy", "temperature": 0.3},
    "metadata": {"team": "front"},
}


async def test_agents_crud(cp: ControlPlane, http: httpx.AsyncClient) -> None:
    _, key = await cp.tenant("Agents Inc")
    h = {"X-API-Key": key}
    created = ok(await http.post("/v1/agents", json=AGENT, headers=h))["agent"]
    assert created["name"] == "Front desk"
    assert created["tools"][0]["inputSchema"]["required"] == ["day"]
    assert created["llm"]["temperature"] == 0.3
    agent_id = created["id"]

    got = ok(await http.get(f"/v1/agents/{agent_id}", headers=h))["agent"]
    assert got == created

    # PATCH: the mask is the body's fields; the rest stays.
    patched = ok(await http.patch(f"/v1/agents/{agent_id}", json={"greeting": "Hello!"}, headers=h))["agent"]
    assert patched["greeting"] == "Hello!"
    assert patched["systemPrompt"] == AGENT["systemPrompt"]
    assert patched["tools"] == created["tools"]

    # PUT without a mask replaces every writable field.
    put = ok(await http.put(f"/v1/agents/{agent_id}", json={"name": "Renamed"}, headers=h))["agent"]
    assert put["name"] == "Renamed" and put["greeting"] == "" and put["tools"] == []
    assert put["id"] == agent_id and put["createTime"] == created["createTime"]

    # PUT with an explicit mask in the query string.
    masked = await http.put(
        f"/v1/agents/{agent_id}?update_mask=description", json={"name": "x", "description": "D"}, headers=h
    )
    assert ok(masked)["agent"]["name"] == "Renamed"

    listed = ok(await http.get("/v1/agents", headers=h))
    assert [a["id"] for a in listed["agents"]] == [agent_id]
    assert listed["nextPageToken"] == ""

    assert ok(await http.delete(f"/v1/agents/{agent_id}", headers=h)) == {}
    error(await http.get(f"/v1/agents/{agent_id}", headers=h), 404, 5)
    error(await http.delete(f"/v1/agents/{agent_id}", headers=h), 404, 5)
    assert ok(await http.get("/v1/agents", headers=h))["agents"] == []


async def test_agent_tool_schema_is_validated_on_write(cp: ControlPlane, http: httpx.AsyncClient) -> None:
    _, key = await cp.tenant()
    bad = {**AGENT, "tools": [{"name": "t", "inputSchema": {"type": "no-such-type"}}]}
    body = error(await http.post("/v1/agents", json=bad, headers={"X-API-Key": key}), 400, 3)
    assert body["details"][0]["@type"] == "type.googleapis.com/google.rpc.BadRequest"
    assert body["details"][0]["fieldViolations"][0]["field"] == "agent.tools[0].input_schema"
    dup = {**AGENT, "tools": [{"name": "a"}, {"name": "a"}]}
    error(await http.post("/v1/agents", json=dup, headers={"X-API-Key": key}), 400, 3)


async def test_pagination_with_cursor(cp: ControlPlane, http: httpx.AsyncClient) -> None:
    _, key = await cp.tenant()
    h = {"X-API-Key": key}
    ids = {
        ok(await http.post("/v1/agents", json={"name": f"a{i}"}, headers=h))["agent"]["id"] for i in range(5)
    }
    seen: list[str] = []
    token = ""
    for _ in range(5):
        page = ok(await http.get("/v1/agents", params={"pageSize": 2, "pageToken": token}, headers=h))
        seen += [a["id"] for a in page["agents"]]
        token = page["nextPageToken"]
        if not token:
            break
    assert len(seen) == 5 and set(seen) == ids
    error(await http.get("/v1/agents", params={"page_token": "garbage!"}, headers=h), 400, 3)
    error(await http.get("/v1/agents", params={"page_size": -1}, headers=h), 400, 3)


async def test_numbers(cp: ControlPlane, http: httpx.AsyncClient) -> None:
    _, key = await cp.tenant()
    h = {"X-API-Key": key}
    agent_id = ok(await http.post("/v1/agents", json={"name": "A"}, headers=h))["agent"]["id"]
    e164 = await cp.number()
    number = ok(await http.post("/v1/numbers", json={"e164": e164, "agentId": agent_id}, headers=h))["number"]
    assert number["e164"] == e164 and number["agentId"] == agent_id and number["provider"] == "gotoconnect"
    assert ok(await http.get(f"/v1/numbers/{number['id']}", headers=h))["number"] == number
    listed = ok(await http.get("/v1/numbers", params={"agent_id": agent_id}, headers=h))["numbers"]
    assert [n["id"] for n in listed] == [number["id"]]
    patched = ok(await http.patch(f"/v1/numbers/{number['id']}", json={"label": "Main line"}, headers=h))
    assert patched["number"]["label"] == "Main line" and patched["number"]["agentId"] == agent_id
    # Assigned already (here, to this tenant): the same answer as a number not in the inventory.
    taken = error(await http.post("/v1/numbers", json={"e164": e164}, headers=h), 400, 3)
    unknown = error(await http.post("/v1/numbers", json={"e164": "+15550000001"}, headers=h), 400, 3)
    assert taken == unknown
    error(await http.post("/v1/numbers", json={"e164": "555-1234"}, headers=h), 400, 3)
    assert ok(await http.delete(f"/v1/numbers/{number['id']}", headers=h)) == {}
    error(await http.get(f"/v1/numbers/{number['id']}", headers=h), 404, 5)


async def test_voices(cp: ControlPlane, http: httpx.AsyncClient) -> None:
    _, key = await cp.tenant()
    h = {"X-API-Key": key}
    voices = ok(await http.get("/v1/voices", headers=h))["voices"]
    assert {"default_female_1", "default_male_1"} <= {v["name"] for v in voices}
    assert all(v["builtIn"] for v in voices)
    audio = base64.b64encode(wav(6.0)).decode()
    created = ok(
        await http.post("/v1/voices", json={"name": "Dr. Smith", "referenceAudio": audio}, headers=h)
    )
    voice = created["voice"]
    assert voice["builtIn"] is False and abs(voice["referenceDurationSeconds"] - 6.0) < 0.01
    assert ok(await http.get(f"/v1/voices/{voice['id']}", headers=h))["voice"] == voice
    short = base64.b64encode(wav(2.0)).decode()
    error(await http.post("/v1/voices", json={"name": "x", "referenceAudio": short}, headers=h), 400, 3)
    not_wav = base64.b64encode(b"hello").decode()
    error(await http.post("/v1/voices", json={"name": "x", "referenceAudio": not_wav}, headers=h), 400, 3)
    # An agent may speak with its tenant's voice, referenced by id.
    agent = {"name": "A", "tts": {"voiceId": voice["id"]}}
    ok(await http.post("/v1/agents", json=agent, headers=h))
    builtin = next(v for v in voices if v["builtIn"])
    error(await http.delete(f"/v1/voices/{builtin['id']}", headers=h), 404, 5)
    assert ok(await http.delete(f"/v1/voices/{voice['id']}", headers=h)) == {}
    error(await http.post("/v1/agents", json=agent, headers=h), 400, 3)


async def test_webhooks_secret_shown_once(cp: ControlPlane, http: httpx.AsyncClient) -> None:
    _, key = await cp.tenant()
    h = {"X-API-Key": key}
    created = ok(
        await http.post(
            "/v1/webhooks", json={"url": "https://example.com/hook", "events": ["call.ended"]}, headers=h
        )
    )
    assert created["signingSecret"].startswith("whsec_")
    hook = created["webhook"]
    assert hook["active"] is True and hook["events"] == ["call.ended"]
    got = ok(await http.get(f"/v1/webhooks/{hook['id']}", headers=h))
    assert "signingSecret" not in got and got["webhook"] == hook
    assert "signingSecret" not in ok(await http.get("/v1/webhooks", headers=h))["webhooks"][0]
    patched = ok(await http.patch(f"/v1/webhooks/{hook['id']}", json={"active": False}, headers=h))["webhook"]
    assert patched["active"] is False and patched["url"] == hook["url"]
    error(await http.post("/v1/webhooks", json={"url": "http://example.com/x"}, headers=h), 400, 3)
    error(
        await http.post("/v1/webhooks", json={"url": "https://e.com", "events": ["nope"]}, headers=h), 400, 3
    )
    assert ok(await http.delete(f"/v1/webhooks/{hook['id']}", headers=h)) == {}


async def _connected_call(cp: ControlPlane, tenant_id: str, agent_id: str) -> str:
    call_id = uuid.uuid4()
    now = datetime.now(UTC)
    async with cp.pool.acquire() as conn:
        await conn.execute(
            """INSERT INTO calls (id, tenant_id, agent_id, direction, status, from_number, to_number,
                                  started_at, answered_at)
               VALUES ($1, $2, $3, 'inbound', 'connected', '+15550001111', '+15550002222', $4, $4)""",
            call_id,
            uuid.UUID(tenant_id),
            uuid.UUID(agent_id),
            now - timedelta(minutes=3),
        )
        for i, (speaker, text) in enumerate([("agent", "Hello!"), ("caller", "I need an appointment")]):
            await conn.execute(
                """INSERT INTO transcripts
                       (call_id, turn_number, speaker, text, confidence, started_at, metadata)
                   VALUES ($1, $2, $3, $4, 0.9, $5, '{"interrupted": true}')""",
                call_id,
                i,
                speaker,
                text,
                now,
            )
        await conn.execute(
            """INSERT INTO tool_calls (call_id, tool_name, input, output, status, latency_ms)
               VALUES ($1, 'book_appointment', '{"day": "monday"}', '{"ok": true}', 'ok', 120)""",
            call_id,
        )
        await conn.execute(
            """INSERT INTO usage_records (tenant_id, call_id, agent_id, direction, minutes)
               VALUES ($1, $2, $3, 'inbound', 3.5)""",
            uuid.UUID(tenant_id),
            call_id,
            uuid.UUID(agent_id),
        )
        # GetUsage reads the worker's hourly roll-up (the worker's own tests produce it from events).
        await conn.execute(
            """INSERT INTO usage_hourly (tenant_id, agent_key, direction, hour, minutes, calls)
               VALUES ($1, $2, 'inbound', date_trunc('hour', NOW(), 'UTC'), 3.5, 1)""",
            uuid.UUID(tenant_id),
            uuid.UUID(agent_id),
        )
    return str(call_id)


async def test_calls(cp: ControlPlane, http: httpx.AsyncClient) -> None:
    tenant_id, key = await cp.tenant()
    h = {"X-API-Key": key}
    agent_id = ok(await http.post("/v1/agents", json={"name": "Caller"}, headers=h))["agent"]["id"]
    e164 = await cp.number()
    ok(await http.post("/v1/numbers", json={"e164": e164, "agentId": agent_id}, headers=h))

    # Outbound: 202 with status INITIATING, idempotent on request_id, registered as active in Redis.
    body = {"agentId": agent_id, "toNumber": "+15557654321", "requestId": "r-1", "context": {"order": "42"}}
    call = ok(await http.post("/v1/calls", json=body, headers=h), 202)["call"]
    assert call["status"] == "CALL_STATUS_INITIATING" and call["direction"] == "CALL_DIRECTION_OUTBOUND"
    assert call["fromNumber"] == e164 and call["context"] == {"order": "42"}
    again = ok(await http.post("/v1/calls", json=body, headers=h), 202)["call"]
    assert again["id"] == call["id"]
    assert await cp.state.redis.sismember(f"tenant:{tenant_id}:active_calls", call["id"])
    error(
        await http.post("/v1/calls", json={**body, "requestId": "", "toNumber": "12345"}, headers=h), 400, 3
    )

    inbound = await _connected_call(cp, tenant_id, agent_id)
    got = ok(await http.get(f"/v1/calls/{inbound}", headers=h))
    assert [t["text"] for t in got["transcript"]] == ["Hello!", "I need an appointment"]
    assert got["transcript"][1]["speaker"] == "SPEAKER_CALLER" and got["transcript"][0]["interrupted"] is True
    assert (
        got["toolCalls"][0]["toolName"] == "book_appointment" and got["toolCalls"][0]["latency"] == "0.120s"
    )

    listed = ok(await http.get("/v1/calls", params={"direction": "CALL_DIRECTION_INBOUND"}, headers=h))[
        "calls"
    ]
    assert [c["id"] for c in listed] == [inbound]
    by_status = ok(await http.get("/v1/calls", params={"status": "CALL_STATUS_INITIATING"}, headers=h))[
        "calls"
    ]
    assert [c["id"] for c in by_status] == [call["id"]]
    since = (datetime.now(UTC) + timedelta(hours=1)).isoformat().replace("+00:00", "Z")
    assert ok(await http.get("/v1/calls", params={"start_time": since}, headers=h))["calls"] == []

    transfer = {"target": "+15550009999", "type": "TRANSFER_TYPE_WARM", "reason": "billing"}
    moved = ok(await http.post(f"/v1/calls/{inbound}/transfer", json=transfer, headers=h))["call"]
    assert moved["status"] == "CALL_STATUS_TRANSFERRING" and moved["transferredTo"] == "+15550009999"
    # Only a connected call can be transferred.
    error(await http.post(f"/v1/calls/{inbound}/transfer", json=transfer, headers=h), 400, 9)
    error(await http.post(f"/v1/calls/{inbound}/transfer", json={"target": "nowhere"}, headers=h), 400, 3)

    ended = ok(await http.post(f"/v1/calls/{call['id']}/hangup", json={"reason": "test"}, headers=h))["call"]
    assert ended["status"] == "CALL_STATUS_COMPLETED" and ended["endReason"] == "test"
    assert not await cp.state.redis.sismember(f"tenant:{tenant_id}:active_calls", call["id"])
    error(await http.get(f"/v1/calls/{uuid.uuid4()}", headers=h), 404, 5)


async def test_outbound_call_checks_credits_and_concurrency(
    cp: ControlPlane, http: httpx.AsyncClient
) -> None:
    tenant_id, key = await cp.tenant()
    h = {"X-API-Key": key}
    agent_id = ok(await http.post("/v1/agents", json={"name": "Dialer"}, headers=h))["agent"]["id"]
    e164 = await cp.number()
    ok(await http.post("/v1/numbers", json={"e164": e164, "agentId": agent_id}, headers=h))
    async with cp.pool.acquire() as conn:
        await conn.execute("UPDATE tenants SET max_concurrent_calls = 2 WHERE id = $1", uuid.UUID(tenant_id))
    body = {"agentId": agent_id, "toNumber": "+15557654321"}
    ok(await http.post("/v1/calls", json=body, headers=h), 202)
    ok(await http.post("/v1/calls", json=body, headers=h), 202)
    limited = error(await http.post("/v1/calls", json=body, headers=h), 429, 8)
    assert limited["details"][0]["@type"] == "type.googleapis.com/google.rpc.QuotaFailure"

    async with cp.pool.acquire() as conn:
        await conn.execute(
            "UPDATE credit_buckets SET minutes_used = minutes_total WHERE tenant_id = $1",
            uuid.UUID(tenant_id),
        )
    await cp.state.redis.delete(f"tenant:{tenant_id}:active_calls")
    broke = error(await http.post("/v1/calls", json=body, headers=h), 400, 9)
    assert broke["details"][0]["reason"] == "INSUFFICIENT_CREDITS"
    async with cp.pool.acquire() as conn:
        count = await conn.fetchval("SELECT count(*) FROM calls WHERE tenant_id = $1", uuid.UUID(tenant_id))
    assert count == 2


async def test_usage(cp: ControlPlane, http: httpx.AsyncClient) -> None:
    tenant_id, key = await cp.tenant()
    h = {"X-API-Key": key}
    agent_id = ok(await http.post("/v1/agents", json={"name": "U"}, headers=h))["agent"]["id"]
    await _connected_call(cp, tenant_id, agent_id)
    usage = ok(await http.get("/v1/usage", headers=h))
    assert usage["inboundMinutes"] == 3.5 and usage["outboundMinutes"] == 0 and usage["totalMinutes"] == 3.5
    assert usage["calls"] == "1"  # int64 as a string (proto3 JSON)
    assert usage["creditMinutesRemaining"] == 60.0
    assert len(usage["buckets"]) == 1
    hourly = ok(await http.get("/v1/usage", params={"granularity": "USAGE_GRANULARITY_HOUR"}, headers=h))
    assert hourly["buckets"][0]["inboundMinutes"] == 3.5
    past = {"start_time": "2020-01-01T00:00:00Z", "end_time": "2020-02-01T00:00:00Z"}
    assert ok(await http.get("/v1/usage", params=past, headers=h))["totalMinutes"] == 0
    error(await http.get("/v1/usage", params={**past, "end_time": "2019-01-01T00:00:00Z"}, headers=h), 400, 3)


async def test_tenants_are_for_platform_admins(cp: ControlPlane, http: httpx.AsyncClient) -> None:
    tenant_id, key = await cp.tenant()
    _, root = await cp.tenant("Platform", platform_admin=True)
    assert (
        ok(await http.get(f"/v1/tenants/{tenant_id}", headers={"X-API-Key": key}))["tenant"]["id"]
        == tenant_id
    )
    own = ok(await http.get("/v1/tenants", headers={"X-API-Key": key}))["tenants"]
    assert [t["id"] for t in own] == [tenant_id]
    error(await http.post("/v1/tenants", json={"name": "X"}, headers={"X-API-Key": key}), 403, 7)
    created = ok(
        await http.post("/v1/tenants", json={"name": "New Co", "plan": "pro"}, headers={"X-API-Key": root})
    )
    new_id = created["tenant"]["id"]
    assert (
        created["tenant"]["status"] == "TENANT_STATUS_ACTIVE"
        and created["tenant"]["maxConcurrentCalls"] == 10
    )
    patched = ok(
        await http.patch(f"/v1/tenants/{new_id}", json={"maxConcurrentCalls": 3}, headers={"X-API-Key": root})
    )
    assert patched["tenant"]["maxConcurrentCalls"] == 3 and patched["tenant"]["plan"] == "pro"
    error(await http.get(f"/v1/tenants/{new_id}", headers={"X-API-Key": key}), 404, 5)


async def test_api_keys_and_tokens(cp: ControlPlane, http: httpx.AsyncClient) -> None:
    _, key = await cp.tenant()
    h = {"X-API-Key": key}
    created = ok(
        await http.post(
            "/v1/api-keys", json={"name": "ci", "permission": "API_KEY_PERMISSION_READ"}, headers=h
        )
    )
    reader = created["key"]
    assert reader.startswith("vk_live_") and created["apiKey"]["prefix"] == reader[:12]
    listed = ok(await http.get("/v1/api-keys", headers=h))["apiKeys"]
    assert len(listed) == 2 and all("key" not in k for k in listed)
    # read permission: may read, may not write, may not manage keys.
    ok(await http.get("/v1/agents", headers={"X-API-Key": reader}))
    error(await http.post("/v1/agents", json={"name": "x"}, headers={"X-API-Key": reader}), 403, 7)
    error(await http.get("/v1/api-keys", headers={"X-API-Key": reader}), 403, 7)

    token = ok(await http.post("/v1/auth/token", json={}, headers={"X-API-Key": reader}))
    assert token["tokenType"] == "Bearer"
    bearer = {"Authorization": f"Bearer {token['accessToken']}"}
    ok(await http.get("/v1/agents", headers=bearer))
    error(await http.post("/v1/agents", json={"name": "x"}, headers=bearer), 403, 7)
    error(await http.get("/v1/agents", headers={"Authorization": "Bearer nope"}), 401, 16)
    up = {"permission": "API_KEY_PERMISSION_ADMIN"}
    error(await http.post("/v1/auth/token", json=up, headers={"X-API-Key": reader}), 403, 7)

    revoked = ok(await http.post(f"/v1/api-keys/{created['apiKey']['id']}:revoke", json={}, headers=h))
    assert revoked["apiKey"]["revokeTime"]
    error(await http.get("/v1/agents", headers={"X-API-Key": reader}), 401, 16)
    assert ok(await http.get(f"/v1/api-keys/{created['apiKey']['id']}", headers=h))["apiKey"]["revokeTime"]


async def test_expired_key_is_refused(cp: ControlPlane, http: httpx.AsyncClient) -> None:
    _, key = await cp.tenant()
    h = {"X-API-Key": key}
    soon = (datetime.now(UTC) + timedelta(days=1)).isoformat().replace("+00:00", "Z")
    created = ok(await http.post("/v1/api-keys", json={"name": "tmp", "expireTime": soon}, headers=h))
    ok(await http.get("/v1/agents", headers={"X-API-Key": created["key"]}))
    async with cp.pool.acquire() as conn:
        await conn.execute(
            "UPDATE api_keys SET expires_at = NOW() - interval '1 second' WHERE id = $1",
            uuid.UUID(created["apiKey"]["id"]),
        )
    # A fresh key value is not in the gateway's cache; the expired one must be refused by the lookup.
    other = ok(await http.post("/v1/api-keys", json={"name": "tmp2", "expireTime": soon}, headers=h))
    async with cp.pool.acquire() as conn:
        await conn.execute(
            "UPDATE api_keys SET expires_at = NOW() - interval '1 second' WHERE id = $1",
            uuid.UUID(other["apiKey"]["id"]),
        )
    error(await http.get("/v1/agents", headers={"X-API-Key": other["key"]}), 401, 16)
    past = "2020-01-01T00:00:00Z"
    error(await http.post("/v1/api-keys", json={"name": "old", "expireTime": past}, headers=h), 400, 3)


async def test_health(http: httpx.AsyncClient) -> None:
    health = ok(await http.get("/health"))
    assert health["status"] == "ok"
    assert {c["name"] for c in health["components"]} == {"postgres", "redis", "nats", "control"}
