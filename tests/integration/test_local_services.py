"""The backing services are real: write to each and read back."""

from __future__ import annotations

import uuid

import asyncpg
import pytest
from nats.js.api import ConsumerConfig, DeliverPolicy

from services.shared.cache import create_redis
from services.shared.db import create_pool
from services.shared.events import EventBus, new_event
from services.shared.settings import Settings
from voice.v1 import events_pb2


async def test_postgres_write_and_read_back(settings: Settings) -> None:
    pool = await create_pool(settings)
    try:
        async with pool.acquire() as conn:
            conn: asyncpg.Connection  # type: ignore[no-redef]
            await conn.execute("CREATE TEMP TABLE probe (id uuid PRIMARY KEY, note text NOT NULL)")
            key = uuid.uuid4()
            await conn.execute("INSERT INTO probe VALUES ($1, $2)", key, "hello postgres")
            assert await conn.fetchval("SELECT note FROM probe WHERE id = $1", key) == "hello postgres"
            assert str(await conn.fetchval("SHOW server_version")).startswith("15")
    finally:
        await pool.close()


async def test_redis_write_and_read_back(settings: Settings) -> None:
    redis = create_redis(settings)
    key = f"test:probe:{uuid.uuid4()}"
    try:
        await redis.hset(key, mapping={"state": "connected", "agent_id": "a1"})
        await redis.expire(key, 60)
        assert await redis.hgetall(key) == {b"state": b"connected", b"agent_id": b"a1"}
        info = await redis.info("server")
        assert int(str(info["redis_version"]).split(".")[0]) >= 7
    finally:
        await redis.delete(key)
        await redis.aclose()


async def test_jetstream_publish_store_and_replay(settings: Settings) -> None:
    bus = await EventBus.connect(settings, name="test")
    tenant = f"t_{uuid.uuid4().hex[:8]}"
    try:
        event = new_event(
            tenant, "call_1", "test", call_ended=events_pb2.CallEnded(end_reason="caller_hangup")
        )
        ack = await bus.publish(event)
        assert ack.stream == settings.nats_stream and not ack.duplicate
        # The same event again (a retry after a lost ack) is deduplicated by its event_id.
        again = await bus.publish(event)
        assert again.duplicate and again.seq == ack.seq

        sub = await bus.js.subscribe(
            f"voice.{tenant}.>",
            config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
            ordered_consumer=True,
        )
        msg = await sub.next_msg(timeout=5)
        stored = events_pb2.Event.FromString(msg.data)
        assert stored == event
        assert msg.subject == f"voice.{tenant}.call_1.call.ended"
        with pytest.raises(TimeoutError):
            await sub.next_msg(timeout=0.3)
        await sub.unsubscribe()
    finally:
        await bus.close()


async def test_publish_rejects_an_event_without_type(settings: Settings) -> None:
    bus = await EventBus.connect(settings, name="test")
    try:
        with pytest.raises(ValueError, match="type"):
            await bus.publish(events_pb2.Event(event_id="x", tenant_id="t"))
    finally:
        await bus.close()
