"""The agent's event sink never blocks a call: with the bus away, events wait (bounded) and are retried."""

from __future__ import annotations

import asyncio
import socket

from prometheus_client import CollectorRegistry

from services.agent.events import JetStreamEventSink
from services.agent.metrics import AgentMetrics
from services.shared.settings import Settings
from voice.v1 import events_pb2


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def errors(metrics: AgentMetrics, kind: str) -> float:
    return float(metrics.errors.labels("agent", kind)._value.get())


async def test_bus_down_neither_blocks_nor_loses_recent_events(settings: Settings) -> None:
    metrics = AgentMetrics.create(CollectorRegistry())
    away = settings.model_copy(update={"nats_url": f"nats://127.0.0.1:{unused_port()}"})
    sink = JetStreamEventSink(away, "test", metrics.errors, max_backlog=3)
    for minute in range(1, 6):
        sink.emit("t_1", "c_1", usage_minute=events_pb2.UsageMinute(minute_count=minute))
    await asyncio.sleep(0.3)
    assert sink.published == 0
    assert errors(metrics, "event_dropped") == 2  # the oldest beyond the backlog bound
    assert [e.usage_minute.minute_count for e in sink._backlog] == [3, 4, 5]
    await sink.close(flush_s=0.1)


async def test_events_are_published_once_the_bus_is_there(settings: Settings) -> None:
    metrics = AgentMetrics.create(CollectorRegistry())
    sink = JetStreamEventSink(settings, "test", metrics.errors)
    sink.emit("t_1", "c_events", agent_joined=events_pb2.AgentJoined(agent_id="a_1"))
    await sink.close(flush_s=10)
    assert sink.published == 1 and not sink._backlog
