"""TenantService: platform operators manage tenants; a tenant's own keys may only read their tenant."""

from __future__ import annotations

import re
import secrets
import uuid
from typing import Any

import asyncpg
import grpc

from services.control.api_keys import insert_api_key
from services.control.auth import Permission, Principal, resolve_secret
from services.control.common import (
    Conn,
    apply_mask,
    check_strings,
    check_text,
    next_token,
    page,
    parse_id,
    timestamp,
)
from services.control.errors import ApiError, invalid, not_found
from services.control.state import ControlState
from services.shared.grpc_server import Context
from services.shared.tool_signing import tenant_secret
from voice.v1 import tenants_pb2, tenants_pb2_grpc

_STATUS = {
    "active": tenants_pb2.TENANT_STATUS_ACTIVE,
    "suspended": tenants_pb2.TENANT_STATUS_SUSPENDED,
}
_STATUS_NAME = {v: k for k, v in _STATUS.items()}
PLANS = ("starter", "pro", "enterprise")
OUTPUT_ONLY = frozenset({"id", "create_time"})
# What a tenant admin may not change on its own tenant (status, plan, limits; credits have no update API).
OPERATOR_ONLY = ("status", "plan", "max_concurrent_calls")
DEFAULT_MAX_CONCURRENT_CALLS = 10


def to_proto(row: asyncpg.Record) -> tenants_pb2.Tenant:
    return tenants_pb2.Tenant(
        id=str(row["id"]),
        name=row["name"],
        status=_STATUS.get(row["status"], tenants_pb2.TENANT_STATUS_UNSPECIFIED),
        max_concurrent_calls=row["max_concurrent_calls"],
        plan=row["plan"],
        create_time=timestamp(row["created_at"]),
    )


def slugify(name: str) -> str:
    base = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:80] or "tenant"
    return f"{base}-{secrets.token_hex(3)}"


def _validate(t: tenants_pb2.Tenant) -> None:
    check_strings(t)
    check_text(t.name, "tenant.name", max_len=255, required=True)
    if t.plan and t.plan not in PLANS:
        raise invalid("tenant.plan", f"must be one of {', '.join(PLANS)}")
    if t.max_concurrent_calls > 10_000:
        raise invalid("tenant.max_concurrent_calls", "must be at most 10000")


async def create_tenant(conn: Conn, tenant: tenants_pb2.Tenant, trial_minutes: float) -> asyncpg.Record:
    """Inserts a tenant (and its trial credit) inside the caller's transaction; used by the bootstrap."""
    row = await conn.fetchrow(
        """INSERT INTO tenants (name, slug, status, plan, max_concurrent_calls)
           VALUES ($1, $2, $3, $4, $5) RETURNING *""",
        tenant.name,
        slugify(tenant.name),
        _STATUS_NAME.get(tenant.status, "active"),
        tenant.plan or "starter",
        tenant.max_concurrent_calls or DEFAULT_MAX_CONCURRENT_CALLS,
    )
    assert row is not None
    if trial_minutes > 0:
        await conn.execute(
            "INSERT INTO credit_buckets (tenant_id, minutes_total, source) VALUES ($1, $2, 'trial')",
            row["id"],
            trial_minutes,
        )
    return row


