"""Per-tenant rate limits in Redis (spec 3.1.5, 9.3): `default_limit` requests per fixed one-minute
window (`ratelimit:{tenant}:{window}`, TTL 60 s) and at most `burst_limit` requests in flight
(`ratelimit:{tenant}:concurrent`). One pipelined round trip per request, one to release."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)
WINDOW_SECONDS = 60
# A crashed gateway cannot release its in-flight slots; they expire with the key after this long.
CONCURRENT_TTL_SECONDS = 120


@dataclass(frozen=True)
class RateLimitResult:
    allowed: bool
    limit: int
    remaining: int
    reset_seconds: int
    retry_after: int
    reason: str

    def headers(self) -> dict[str, str]:
        return {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(self.reset_seconds),
        }


class RateLimiter:
    def __init__(self, redis: aioredis.Redis, per_minute: int, burst: int) -> None:
        self._redis = redis
        self._limit = per_minute
        self._burst = burst

    @staticmethod
    def _concurrent_key(tenant_id: str) -> str:
        return f"ratelimit:{tenant_id}:concurrent"

    async def acquire(self, tenant_id: str) -> RateLimitResult | None:
        """Counts the request; None when Redis is unreachable (the caller fails open)."""
        now = time.time()
        window = int(now // WINDOW_SECONDS)
        reset = max(1, int((window + 1) * WINDOW_SECONDS - now))
        window_key = f"ratelimit:{tenant_id}:{window}"
        concurrent_key = self._concurrent_key(tenant_id)
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.incr(window_key)
                pipe.expire(window_key, WINDOW_SECONDS + 1)
                pipe.incr(concurrent_key)
                pipe.expire(concurrent_key, CONCURRENT_TTL_SECONDS)
                count, _, in_flight, _ = await pipe.execute()
        except (RedisError, OSError) as exc:
            log.warning("rate limiter unavailable", extra={"data": {"error": str(exc)}})
            return None
        remaining = max(0, self._limit - int(count))
        if int(count) > self._limit:
            await self.release(tenant_id)
            return RateLimitResult(
                False, self._limit, 0, reset, reset, "rate limit exceeded: requests per minute"
            )
        if int(in_flight) > self._burst:
            await self.release(tenant_id)
            return RateLimitResult(
                False, self._limit, remaining, reset, 1, "rate limit exceeded: too many concurrent requests"
            )
        return RateLimitResult(True, self._limit, remaining, reset, 0, "")

    async def release(self, tenant_id: str) -> None:
        try:
            await self._redis.decr(self._concurrent_key(tenant_id))
        except (RedisError, OSError) as exc:
            log.warning("rate limiter release failed", extra={"data": {"error": str(exc)}})
