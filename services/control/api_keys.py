"""ApiKeyService: a tenant's API keys (admin permission) and access tokens (any authenticated caller)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import asyncpg
import grpc

from services.control.auth import Permission, resolve_secret
from services.control.common import (
    Conn,
    check_strings,
    check_text,
    from_timestamp,
    next_token,
    page,
    parse_id,
    timestamp,
)
from services.control.credentials import issue_token, new_api_key
from services.control.errors import ApiError, invalid, not_found
from services.control.state import ControlState
from services.shared.grpc_server import Context
from voice.v1 import api_keys_pb2, api_keys_pb2_grpc

_PERMISSION = {
    "read": api_keys_pb2.API_KEY_PERMISSION_READ,
    "write": api_keys_pb2.API_KEY_PERMISSION_WRITE,
    "admin": api_keys_pb2.API_KEY_PERMISSION_ADMIN,
}
_PERMISSION_NAME = {v: k for k, v in _PERMISSION.items()}


def to_proto(row: asyncpg.Record) -> api_keys_pb2.ApiKey:
    return api_keys_pb2.ApiKey(
        id=str(row["id"]),
        tenant_id=str(row["tenant_id"]),
        name=row["name"],
        prefix=row["prefix"],
        permission=_PERMISSION[row["permission"]],
        expire_time=timestamp(row["expires_at"]),
        revoke_time=timestamp(row["revoked_at"]),
        last_used_time=timestamp(row["last_used_at"]),
        create_time=timestamp(row["created_at"]),
    )


async def insert_api_key(
    conn: Conn,
    tenant_id: uuid.UUID,
    name: str,
    permission: str,
    expires_at: datetime | None,
    *,
    platform_admin: bool = False,
) -> tuple[asyncpg.Record, str]:
    """Stores a new key's hash; returns the row and the key itself (to be shown once)."""
    key, key_hash, prefix = new_api_key()
    row = await conn.fetchrow(
        """INSERT INTO api_keys (tenant_id, name, prefix, key_hash, permission, platform_admin, expires_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING *""",
        tenant_id,
        name,
        prefix,
        key_hash,
        permission,
        platform_admin,
        expires_at,
    )
    assert row is not None
    return row, key


class ApiKeyServicer(api_keys_pb2_grpc.ApiKeyServiceServicer):
    def __init__(self, state: ControlState) -> None:
        self._s = state
        self._jwt_secret = resolve_secret(state.settings, "jwt_secret")

    async def ListApiKeys(
        self, request: api_keys_pb2.ListApiKeysRequest, context: Context
    ) -> api_keys_pb2.ListApiKeysResponse:
        p = self._s.principal(context, Permission.ADMIN)
        pg = page(request.page_size, request.page_token)
        rows = await self._s.pool.fetch(
            """SELECT * FROM api_keys
               WHERE tenant_id = $1 AND ($2::timestamptz IS NULL OR (created_at, id) < ($2, $3::uuid))
               ORDER BY created_at DESC, id DESC LIMIT $4""",
            uuid.UUID(p.tenant_id),
            pg.after[0] if pg.after else None,
            pg.after[1] if pg.after else None,
            pg.size + 1,
        )
        return api_keys_pb2.ListApiKeysResponse(
            api_keys=[to_proto(r) for r in rows[: pg.size]], next_page_token=next_token(rows, pg.size)
        )

    async def CreateApiKey(
        self, request: api_keys_pb2.CreateApiKeyRequest, context: Context
    ) -> api_keys_pb2.CreateApiKeyResponse:
        p = self._s.principal(context, Permission.ADMIN)
        check_strings(request)
        check_text(request.name, "name", max_len=255, required=True)
        permission = _PERMISSION_NAME.get(request.permission, "read")
        expires_at = None
        if request.HasField("expire_time"):
            try:
                expires_at = from_timestamp(request.expire_time)
            except (ValueError, OverflowError):
                raise invalid("expire_time", "is not a valid time") from None
            if expires_at <= datetime.now(UTC):
                raise invalid("expire_time", "must be in the future")
        if p.not_after:
            # A credential cannot create one that outlives it (a token's, or an expiring key's, bound).
            bound = datetime.fromtimestamp(p.not_after, UTC)
            expires_at = bound if expires_at is None else min(expires_at, bound)
        async with self._s.pool.acquire() as conn:
            row, key = await insert_api_key(
                conn, uuid.UUID(p.tenant_id), request.name, permission, expires_at
            )
        return api_keys_pb2.CreateApiKeyResponse(api_key=to_proto(row), key=key)

    async def GetApiKey(
        self, request: api_keys_pb2.GetApiKeyRequest, context: Context
    ) -> api_keys_pb2.GetApiKeyResponse:
        p = self._s.principal(context, Permission.ADMIN)
        row = await self._s.pool.fetchrow(
            "SELECT * FROM api_keys WHERE id = $1 AND tenant_id = $2",
            parse_id(request.id, "api_key"),
            uuid.UUID(p.tenant_id),
        )
        if row is None:
            raise not_found("api_key")
        return api_keys_pb2.GetApiKeyResponse(api_key=to_proto(row))

    async def RevokeApiKey(
        self, request: api_keys_pb2.RevokeApiKeyRequest, context: Context
    ) -> api_keys_pb2.RevokeApiKeyResponse:
        p = self._s.principal(context, Permission.ADMIN)
        # Idempotent: revoking a revoked key keeps its first revoke time.
        row = await self._s.pool.fetchrow(
            """UPDATE api_keys SET revoked_at = COALESCE(revoked_at, NOW())
               WHERE id = $1 AND tenant_id = $2 RETURNING *""",
            parse_id(request.id, "api_key"),
            uuid.UUID(p.tenant_id),
        )
        if row is None:
            raise not_found("api_key")
        self._s.verifier.forget_key(str(row["id"]))
        return api_keys_pb2.RevokeApiKeyResponse(api_key=to_proto(row))

    async def CreateAccessToken(
        self, request: api_keys_pb2.CreateAccessTokenRequest, context: Context
    ) -> api_keys_pb2.CreateAccessTokenResponse:
        p = self._s.principal(context, Permission.READ)
        if request.permission != api_keys_pb2.API_KEY_PERMISSION_UNSPECIFIED:
            if request.permission not in _PERMISSION_NAME:
                raise invalid("permission", "unknown permission")
            wanted = Permission.parse(_PERMISSION_NAME[request.permission])
            if wanted > p.permission:
                raise ApiError(
                    grpc.StatusCode.PERMISSION_DENIED, "a token cannot exceed the caller's permission"
                )
            p = type(p)(
                p.tenant_id,
                p.principal,
                wanted,
                p.platform_admin and wanted == Permission.ADMIN,
                p.key_id,
                p.not_after,
            )
        if not p.key_id:
            raise ApiError(grpc.StatusCode.PERMISSION_DENIED, "tokens are minted with an API key or a token")
        minutes = self._s.settings.api_gateway.authentication.jwt_expiry_minutes
        # Bound by the key's expiry and by the expiry of the token used to ask (p.not_after).
        token, expires = issue_token(self._jwt_secret, p, minutes)
        response = api_keys_pb2.CreateAccessTokenResponse(access_token=token, token_type="Bearer")
        response.expire_time.FromSeconds(expires)
        return response
