"""Verifying a tenant credential: an API key (`X-API-Key` / `x-api-key` metadata) or an access token
(`Authorization: Bearer`), the same way on REST (the gateway) and gRPC (control plane, agent).

A token is only as good as its key: each verification checks that the key it was minted from is not
revoked or expired and that its tenant is active. Both lookups are cached for `cache_seconds` (a few
seconds), so a revocation or suspension reaches every instance within that time without a database
round trip per request; a revocation made through this process is dropped from its cache at once.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import asyncpg
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from services.control.auth import ASSERTING_SERVICES, InternalAuth, Principal
from services.control.credentials import VerifiedKey, authenticate_api_key, hash_key, key_by_id, verify_token

CACHE_ENTRIES = 10_000
log = logging.getLogger(__name__)


class AuthError(Exception):
    """The credential is missing or not valid; the message says what to send (never which check)."""


class TooManyFailuresError(AuthError):
    """This client address failed to authenticate too often this minute (answer 429 /
    RESOURCE_EXHAUSTED before looking the credential up)."""

    def __init__(self, retry_after: int) -> None:
        super().__init__("too many requests with missing or invalid credentials from this address")
        self.retry_after = retry_after


FAILURE_WINDOW_SECONDS = 60


class FailedAuthLimiter:
    """Counts failed authentications per client address in Redis (`authfail:{address}:{minute}`), shared
    by every gateway and control-plane instance. Fails open when Redis is unreachable."""

    def __init__(self, redis: aioredis.Redis, limit: int) -> None:
        self._redis = redis
        self._limit = limit

    async def check(self, address: str) -> None:
        """Raises TooManyFailuresError while `address` is over the limit this minute."""
        now = time.time()
        window = int(now // FAILURE_WINDOW_SECONDS)
        try:
            count = await self._redis.get(f"authfail:{address}:{window}")
        except (RedisError, OSError) as exc:
            log.warning("failed-auth limiter unavailable", extra={"data": {"error": str(exc)}})
            return
        if count is not None and int(count) >= self._limit:
            raise TooManyFailuresError(max(1, int((window + 1) * FAILURE_WINDOW_SECONDS - now)))

    async def record(self, address: str) -> None:
        key = f"authfail:{address}:{int(time.time() // FAILURE_WINDOW_SECONDS)}"
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.incr(key)
                pipe.expire(key, FAILURE_WINDOW_SECONDS + 1)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            log.warning("failed-auth limiter unavailable", extra={"data": {"error": str(exc)}})


class CredentialVerifier:
    """API keys and tokens -> Principal. Verified keys live in a bounded LRU for `cache_seconds`."""

    def __init__(self, pool: asyncpg.Pool, jwt_secret: bytes, cache_seconds: float) -> None:
        self._pool = pool
        self._jwt_secret = jwt_secret
        self._ttl = cache_seconds
        # sha256(key) -> (key, valid until); key id -> (key or None when invalid, valid until)
        self._by_hash: OrderedDict[bytes, tuple[VerifiedKey, float]] = OrderedDict()
        self._by_id: OrderedDict[str, tuple[VerifiedKey | None, float]] = OrderedDict()

    async def authenticate(self, api_key: str | None, authorization: str | None) -> Principal:
        if api_key:
            return await self._api_key(api_key)
        if authorization:
            scheme, _, token = authorization.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise AuthError("unsupported Authorization scheme; use Bearer <token> or X-API-Key")
            return await self._token(token.strip())
        raise AuthError("missing credentials: send X-API-Key or Authorization: Bearer <token>")

    def cached(self, api_key: str | None, authorization: str | None) -> Principal | None:
        """The principal when the credential is known valid from the cache alone (no I/O), else None."""
        if api_key:
            hit = self._by_hash.get(hash_key(api_key))
            if hit is not None and hit[1] > time.monotonic() and self._still_valid(hit[0]):
                return hit[0].principal
            return None
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer":
            return None
        claimed = verify_token(self._jwt_secret, token.strip())
        if claimed is None:
            return None
        entry = self._by_id.get(claimed.key_id)
        if entry is None or entry[0] is None or entry[1] <= time.monotonic():
            return None
        return self._bind(claimed, entry[0])

    async def authenticate_metadata(self, metadata: Iterable[tuple[str, Any]] | None) -> Principal:
        """The same for gRPC metadata (`x-api-key`, `authorization`)."""
        values = {k: v for k, v in metadata or () if isinstance(v, str)}
        return await self.authenticate(values.get("x-api-key"), values.get("authorization"))

    @staticmethod
    def _still_valid(key: VerifiedKey) -> bool:
        return key.expires_at is None or key.expires_at > datetime.now(UTC)

    def _remember(self, cache: OrderedDict[Any, Any], k: Any, value: Any) -> None:
        if self._ttl <= 0:
            return
        cache[k] = (value, time.monotonic() + self._ttl)
        cache.move_to_end(k)
        if len(cache) > CACHE_ENTRIES:
            cache.popitem(last=False)

    async def _api_key(self, key: str) -> Principal:
        digest = hash_key(key)
        cached = self._by_hash.get(digest)
        if cached is not None and cached[1] > time.monotonic() and self._still_valid(cached[0]):
            self._by_hash.move_to_end(digest)
            return cached[0].principal
        self._by_hash.pop(digest, None)
        found = await authenticate_api_key(self._pool, key)
        if found is None:
            raise AuthError("invalid, revoked or expired API key")
        self._remember(self._by_hash, digest, found)
        return found.principal

    async def key(self, key_id: str) -> VerifiedKey | None:
        """The key `key_id` while valid (cached, including the answer "not valid")."""
        cached = self._by_id.get(key_id)
        fresh = cached is not None and cached[1] > time.monotonic()
        if cached is not None and fresh and (cached[0] is None or self._still_valid(cached[0])):
            return cached[0]
        found = await key_by_id(self._pool, key_id)
        self._remember(self._by_id, key_id, found)
        return found

    async def _token(self, token: str) -> Principal:
        claimed = verify_token(self._jwt_secret, token)
        if claimed is None:
            raise AuthError("invalid or expired token")
        key = await self.key(claimed.key_id)
        if key is None or key.principal.tenant_id != claimed.tenant_id:
            raise AuthError(
                "invalid or expired token: its API key is revoked or expired, or its tenant suspended"
            )
        return self._bind(claimed, key)

    def _bind(self, claimed: Principal, key: VerifiedKey) -> Principal:
        """A token's principal, never more than its key allows nor valid past it."""
        if key.principal.tenant_id != claimed.tenant_id or not self._still_valid(key):
            raise AuthError("invalid or expired token")
        bound = key.principal.not_after
        not_after = min(claimed.not_after, bound) if bound else claimed.not_after
        return Principal(
            tenant_id=claimed.tenant_id,
            principal=claimed.principal,
            permission=min(claimed.permission, key.principal.permission),
            platform_admin=claimed.platform_admin and key.principal.platform_admin,
            key_id=claimed.key_id,
            not_after=not_after,
        )

    def forget_key(self, key_id: str) -> None:
        """Drops a revoked key at once (this process; others within `cache_seconds`)."""
        for digest, (verified, _) in list(self._by_hash.items()):
            if verified.key_id == key_id:
                del self._by_hash[digest]
        self._by_id.pop(key_id, None)


