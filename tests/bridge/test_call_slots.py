"""Concurrent-call slots against the real Redis: atomic limit, idempotent admit, release, and expiry
of slots whose call stopped refreshing them (a crashed bridge instance)."""

from __future__ import annotations

import asyncio
import uuid

import redis.asyncio as aioredis

from services.shared.call_slots import CallSlots, active_calls_key, slot_key


def _ids(n: int) -> list[str]:
    return [str(uuid.uuid4()) for _ in range(n)]


async def test_admit_is_atomic_under_concurrency(redis: aioredis.Redis) -> None:
    slots = CallSlots(redis)
    tenant = str(uuid.uuid4())
    calls = _ids(30)
    admitted = await asyncio.gather(*(slots.admit(tenant, c, 7) for c in calls))
    assert sum(admitted) == 7
    assert await redis.scard(active_calls_key(tenant)) == 7
    winners = [c for c, ok in zip(calls, admitted, strict=True) if ok]
    # Admitting a call that already holds its slot is not a second slot.
    assert await slots.admit(tenant, winners[0], 7)
    assert await redis.scard(active_calls_key(tenant)) == 7
    assert await slots.release(winners[0])
    assert not await slots.release(winners[0])
    assert not await redis.sismember(active_calls_key(tenant), winners[0])
    assert await slots.admit(tenant, calls[-1] if calls[-1] not in winners else calls[0], 7)
    for c in calls:
        await slots.release(c)
    assert await redis.scard(active_calls_key(tenant)) == 0


async def test_unrefreshed_slot_expires_and_frees_the_tenant(redis: aioredis.Redis) -> None:
    tenant = str(uuid.uuid4())
    live, crashed = _ids(2)
    slots = CallSlots(redis, ttl_seconds=0.3)
    assert await slots.admit(tenant, live, 2)
    assert await slots.admit(tenant, crashed, 2)
    assert not await slots.admit(tenant, str(uuid.uuid4()), 2)
    # The live call refreshes; the crashed instance's call does not.
    for _ in range(6):
        await asyncio.sleep(0.1)
        assert await slots.refresh(live)
    assert await redis.exists(slot_key(crashed)) == 0
    assert not await slots.refresh(crashed)
    newcomer = str(uuid.uuid4())
    assert await slots.admit(tenant, newcomer, 2)
    members = {
        m.decode() if isinstance(m, bytes) else m for m in await redis.smembers(active_calls_key(tenant))
    }
    assert members == {live, newcomer}
    await slots.release(live)
    await slots.release(newcomer)
    assert await redis.exists(active_calls_key(tenant)) == 0
