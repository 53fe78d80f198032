"""Concurrent-call slots: how many calls a tenant has in progress (spec 9.3 `tenant:{id}:active_calls`).

One mechanism for every place that starts a call (the control plane's CreateCall, the bridge's
inbound calls, the agent's Converse):

    slots = CallSlots(redis)
    if not await slots.admit(tenant_id, call_id, limit):
        ...reject: concurrency limit...
    # while the call lives, every `refresh_every` seconds (the bridge's call loop does this):
    await slots.refresh(call_id)
    # when it ends, however it ends:
    await slots.release(call_id)

`tenant:{id}:active_calls` stays a Redis SET of call ids (so `SISMEMBER`/`SCARD` keep their meaning),
and each member is backed by `call:{id}:slot` (value: the tenant id) with a TTL. A slot whose call
stops refreshing it (its bridge instance crashed) expires, and the next admit for that tenant drops
the orphaned member before counting; so a crash costs the tenant a slot for at most `ttl` seconds.
All three operations are single Lua scripts: atomic against concurrent admits on any instance.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

# KEYS[1] = the tenant's set. ARGV: call id, limit, ttl ms, tenant id, slot key prefix/suffix.
# Orphans (members without a live slot key) are dropped first, then the limit is checked. The set
# holds at most `limit` live members plus recent orphans, so the sweep is small.
_ADMIT = """
local members = redis.call('SMEMBERS', KEYS[1])
for _, m in ipairs(members) do
  if redis.call('EXISTS', ARGV[5] .. m .. ARGV[6]) == 0 then redis.call('SREM', KEYS[1], m) end
end
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then
  redis.call('SET', ARGV[5] .. ARGV[1] .. ARGV[6], ARGV[4], 'PX', ARGV[3])
  return 1
end
if redis.call('SCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('SET', ARGV[5] .. ARGV[1] .. ARGV[6], ARGV[4], 'PX', ARGV[3])
return 1
"""

# KEYS[1] = the call's slot key. Returns 1 while the slot is held, 0 once it is gone (released or
# expired: the caller should treat the call as no longer counted).
_REFRESH = """
if redis.call('PEXPIRE', KEYS[1], ARGV[1]) == 1 then return 1 end
return 0
"""

# KEYS[1] = the call's slot key. ARGV: call id, set key prefix/suffix.
_RELEASE = """
local tenant = redis.call('GET', KEYS[1])
redis.call('DEL', KEYS[1])
if tenant then
  redis.call('SREM', ARGV[2] .. tenant .. ARGV[3], ARGV[1])
  return 1
end
return 0
"""

_SLOT_PREFIX, _SLOT_SUFFIX = "call:", ":slot"
_SET_PREFIX, _SET_SUFFIX = "tenant:", ":active_calls"

DEFAULT_TTL_SECONDS = 60.0


def active_calls_key(tenant_id: str) -> str:
    return f"{_SET_PREFIX}{tenant_id}{_SET_SUFFIX}"


def slot_key(call_id: str) -> str:
    return f"{_SLOT_PREFIX}{call_id}{_SLOT_SUFFIX}"


class CallSlots:
    """Admit / refresh / release a call's slot. `ttl_seconds` bounds how long a crashed instance's
    calls keep counting; live calls refresh at `refresh_every` (a third of the TTL, so two refreshes
    may be lost to a Redis hiccup before the slot lapses)."""

    def __init__(self, redis: aioredis.Redis, ttl_seconds: float = DEFAULT_TTL_SECONDS) -> None:
        if ttl_seconds <= 0:
            raise ValueError("ttl_seconds must be positive")
        self._redis = redis
        self._ttl_ms = max(1, int(ttl_seconds * 1000))

    @property
    def refresh_every(self) -> float:
        return self._ttl_ms / 3000

    async def admit(self, tenant_id: str, call_id: str, limit: int) -> bool:
        """Take a slot for `call_id` if the tenant has fewer than `limit` live calls. Idempotent: a
        call that already holds its slot is admitted again (and its TTL renewed)."""
        result: Any = await self._redis.eval(
            _ADMIT,
            1,
            active_calls_key(tenant_id),
            call_id,
            limit,
            self._ttl_ms,
            tenant_id,
            _SLOT_PREFIX,
            _SLOT_SUFFIX,
        )
        return bool(int(result))

    async def refresh(self, call_id: str) -> bool:
        """Keep the call's slot alive; False when it no longer exists."""
        result: Any = await self._redis.eval(_REFRESH, 1, slot_key(call_id), self._ttl_ms)
        return bool(int(result))

    async def release(self, call_id: str) -> bool:
        """Free the call's slot (idempotent); True when it was still held."""
        result: Any = await self._redis.eval(
            _RELEASE, 1, slot_key(call_id), call_id, _SET_PREFIX, _SET_SUFFIX
        )
        return bool(int(result))
