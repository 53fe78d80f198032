"""Per-tenant rate limits in Redis (spec 3.1.5, 9.3): `default_limit` requests per fixed one-minute
window (`ratelimit:{tenant}:{window}`, TTL 60 s) and at most `burst_limit` requests in flight
(`ratelimit:{tenant}:concurrent`).

Acquiring is one round trip: a server-side Lua script (sent once, then called by its SHA with EVALSHA)
counts the request in the window, takes an in-flight slot and gives it back itself when either limit
refuses, so a refused request costs no second trip. Releasing a granted slot is one DECR."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

log = logging.getLogger(__name__)
WINDOW_SECONDS = 60
# A crashed gateway cannot release its in-flight slots; they expire with the key after this long.
CONCURRENT_TTL_SECONDS = 120

# KEYS: window counter, in-flight counter. ARGV: per-window limit, burst limit, window TTL, in-flight TTL.
# Returns {requests counted in this window, requests in flight including this one (0: not taken)}.
# The window is counted even when refused (a flood keeps paying), as the two-pipeline version did.
ACQUIRE_LUA = """
local count = redis.call('INCR', KEYS[1])
if count == 1 then redis.call('EXPIRE', KEYS[1], ARGV[3]) end
if count > tonumber(ARGV[1]) then return {count, 0} end
local in_flight = redis.call('INCR', KEYS[2])
redis.call('EXPIRE', KEYS[2], ARGV[4])
if in_flight > tonumber(ARGV[2]) then
  redis.call('DECR', KEYS[2])
end
return {count, in_flight}
"""


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
        # redis-py calls it with EVALSHA and loads it again by itself when Redis answers NOSCRIPT
        # (after a restart or SCRIPT FLUSH).
        self._acquire: AsyncScript = redis.register_script(ACQUIRE_LUA)

    @staticmethod
    def _concurrent_key(tenant_id: str) -> str:
        return f"ratelimit:{tenant_id}:concurrent"

    async def acquire(self, tenant_id: str) -> RateLimitResult | None:
        """Counts the request; None when Redis is unreachable (the caller fails open). An allowed
        result holds an in-flight slot that `release` gives back; a refused one holds none."""
        now = time.time()
        window = int(now // WINDOW_SECONDS)
        reset = max(1, int((window + 1) * WINDOW_SECONDS - now))
        keys = [f"ratelimit:{tenant_id}:{window}", self._concurrent_key(tenant_id)]
        args = [self._limit, self._burst, WINDOW_SECONDS + 1, CONCURRENT_TTL_SECONDS]
        try:
            count, in_flight = (int(v) for v in await self._acquire(keys=keys, args=args))
        except (RedisError, OSError) as exc:
            log.warning("rate limiter unavailable", extra={"data": {"error": str(exc)}})
            return None
        remaining = max(0, self._limit - count)
        if count > self._limit:
            return RateLimitResult(
                False, self._limit, 0, reset, reset, "rate limit exceeded: requests per minute"
            )
        if in_flight > self._burst:
            return RateLimitResult(
                False, self._limit, remaining, reset, 1, "rate limit exceeded: too many concurrent requests"
            )
        return RateLimitResult(True, self._limit, remaining, reset, 0, "")

    async def release(self, tenant_id: str) -> None:
        try:
            await self._redis.decr(self._concurrent_key(tenant_id))
        except (RedisError, OSError) as exc:
            log.warning("rate limiter release failed", extra={"data": {"error": str(exc)}})
