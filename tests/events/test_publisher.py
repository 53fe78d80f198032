"""The event publisher: acked, pipelined, spooled while NATS is away and replayed in order, dead-letters
what the bus refuses without blocking what follows, and spools on shutdown instead of discarding."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

import pytest
from nats.js.api import ConsumerConfig, DeliverPolicy

from services.shared.events import EventBus, call_event_id, new_event, subject_for
from services.shared.events_publisher import EventPublisher
from services.shared.events_spool import decode
from services.shared.settings import Settings
from tests.events.nats_server import PrivateNats
from voice.v1 import events_pb2


async def stored(settings: Settings, subject: str = "voice.>") -> list[events_pb2.Event]:
    bus = await EventBus.connect(settings, name="test-reader")
    try:
        sub = await bus.js.subscribe(
            subject, ordered_consumer=True, config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL)
        )
        events = []
        with contextlib.suppress(TimeoutError):
            while True:
                events.append(events_pb2.Event.FromString((await sub.next_msg(timeout=0.5)).data))
        await sub.unsubscribe()
        return events
    finally:
        await bus.close()


def dead_letters(spool_dir: Path) -> list[bytes]:
    return [record for path in spool_dir.glob("*.dead") for record in decode(path.read_bytes(), str(path))]


def minute(n: int) -> events_pb2.UsageMinute:
    return events_pb2.UsageMinute(minute_count=n)


def test_subjects_are_tenant_call_event() -> None:
    assert subject_for("t_1", "c_9", "call.ended") == "voice.t_1.c_9.call.ended"
    with pytest.raises(ValueError, match="call_id"):
        subject_for("t_1", "c" * 129, "call.ended")
    with pytest.raises(ValueError, match="call_id"):
        subject_for("t_1", "a.b", "call.ended")
    assert call_event_id("t", "c", "call.ended") == call_event_id("t", "c", "call.ended")
    assert call_event_id("t", "c", "call.ended") != call_event_id("t", "c2", "call.ended")


async def test_events_are_acked_in_order_and_pipelined(bus_settings: Settings) -> None:
    publisher = EventPublisher(bus_settings, "test")
    publisher.emit("t_1", "c_1", agent_joined=events_pb2.AgentJoined(agent_id="a_1"))
    assert await publisher.flush(5)
    for n in range(1, 2001):
        publisher.emit("t_1", "c_1", usage_minute=minute(n))
    assert await publisher.flush(20)
    await publisher.close()
    events = await stored(bus_settings)
    assert [e.usage_minute.minute_count for e in events[1:]] == list(range(1, 2001))
    assert publisher.published == 2001 and events[0].type == "agent.joined"


async def test_duplicate_event_ids_are_stored_once(bus_settings: Settings) -> None:
    publisher = EventPublisher(bus_settings, "test")
    stable_id = call_event_id("t_1", "c_2", "call.ended")
    ended = new_event("t_1", "c_2", "test", event_id=stable_id, call_ended=events_pb2.CallEnded())
    publisher.publish(ended)
    publisher.publish(ended)  # the agent and the bridge both report the end of the call
    await publisher.close()
    assert [e.type for e in await stored(bus_settings)] == ["call.ended"]


async def test_refused_event_is_dead_lettered_and_does_not_block(
    bus_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    publisher = EventPublisher(bus_settings, "test")
    huge = events_pb2.AgentJoined(agent_id="x" * 1_100_000)
    publisher.emit("t_1", "c_3", agent_joined=huge)
    publisher.emit("t_1", "c" * 200, usage_minute=minute(1))  # not a valid subject token
    publisher.emit("t_1", "c_3", usage_minute=minute(2))
    with caplog.at_level(logging.ERROR):
        assert await publisher.flush(5)
    await publisher.close()
    assert [e.usage_minute.minute_count for e in await stored(bus_settings)] == [2]
    assert publisher.dead_lettered == 2
    assert any("too large" in r.getMessage() for r in caplog.records)
    assert len(dead_letters(Path(bus_settings.events.spool_dir))) == 2


async def test_nats_restart_mid_call_spools_and_replays_in_order(
    bus_settings: Settings, private_nats: PrivateNats
) -> None:
    publisher = EventPublisher(bus_settings, "test")
    for n in range(1, 11):
        publisher.emit("t_1", "c_4", usage_minute=minute(n))
    assert await publisher.flush(5)
    await private_nats.stop()
    for n in range(11, 31):
        publisher.emit("t_1", "c_4", usage_minute=minute(n))
        await asyncio.sleep(0.01)  # the call goes on meanwhile; emit never blocks
    for _ in range(200):
        if publisher.spooled_events == 20:
            break
        await asyncio.sleep(0.05)
    assert publisher.spooled_events == 20
    await private_nats.start()
    for n in range(31, 41):
        publisher.emit("t_1", "c_4", usage_minute=minute(n))
    assert await publisher.flush(20)
    await publisher.close()
    counts = [e.usage_minute.minute_count for e in await stored(bus_settings)]
    assert counts == list(range(1, 41))


async def test_shutdown_while_nats_is_away_spools_and_the_next_publisher_replays(
    bus_settings: Settings, private_nats: PrivateNats
) -> None:
    await private_nats.stop()
    first = EventPublisher(bus_settings, "first")
    for n in range(1, 6):
        first.emit("t_1", "c_5", usage_minute=minute(n))
    await first.close(flush_s=1)
    assert first.published == 0
    await private_nats.start()
    second = EventPublisher(bus_settings, "second")  # e.g. the restarted service
    second.emit("t_1", "c_5", usage_minute=minute(6))
    assert await second.flush(10)
    await second.close()
    assert [e.usage_minute.minute_count for e in await stored(bus_settings)] == [1, 2, 3, 4, 5, 6]


async def test_full_spool_counts_and_alerts(
    bus_settings: Settings, private_nats: PrivateNats, caplog: pytest.LogCaptureFixture
) -> None:
    await private_nats.stop()
    tiny = bus_settings.model_copy(
        update={"events": bus_settings.events.model_copy(update={"spool_max_bytes": 4096})}
    )
    publisher = EventPublisher(tiny, "full")
    with caplog.at_level(logging.ERROR):
        for n in range(1, 200):
            publisher.emit("t_1", "c_6", usage_minute=minute(n))
        await publisher.close(flush_s=1)
    assert publisher.dropped > 0 and publisher.published == 0
    assert any("ALERT: event spool full" in r.getMessage() for r in caplog.records)
