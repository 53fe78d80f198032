"""Call state in Redis (spec 9.3): `call:{id}:state`, a hash any bridge instance can read, kept alive
by the live call (TTL refreshed with its concurrent-call slot) and kept a while after the call ends."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

LIVE_TTL_SECONDS = 120
ENDED_TTL_SECONDS = 3600


def call_state_key(call_id: str) -> str:
    return f"call:{call_id}:state"


class CallStore:
    def __init__(self, redis: aioredis.Redis) -> None:
        self._redis = redis

    async def put(self, call_id: str, ended: bool = False, **fields: str) -> None:
        key = call_state_key(call_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping=dict(fields.items()))
            pipe.expire(key, ENDED_TTL_SECONDS if ended else LIVE_TTL_SECONDS)
            await pipe.execute()

    async def touch(self, call_id: str) -> None:
        await self._redis.expire(call_state_key(call_id), LIVE_TTL_SECONDS)

    async def get(self, call_id: str) -> dict[str, str]:
        raw: dict[Any, Any] = await self._redis.hgetall(call_state_key(call_id))
        return {
            (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in raw.items()
        }
