"""Tenant credentials: API keys (stored as SHA-256, looked up by hash) and HS256 access tokens.

The control plane issues both; the gateway verifies them on every request (spec 10.2) with the
functions here, so the format lives in one place.
"""

from __future__ import annotations

import hashlib
import secrets
import time
import uuid
from dataclasses import dataclass
from datetime import datetime

import asyncpg
import jwt

from services.control.auth import Permission, Principal

KEY_PREFIX = "vk_live_"
PREFIX_CHARS = 12
JWT_ISSUER = "voice-aiconnected"
JWT_ALGORITHM = "HS256"


def new_api_key() -> tuple[str, bytes, str]:
    """(key, sha256 of the key, recognisable prefix). Only the hash and the prefix are stored."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    return key, hash_key(key), key[:PREFIX_CHARS]


def hash_key(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


@dataclass(frozen=True)
class VerifiedKey:
    principal: Principal
    key_id: str
    expires_at: datetime | None


async def authenticate_api_key(pool: asyncpg.Pool, key: str) -> VerifiedKey | None:
    """The key's principal when it exists, is not revoked or expired, and its tenant is active; also
    records the use. None otherwise (the caller answers 401 without saying which check failed)."""
    if not key.startswith(KEY_PREFIX) or len(key) > 128:
        return None
    row = await pool.fetchrow(
        """UPDATE api_keys k SET last_used_at = NOW()
           FROM tenants t
           WHERE k.key_hash = $1 AND k.revoked_at IS NULL AND (k.expires_at IS NULL OR k.expires_at > NOW())
             AND t.id = k.tenant_id AND t.status = 'active' AND t.deleted_at IS NULL
           RETURNING k.id, k.tenant_id, k.permission, k.platform_admin, k.expires_at""",
        hash_key(key),
    )
    if row is None:
        return None
    principal = Principal(
        tenant_id=str(row["tenant_id"]),
        principal=f"key:{row['id']}",
        permission=Permission.parse(row["permission"]),
        platform_admin=row["platform_admin"],
    )
    return VerifiedKey(principal, str(row["id"]), row["expires_at"])


def issue_token(
    secret: bytes, p: Principal, expiry_minutes: int, now: float | None = None
) -> tuple[str, int]:
    """An HS256 JWT for `p`; returns (token, expiry as unix seconds)."""
    issued = int(time.time() if now is None else now)
    expires = issued + expiry_minutes * 60
    claims = {
        "iss": JWT_ISSUER,
        "sub": p.principal,
        "tid": p.tenant_id,
        "perm": p.permission.label,
        "padm": p.platform_admin,
        "iat": issued,
        "exp": expires,
        "jti": uuid.uuid4().hex,
    }
    return jwt.encode(claims, secret, algorithm=JWT_ALGORITHM), expires


def verify_token(secret: bytes, token: str) -> Principal | None:
    """The principal of a valid, unexpired token we issued; None otherwise."""
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[JWT_ALGORITHM],
            issuer=JWT_ISSUER,
            options={"require": ["exp", "iat", "sub", "tid", "perm"]},
        )
        tenant_id = str(uuid.UUID(str(claims["tid"])))
        return Principal(
            tenant_id=tenant_id,
            principal=f"jwt:{claims['sub']}",
            permission=Permission.parse(str(claims["perm"])),
            platform_admin=bool(claims.get("padm", False)),
        )
    except (jwt.InvalidTokenError, ValueError, KeyError):
        return None
