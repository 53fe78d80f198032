"""Gateway authentication (spec 10.2): `X-API-Key` (SHA-256 lookup: exists, active, not expired, tenant
active) or `Authorization: Bearer <JWT>` (HS256, issued by POST /v1/auth/token)."""

from __future__ import annotations

import time
from collections import OrderedDict
from datetime import UTC, datetime

import asyncpg

from services.control.auth import Principal
from services.control.credentials import VerifiedKey, authenticate_api_key, hash_key, verify_token

CACHE_ENTRIES = 10_000


class AuthError(Exception):
    pass


class Authenticator:
    """Verifies credentials. Verified API keys are reused for `cache_seconds` (a bounded LRU) so that a
    busy tenant does not cost a database round trip per request."""

    def __init__(self, pool: asyncpg.Pool, jwt_secret: bytes, cache_seconds: float) -> None:
        self._pool = pool
        self._jwt_secret = jwt_secret
        self._ttl = cache_seconds
        self._cache: OrderedDict[bytes, tuple[VerifiedKey, float]] = OrderedDict()

    async def authenticate(self, api_key: str | None, authorization: str | None) -> Principal:
        if api_key:
            return await self._api_key(api_key)
        if authorization:
            scheme, _, token = authorization.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise AuthError("unsupported Authorization scheme; use Bearer <token> or X-API-Key")
            principal = verify_token(self._jwt_secret, token.strip())
            if principal is None:
                raise AuthError("invalid or expired token")
            return principal
        raise AuthError("missing credentials: send X-API-Key or Authorization: Bearer <token>")

    async def _api_key(self, key: str) -> Principal:
        digest = hash_key(key)
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and cached[1] > now:
            verified = cached[0]
            if verified.expires_at is None or verified.expires_at > datetime.now(UTC):
                self._cache.move_to_end(digest)
                return verified.principal
        self._cache.pop(digest, None)
        found = await authenticate_api_key(self._pool, key)
        if found is None:
            raise AuthError("invalid, revoked or expired API key")
        if self._ttl > 0:
            self._cache[digest] = (found, now + self._ttl)
            if len(self._cache) > CACHE_ENTRIES:
                self._cache.popitem(last=False)
        return found.principal

    def forget_key(self, key_id: str) -> None:
        """Drops a revoked key at once (this process; others within the cache TTL)."""
        for digest, (verified, _) in list(self._cache.items()):
            if verified.key_id == key_id:
                del self._cache[digest]