def peer_address(peer: str) -> str:
    """The client address of a gRPC peer string ("ipv4:10.0.0.5:51234" -> "10.0.0.5")."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv6":
        return rest.rsplit(":", 1)[0].strip("[]") or peer
    if kind == "ipv4":
        return rest.rsplit(":", 1)[0] or peer
    return peer


async def grpc_caller(
    metadata: Iterable[tuple[str, Any]] | None,
    *,
    peer: str | None,
    verifier: CredentialVerifier,
    internal: InternalAuth,
    limiter: FailedAuthLimiter | None = None,
    address: str = "",
) -> Principal:
    """The principal of a gRPC call: a context asserted by a platform service (accepted only when the
    caller's certificate names one of ASSERTING_SERVICES; on a plaintext development server, `peer` is
    None and the HMAC alone decides), else the caller's own API key or token. Raises AuthError."""
    md = list(metadata or ())
    if InternalAuth.asserted(md):
        if peer is not None and peer not in ASSERTING_SERVICES:
            raise AuthError(
                "an asserted caller context is only accepted from platform services; "
                "send x-api-key or authorization metadata"
            )
        try:
            return internal.verify(md)
        except PermissionError as exc:
            raise AuthError(str(exc)) from None
    values = {k: v for k, v in md if isinstance(v, str)}
    api_key, authorization = values.get("x-api-key"), values.get("authorization")
    try:
        cached = verifier.cached(api_key, authorization)
    except AuthError:
        cached = None
    if cached is not None:
        return cached
    # Uncached credentials cost a lookup: an address that keeps failing is refused before it.
    if limiter is not None:
        await limiter.check(address)
    try:
        return await verifier.authenticate(api_key, authorization)
    except AuthError:
        if limiter is not None:
            await limiter.record(address)
        raise
