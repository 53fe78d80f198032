"""Credentials die with their key, tenant admins stay inside their tenant, failed authentication is
rate limited without database writes, and internal assertions are only accepted from services."""

from __future__ import annotations

import asyncio
import secrets
import uuid
from datetime import UTC, datetime, timedelta

import grpc
import httpx
import pytest

from services.control.auth import Permission, Principal
from services.control.authn import AuthError, FailedAuthLimiter, TooManyFailuresError, grpc_caller
from services.shared.grpc_channels import open_channel
from services.shared.settings import RateLimitSettings
from tests.control.env import ControlPlane, running_gateway
from tests.gateway.helpers import error, ok
from tests.security.conftest import AUTH_CACHE_SECONDS
from voice.v1 import agents_pb2, agents_pb2_grpc

PAST_CACHE = AUTH_CACHE_SECONDS * 2


def key_headers(key: str) -> dict[str, str]:
    return {"X-API-Key": key}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def token_for(http: httpx.AsyncClient, headers: dict[str, str]) -> dict[str, str]:
    body = ok(await http.post("/v1/auth/token", json={}, headers=headers))
    return {"token": body["accessToken"], "expire": body["expireTime"]}


def when(rfc3339: str) -> datetime:
    return datetime.fromisoformat(rfc3339.replace("Z", "+00:00"))


async def test_token_dies_with_its_revoked_key(cp: ControlPlane, http: httpx.AsyncClient) -> None:
    _, admin = await cp.tenant()
    created = ok(
        await http.post(
            "/v1/api-keys",
            json={"name": "k", "permission": "API_KEY_PERMISSION_ADMIN"},
            headers=key_headers(admin),
        )
    )
    token = (await token_for(http, key_headers(created["key"])))["token"]
    ok(await http.get("/v1/agents", headers=bearer(token)))
    ok(await http.post(f"/v1/api-keys/{created['apiKey']['id']}:revoke", json={}, headers=key_headers(admin)))
    await asyncio.sleep(PAST_CACHE)
    error(await http.get("/v1/agents", headers=bearer(token)), 401, 16)
    # Nor can it mint tokens or keys any more.
    error(await http.post("/v1/auth/token", json={}, headers=bearer(token)), 401, 16)
    error(await http.post("/v1/api-keys", json={"name": "x"}, headers=bearer(token)), 401, 16)


async def test_token_never_outlives_its_key_or_its_minter(cp: ControlPlane, http: httpx.AsyncClient) -> None:
    _, admin = await cp.tenant()
    key_expiry = datetime.now(UTC) + timedelta(seconds=2)
    created = ok(
        await http.post(
            "/v1/api-keys",
            json={
                "name": "short",
                "permission": "API_KEY_PERMISSION_ADMIN",
                "expireTime": key_expiry.isoformat().replace("+00:00", "Z"),
            },
            headers=key_headers(admin),
        )
    )
    first = await token_for(http, key_headers(created["key"]))
    assert when(first["expire"]) <= key_expiry
    second = await token_for(http, bearer(first["token"]))
    assert when(second["expire"]) <= when(first["expire"])
    # A key created with the token cannot outlive it either.
    child = ok(await http.post("/v1/api-keys", json={"name": "child"}, headers=bearer(first["token"])))
    assert when(child["apiKey"]["expireTime"]) <= when(first["expire"])
    await asyncio.sleep(max(0.0, (key_expiry - datetime.now(UTC)).total_seconds()) + 0.1)
    error(await http.get("/v1/agents", headers=bearer(second["token"])), 401, 16)
    error(await http.get("/v1/agents", headers=key_headers(created["key"])), 401, 16)


async def test_suspended_tenant_credentials_stop_working(cp: ControlPlane, http: httpx.AsyncClient) -> None:
    _, operator = await cp.tenant("Operator", platform_admin=True)
    tenant_id, key = await cp.tenant("Customer")
    token = (await token_for(http, key_headers(key)))["token"]
    ok(
        await http.patch(
            f"/v1/tenants/{tenant_id}",
            json={"status": "TENANT_STATUS_SUSPENDED"},
            headers=key_headers(operator),
        )
    )
    await asyncio.sleep(PAST_CACHE)
    error(await http.get("/v1/agents", headers=key_headers(key)), 401, 16)
    # The suspended tenant's token cannot un-suspend it.
    error(
        await http.patch(
            f"/v1/tenants/{tenant_id}", json={"status": "TENANT_STATUS_ACTIVE"}, headers=bearer(token)
        ),
        401,
        16,
    )


