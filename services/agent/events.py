"""The agent's call events on NATS JetStream (spec 5.3): agent.joined, transcript.turn, tool.called,
usage.minute.

A call never waits on the bus: events are queued and published by one background task per process,
which reconnects and retries while NATS is away (a bounded backlog; beyond it the oldest events are
dropped and counted in errors_total{type="event_dropped"}). JetStream deduplicates a retried publish by
the event id, so a retry after a lost ack does not double an event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import Protocol

from google.protobuf.message import Message
from prometheus_client import Counter

from services.shared.events import EventBus, new_event
from services.shared.settings import Settings
from voice.v1 import events_pb2

log = logging.getLogger(__name__)

MAX_BACKLOG = 10_000
RETRY_S = (0.2, 0.5, 1.0, 2.0, 5.0)


class CallEventSink(Protocol):
    def emit(self, tenant_id: str, call_id: str, **payload: Message) -> None:
        """Queues one event; `payload` is one case of voice.v1.Event's payload, e.g. usage_minute=..."""
        ...


class NullEventSink:
    """For embedded use without a bus (benchmarks, unit tests of the pipeline)."""

    def emit(self, tenant_id: str, call_id: str, **payload: Message) -> None:
        return None


class JetStreamEventSink:
    def __init__(
        self, settings: Settings, source: str, errors: Counter, max_backlog: int = MAX_BACKLOG
    ) -> None:
        self._settings = settings
        self._source = source
        self._errors = errors
        self._backlog: deque[events_pb2.Event] = deque()
        self._max_backlog = max_backlog
        self._ready = asyncio.Event()
        self._drained = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._bus: EventBus | None = None
        self.published = 0

    def emit(self, tenant_id: str, call_id: str, **payload: Message) -> None:
        self._backlog.append(new_event(tenant_id, call_id, self._source, **payload))
        if len(self._backlog) > self._max_backlog:
            self._backlog.popleft()
            self._errors.labels("agent", "event_dropped").inc()
        self._ready.set()
        self._drained.clear()
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._publish_forever(), name="event-publisher"
            )

    async def _publish_forever(self) -> None:
        failures = 0
        while True:
            if not self._backlog:
                self._ready.clear()
                await self._ready.wait()
                continue
            try:
                if self._bus is None:
                    self._bus = await EventBus.connect(self._settings, name=self._source)
                await self._bus.publish(self._backlog[0])
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._errors.labels("agent", "event_publish_failed").inc()
                delay = RETRY_S[min(failures, len(RETRY_S) - 1)]
                failures += 1
                log.warning(
                    "event bus unavailable, retrying", extra={"data": {"error": str(exc), "in_s": delay}}
                )
                await self._drop_connection()
                await asyncio.sleep(delay)
                continue
            self._backlog.popleft()
            self.published += 1
            failures = 0
            if not self._backlog:
                self._drained.set()

    async def _drop_connection(self) -> None:
        bus, self._bus = self._bus, None
        if bus is not None:
            with contextlib.suppress(Exception):
                await bus.nc.close()

    async def close(self, flush_s: float = 2.0) -> None:
        """Gives the backlog `flush_s` to go out, then stops."""
        if self._backlog and self._task is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained.wait(), flush_s)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._bus is not None:
            with contextlib.suppress(Exception):
                await self._bus.close()
            self._bus = None
