"""Tenant credentials: API keys (stored as SHA-256, looked up by hash) and HS256 access tokens.

The control plane issues both; services/control/authn.py verifies them (gateway, control plane and
agent alike) with the functions here, so the format lives in one place. A token names the key it was
minted from (`kid`) and is only valid while that key is (not revoked, not expired, tenant active); its
expiry never passes the key's.
"""

from __future__ import annotations

import hashlib
import secrets
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

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


# A valid key's use is recorded at most this often: verification itself is a read, never a write.
LAST_USED_RESOLUTION = timedelta(seconds=60)

_VALID_KEY = """k.revoked_at IS NULL AND (k.expires_at IS NULL OR k.expires_at > NOW())
             AND t.id = k.tenant_id AND t.status = 'active' AND t.deleted_at IS NULL"""


def _verified(row: asyncpg.Record) -> VerifiedKey:
    expires_at: datetime | None = row["expires_at"]
    principal = Principal(
        tenant_id=str(row["tenant_id"]),
        principal=f"key:{row['id']}",
        permission=Permission.parse(row["permission"]),
        platform_admin=row["platform_admin"],
        key_id=str(row["id"]),
        not_after=int(expires_at.timestamp()) if expires_at else 0,
    )
    return VerifiedKey(principal, str(row["id"]), expires_at)


async def authenticate_api_key(pool: asyncpg.Pool, key: str) -> VerifiedKey | None:
    """The key's principal when it exists, is not revoked or expired, and its tenant is active. None
    otherwise (the caller answers 401 without saying which check failed). An unknown key costs one
    indexed read; a valid one also records its use, at most once a minute."""
    if not key.startswith(KEY_PREFIX) or len(key) > 128:
        return None
    row = await pool.fetchrow(
        f"""SELECT k.id, k.tenant_id, k.permission, k.platform_admin, k.expires_at, k.last_used_at
           FROM api_keys k, tenants t WHERE k.key_hash = $1 AND {_VALID_KEY}""",
        hash_key(key),
    )
    if row is None:
        return None
    await pool.execute(
        """UPDATE api_keys SET last_used_at = NOW()
           WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < NOW() - $2::interval)""",
        row["id"],
        LAST_USED_RESOLUTION,
    )
    return _verified(row)


async def key_by_id(pool: asyncpg.Pool, key_id: str) -> VerifiedKey | None:
    """The key `key_id` while it is valid (see authenticate_api_key); None once revoked, expired, or
    its tenant suspended or deleted."""
    try:
        kid = uuid.UUID(key_id)
    except ValueError:
        return None
    row = await pool.fetchrow(
        f"""SELECT k.id, k.tenant_id, k.permission, k.platform_admin, k.expires_at
           FROM api_keys k, tenants t WHERE k.id = $1 AND {_VALID_KEY}""",
        kid,
    )
    return _verified(row) if row is not None else None


def issue_token(
    secret: bytes, p: Principal, expiry_minutes: int, now: float | None = None
) -> tuple[str, int]:
    """An HS256 JWT for `p`, bound to its key; returns (token, expiry as unix seconds). The expiry is
    the earlier of `expiry_minutes` from now and `p.not_after` (the key's expiry, or the expiry of the
    token `p` authenticated with), so a token never outlives what it was minted from."""
    if not p.key_id:
        raise ValueError("tokens are minted from an API key (or a token of one)")
    issued = int(time.time() if now is None else now)
    expires = issued + expiry_minutes * 60
    if p.not_after:
        expires = min(expires, p.not_after)
    claims = {
        "iss": JWT_ISSUER,
        "sub": f"key:{p.key_id}",
        "kid": p.key_id,
        "tid": p.tenant_id,
        "perm": p.permission.label,
        "padm": p.platform_admin,
        "iat": issued,
        "exp": expires,
        "jti": uuid.uuid4().hex,
    }
    return jwt.encode(claims, secret, algorithm=JWT_ALGORITHM), expires


def verify_token(secret: bytes, token: str) -> Principal | None:
    """The principal of a well-signed, unexpired token we issued; None otherwise. The caller must still
    check that its key (`key_id`) is valid (services/control/authn.py does)."""
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[JWT_ALGORITHM],
            issuer=JWT_ISSUER,
            options={"require": ["exp", "iat", "sub", "tid", "perm", "kid"]},
        )
        tenant_id = str(uuid.UUID(str(claims["tid"])))
        key_id = str(uuid.UUID(str(claims["kid"])))
        return Principal(
            tenant_id=tenant_id,
            principal=f"jwt:key:{key_id}",
            permission=Permission.parse(str(claims["perm"])),
            platform_admin=bool(claims.get("padm", False)),
            key_id=key_id,
            not_after=int(claims["exp"]),
        )
    except (jwt.InvalidTokenError, ValueError, KeyError, TypeError):
        return None