async def test_tenant_admin_stays_in_its_tenant(cp: ControlPlane, http: httpx.AsyncClient) -> None:
    _, operator = await cp.tenant("Operator", platform_admin=True)
    created = ok(await http.post("/v1/tenants", json={"name": "Acme"}, headers=key_headers(operator)))
    acme_id, acme_key = created["tenant"]["id"], created["adminApiKey"]
    other_id, _ = await cp.tenant("Other")
    acme = key_headers(acme_key)
    # Its own settings: readable, and the name is changeable.
    ok(await http.get(f"/v1/tenants/{acme_id}", headers=acme))
    ok(await http.patch(f"/v1/tenants/{acme_id}", json={"name": "Acme Inc"}, headers=acme))
    # Never its status, plan or limits.
    for field, value in (
        ("status", "TENANT_STATUS_SUSPENDED"),
        ("plan", "enterprise"),
        ("maxConcurrentCalls", 500),
    ):
        error(await http.patch(f"/v1/tenants/{acme_id}", json={field: value}, headers=acme), 403, 7)
    # Other tenants do not exist for it; it creates none.
    error(await http.get(f"/v1/tenants/{other_id}", headers=acme), 404, 5)
    error(await http.patch(f"/v1/tenants/{other_id}", json={"name": "x"}, headers=acme), 404, 5)
    error(await http.post("/v1/tenants", json={"name": "Mine"}, headers=acme), 403, 7)
    listed = ok(await http.get("/v1/tenants", headers=acme))
    assert [t["id"] for t in listed["tenants"]] == [acme_id]


async def test_failed_authentication_is_rate_limited_without_writes(cp: ControlPlane) -> None:
    limits = RateLimitSettings(default_limit=1000, burst_limit=100, failed_auth_limit=5)
    rid = uuid.uuid4().hex
    async with running_gateway(cp, rate_limiting=limits) as gw, httpx.AsyncClient(base_url=gw.url) as http:
        codes = []
        for _ in range(40):
            bad = {"X-API-Key": "vk_live_" + secrets.token_urlsafe(32), "X-Request-ID": rid}
            codes.append((await http.post("/v1/agents", json={"name": "x"}, headers=bad)).status_code)
            if codes[-1] == 429:
                break
        assert set(codes) <= {401, 429} and codes[-1] == 429, codes
        limited = await http.get("/v1/agents")
        assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1
    async with cp.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM audit_log WHERE request_id = $1", rid) == 0


async def test_internal_assertion_is_refused_from_a_client_certificate(cp: ControlPlane) -> None:
    """A captured (or forged-with-the-secret) asserted context is worthless without a service's key."""
    tenant_id, key = await cp.tenant()
    asserted = cp.auth.metadata(Principal(tenant_id, "replayed", Permission.ADMIN, platform_admin=True))
    async with open_channel(cp.settings, cp.server.address, identity="client") as channel:
        stub = agents_pb2_grpc.AgentServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ListAgents(agents_pb2.ListAgentsRequest(), metadata=asserted)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # The tenant's own API key works on gRPC as on REST.
        reply = await stub.ListAgents(agents_pb2.ListAgentsRequest(), metadata=[("x-api-key", key)])
        assert list(reply.agents) == []
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ListAgents(agents_pb2.ListAgentsRequest())
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_grpc_failed_authentication_is_limited_per_address(cp: ControlPlane) -> None:
    """The same per-address limit guards gRPC credentials (one counter with the gateway's)."""
    limiter = FailedAuthLimiter(cp.state.redis, limit=3)
    address = f"203.0.113.{secrets.randbelow(250)}-{uuid.uuid4().hex[:6]}"
    bad = [("x-api-key", "vk_live_" + secrets.token_urlsafe(32))]
    outcomes = []
    for _ in range(5):
        try:
            await grpc_caller(
                bad,
                peer="client",
                verifier=cp.state.verifier,
                internal=cp.auth,
                limiter=limiter,
                address=address,
            )
        except TooManyFailuresError:
            outcomes.append("limited")
        except AuthError:
            outcomes.append("refused")
    assert outcomes == ["refused"] * 3 + ["limited"] * 2
