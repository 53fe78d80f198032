"""Request id, CORS, rate limits, audit log, Grpc-Timeout, /metrics, /openapi.json and /docs."""

from __future__ import annotations

import asyncio
import uuid

import httpx

from services.shared.settings import RateLimitSettings
from tests.control.env import ControlPlane, running_gateway
from tests.gateway.helpers import error, ok

ORIGIN = "https://app.aiconnected.io"


async def test_request_id_is_echoed_or_generated(cp: ControlPlane, http: httpx.AsyncClient) -> None:
    _, key = await cp.tenant()
    response = await http.get("/v1/agents", headers={"X-API-Key": key, "X-Request-ID": "req-123"})
    assert response.headers["x-request-id"] == "req-123"
    generated = (await http.get("/v1/agents", headers={"X-API-Key": key})).headers["x-request-id"]
    assert len(generated) == 32
    # Hostile ids are replaced, not echoed.
    hostile = "<script>alert(1)</script>"
    assert (await http.get("/health", headers={"X-Request-ID": hostile})).headers["x-request-id"] != hostile


async def test_cors(http: httpx.AsyncClient) -> None:
    preflight = await http.options(
        "/v1/agents",
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "X-API-Key, Content-Type",
        },
    )
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == ORIGIN
    assert "POST" in preflight.headers["access-control-allow-methods"]
    evil = await http.options(
        "/v1/agents", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"}
    )
    assert evil.status_code == 403 and "access-control-allow-origin" not in evil.headers
    simple = await http.get("/v1/agents", headers={"Origin": ORIGIN})
    assert simple.status_code == 401  # CORS headers even on errors, so browsers can read them
    assert simple.headers["access-control-allow-origin"] == ORIGIN
    assert "X-Request-ID" in simple.headers["access-control-expose-headers"]
    assert (
        "access-control-allow-origin"
        not in (await http.get("/health", headers={"Origin": "https://x.io"})).headers
    )


async def test_rate_limit_window(cp: ControlPlane) -> None:
    _, key = await cp.tenant()
    async with (
        running_gateway(
            cp, rate_limiting=RateLimitSettings(default_limit=5, burst_limit=20, failed_auth_limit=1_000_000)
        ) as gw,
        httpx.AsyncClient(base_url=gw.url) as http,
    ):
        allowed: list[httpx.Response] = []
        limited = None
        for _ in range(12):
            r = await http.get("/v1/agents", headers={"X-API-Key": key})
            if r.status_code == 429:
                limited = r
                break
            allowed.append(ok(r) and r)
        # 5 per window; a minute boundary inside the loop may open one fresh window (at most 10).
        assert limited is not None and 5 <= len(allowed) <= 10
        assert allowed[0].headers["x-ratelimit-limit"] == "5"
        assert [r.headers["x-ratelimit-remaining"] for r in allowed[:4]][-1] in {"0", "1", "2", "3", "4"}
        body = error(limited, 429, 8)
        assert "per minute" in body["message"]
        assert 1 <= int(limited.headers["retry-after"]) <= 60
        assert limited.headers["x-ratelimit-remaining"] == "0"
        # Another tenant has its own budget.
        _, other = await cp.tenant()
        ok(await http.get("/v1/agents", headers={"X-API-Key": other}))


async def test_rate_limit_burst(cp: ControlPlane) -> None:
    tenant_id, key = await cp.tenant()
    async with (
        running_gateway(
            cp,
            rate_limiting=RateLimitSettings(default_limit=1000, burst_limit=2, failed_auth_limit=1_000_000),
        ) as gw,
        httpx.AsyncClient(base_url=gw.url, timeout=30) as http,
    ):
        # Hold two requests in flight: the gateway counts them in Redis until they finish.
        concurrent = f"ratelimit:{tenant_id}:concurrent"
        await cp.state.redis.set(concurrent, 2, ex=60)
        r = await http.get("/v1/agents", headers={"X-API-Key": key})
        body = error(r, 429, 8)
        assert "concurrent" in body["message"] and r.headers["retry-after"] == "1"
        await cp.state.redis.set(concurrent, 0, ex=60)
        results = await asyncio.gather(
            *(http.get("/v1/agents", headers={"X-API-Key": key}) for _ in range(2))
        )
        assert [r.status_code for r in results] == [200, 200]
        assert await cp.state.redis.get(concurrent) == b"0"  # released after each request


async def test_audit_log_row_per_mutating_call(cp: ControlPlane, http: httpx.AsyncClient) -> None:
    tenant_id, key = await cp.tenant()
    rid = uuid.uuid4().hex
    agent = ok(
        await http.post("/v1/agents", json={"name": "A"}, headers={"X-API-Key": key, "X-Request-ID": rid})
    )
    await http.get(f"/v1/agents/{agent['agent']['id']}", headers={"X-API-Key": key, "X-Request-ID": rid})
    await http.delete(f"/v1/agents/{uuid.uuid4()}", headers={"X-API-Key": key, "X-Request-ID": rid})
    await http.post(
        "/v1/agents", json={"name": "A"}, headers={"X-API-Key": "vk_live_bad", "X-Request-ID": rid}
    )
    async with cp.pool.acquire() as conn:
        rows = await conn.fetch("SELECT * FROM audit_log WHERE request_id = $1 ORDER BY id", rid)
    assert [(r["method"], r["http_status"], r["grpc_code"]) for r in rows] == [
        ("POST", 200, "OK"),
        ("DELETE", 404, "NOT_FOUND"),
    ]  # the unauthenticated attempt is logged, not written: floods of bad keys cost no writes
    assert str(rows[0]["tenant_id"]) == tenant_id and rows[0]["rpc"] == "voice.v1.AgentService.CreateAgent"
    assert rows[0]["principal"].startswith("key:")


async def test_grpc_timeout_header(cp: ControlPlane, http: httpx.AsyncClient) -> None:
    _, key = await cp.tenant()
    ok(await http.get("/v1/agents", headers={"X-API-Key": key, "Grpc-Timeout": "10S"}))
    error(await http.get("/v1/agents", headers={"X-API-Key": key, "Grpc-Timeout": "1n"}), 504, 4)
    error(await http.get("/v1/agents", headers={"X-API-Key": key, "Grpc-Timeout": "soon"}), 400, 3)


async def test_metrics_openapi_docs(cp: ControlPlane, http: httpx.AsyncClient) -> None:
    _, key = await cp.tenant()
    await http.get("/v1/agents", headers={"X-API-Key": key})
    metrics = (await http.get("/metrics")).text
    assert 'http_requests_total{code="200",method="GET",route="GET /v1/agents"}' in metrics
    assert "http_request_duration_seconds_bucket" in metrics
    doc = ok(await http.get("/openapi.json"))
    assert doc["openapi"].startswith("3.")
    for path in [
        "/v1/agents",
        "/v1/agents/{id}",
        "/v1/calls/{id}/transfer",
        "/v1/api-keys/{id}:revoke",
        "/health",
    ]:
        assert path in doc["paths"], path
    assert set(doc["paths"]["/v1/agents/{agent_id}"]) == {"put", "patch"}
    agent = doc["components"]["schemas"]["voice.v1.Agent"]
    assert agent["required"] == ["name"] and agent["additionalProperties"] is False
    assert agent["properties"]["createTime"]["readOnly"] is True
    docs = await http.get("/docs")
    assert docs.status_code == 200 and "/openapi.json" in docs.text