class TenantServicer(tenants_pb2_grpc.TenantServiceServicer):
    def __init__(self, state: ControlState) -> None:
        self._s = state

    def _admin(self, context: Context) -> Principal:
        p = self._s.principal(context, Permission.ADMIN)
        if not p.platform_admin:
            raise ApiError(grpc.StatusCode.PERMISSION_DENIED, "only platform operators manage tenants")
        return p

    async def ListTenants(
        self, request: tenants_pb2.ListTenantsRequest, context: Context
    ) -> tenants_pb2.ListTenantsResponse:
        p = self._s.principal(context, Permission.READ)
        pg = page(request.page_size, request.page_token)
        # A tenant's own key sees its own tenant only; operators see all.
        scope: Any = None if p.platform_admin else uuid.UUID(p.tenant_id)
        rows = await self._s.pool.fetch(
            """SELECT * FROM tenants
               WHERE deleted_at IS NULL AND ($1::uuid IS NULL OR id = $1)
                 AND ($2::timestamptz IS NULL OR (created_at, id) < ($2, $3::uuid))
               ORDER BY created_at DESC, id DESC LIMIT $4""",
            scope,
            pg.after[0] if pg.after else None,
            pg.after[1] if pg.after else None,
            pg.size + 1,
        )
        return tenants_pb2.ListTenantsResponse(
            tenants=[to_proto(r) for r in rows[: pg.size]], next_page_token=next_token(rows, pg.size)
        )

    async def CreateTenant(
        self, request: tenants_pb2.CreateTenantRequest, context: Context
    ) -> tenants_pb2.CreateTenantResponse:
        self._admin(context)
        _validate(request.tenant)
        async with self._s.pool.acquire() as conn, conn.transaction():
            row = await create_tenant(conn, request.tenant, self._s.settings.control.trial_credit_minutes)
            # The tenant's first key: admin of this tenant only (never a platform admin).
            _, key = await insert_api_key(conn, row["id"], "first admin key", "admin", None)
        return tenants_pb2.CreateTenantResponse(tenant=to_proto(row), admin_api_key=key)

    async def GetTenant(
        self, request: tenants_pb2.GetTenantRequest, context: Context
    ) -> tenants_pb2.GetTenantResponse:
        p = self._s.principal(context, Permission.READ)
        tenant_id = parse_id(request.id, "tenant")
        if not p.platform_admin and str(tenant_id) != p.tenant_id:
            raise not_found("tenant")
        row = await self._s.pool.fetchrow(
            "SELECT * FROM tenants WHERE id = $1 AND deleted_at IS NULL", tenant_id
        )
        if row is None:
            raise not_found("tenant")
        return tenants_pb2.GetTenantResponse(tenant=to_proto(row))

    async def UpdateTenant(
        self, request: tenants_pb2.UpdateTenantRequest, context: Context
    ) -> tenants_pb2.UpdateTenantResponse:
        # Platform operators update any tenant; a tenant admin only its own tenant's settings.
        p = self._s.principal(context, Permission.ADMIN)
        tenant_id = parse_id(request.tenant.id, "tenant")
        if not p.platform_admin and str(tenant_id) != p.tenant_id:
            raise not_found("tenant")
        async with self._s.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "SELECT * FROM tenants WHERE id = $1 AND deleted_at IS NULL FOR UPDATE", tenant_id
            )
            if row is None:
                raise not_found("tenant")
            current = to_proto(row)
            merged = apply_mask(current, request.tenant, request.update_mask, OUTPUT_ONLY)
            _validate(merged)
            if not p.platform_admin:
                changed = [f for f in OPERATOR_ONLY if getattr(merged, f) != getattr(current, f)]
                if changed:
                    raise ApiError(
                        grpc.StatusCode.PERMISSION_DENIED,
                        f"only platform operators change a tenant's {', '.join(changed)}",
                    )
            row = await conn.fetchrow(
                """UPDATE tenants SET name = $2, status = $3, plan = $4, max_concurrent_calls = $5,
                          updated_at = NOW()
                   WHERE id = $1 RETURNING *""",
                tenant_id,
                merged.name,
                _STATUS_NAME.get(merged.status, "active"),
                merged.plan or "starter",
                merged.max_concurrent_calls,
            )
        assert row is not None
        return tenants_pb2.UpdateTenantResponse(tenant=to_proto(row))

    async def _signing_target(self, context: Context, tenant_id: str) -> uuid.UUID:
        """The tenant whose tool-signing secret an admin may see: its own (or any, for operators)."""
        p = self._s.principal(context, Permission.ADMIN)
        target = parse_id(tenant_id, "tenant")
        if not p.platform_admin and str(target) != p.tenant_id:
            raise not_found("tenant")
        return target

    def _signing_secret(self, tenant_id: uuid.UUID, row: asyncpg.Record) -> tenants_pb2.ToolSigningSecret:
        master = resolve_secret(self._s.settings, "tool_webhook_secret")
        version = int(row["tool_signing_version"])
        secret = tenants_pb2.ToolSigningSecret(
            secret_hex=tenant_secret(master, str(tenant_id), version).hex(), version=version
        )
        rotated = timestamp(row["tool_signing_rotated_at"])
        if rotated is not None:
            secret.rotate_time.CopyFrom(rotated)
        return secret

    async def GetToolSigningSecret(
        self, request: tenants_pb2.GetToolSigningSecretRequest, context: Context
    ) -> tenants_pb2.GetToolSigningSecretResponse:
        tenant_id = await self._signing_target(context, request.tenant_id)
        row = await self._s.pool.fetchrow(
            """SELECT tool_signing_version, tool_signing_rotated_at FROM tenants
               WHERE id = $1 AND deleted_at IS NULL""",
            tenant_id,
        )
        if row is None:
            raise not_found("tenant")
        return tenants_pb2.GetToolSigningSecretResponse(secret=self._signing_secret(tenant_id, row))

    async def RotateToolSigningSecret(
        self, request: tenants_pb2.RotateToolSigningSecretRequest, context: Context
    ) -> tenants_pb2.RotateToolSigningSecretResponse:
        tenant_id = await self._signing_target(context, request.tenant_id)
        row = await self._s.pool.fetchrow(
            """UPDATE tenants
               SET tool_signing_version = tool_signing_version + 1, tool_signing_rotated_at = NOW()
               WHERE id = $1 AND deleted_at IS NULL
               RETURNING tool_signing_version, tool_signing_rotated_at""",
            tenant_id,
        )
        if row is None:
            raise not_found("tenant")
        return tenants_pb2.RotateToolSigningSecretResponse(secret=self._signing_secret(tenant_id, row))
