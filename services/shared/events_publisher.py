"""The platform's event publisher: a non-blocking sink that gets every event onto JetStream.

    publisher = EventPublisher(settings, source="agent-1", registry=server.registry)
    server.on_stop.append(publisher.close)
    publisher.emit(tenant_id, call_id, usage_minute=events_pb2.UsageMinute(minute_count=1))
    publisher.publish(new_event(tenant_id, call_id, "agent-1", event_id=..., call_ended=...))

`emit`/`publish` only queue in memory and return at once: a call never waits on the bus. One background
task per publisher sends the queue in order: a lone event with a plain acked publish, a backlog
pipelined (up to `events.pipeline_window` acks outstanding). Every event is acked by the stream or kept:

- a publish that times out or fails for a transient reason is retried (`events.max_attempts`); then
  the connection counts as down, and the event, with everything behind it, goes to the disk spool
  (services/shared/events_spool.py). While NATS is away, new events go to the spool too. On reconnect the
  spool is replayed first, in order, then the memory queue (order per call is kept; JetStream's
  de-duplication by event id absorbs the re-sends of events whose ack was lost).
- an event the bus refuses (larger than `events.max_event_bytes` or NATS' max payload, an id that is not
  a subject token, a JetStream error other than "unavailable") is dead-lettered locally (`<name>.dead`
  beside the spool) with an error line, and the events behind it go on.
- a full spool (`events.spool_max_bytes`) refuses events: counted in `events_dropped_total` with an
  ALERT error line; `events_spool_bytes` shows it filling up before that.
- `close()` gives the queue and the spool a few seconds to go out, then spools what is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import time
import uuid
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats.errors
import nats.js.errors
from google.protobuf.message import DecodeError, Message
from nats.js.api import PubAck
from prometheus_client import CollectorRegistry, Counter, Gauge

from services.shared.events import EventBus, new_event, subject_for
from services.shared.events_spool import Spool
from services.shared.settings import Settings
from voice.v1 import events_pb2

log = logging.getLogger(__name__)

RECONNECT_BACKOFF_S = (0.1, 0.25, 0.5, 1.0, 2.0)
# Room left under NATS' max payload for the headers (Nats-Msg-Id) and protocol framing.
_HEADER_ROOM = 512
_ALERT_EVERY_S = 10.0


class _Offline(Exception):
    """The bus is unreachable: what was being sent is in the spool; reconnect and replay."""


@dataclass(frozen=True)
class PublisherMetrics:
    published: Counter
    spooled: Counter
    dead_lettered: Counter
    dropped: Counter
    spool_bytes: Gauge
    spool_events: Gauge
    pending: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry) -> PublisherMetrics:
        return cls(
            published=Counter("events_published", "Events acked by JetStream", ["type"], registry=registry),
            spooled=Counter("events_spooled", "Events written to the disk spool", registry=registry),
            dead_lettered=Counter(
                "events_dead_lettered", "Events the bus refused, kept locally", ["reason"], registry=registry
            ),
            dropped=Counter("events_dropped", "Events lost (spool full)", ["reason"], registry=registry),
            spool_bytes=Gauge("events_spool_bytes", "Bytes waiting in the disk spool", registry=registry),
            spool_events=Gauge("events_spool_events", "Events waiting in the disk spool", registry=registry),
            pending=Gauge("events_pending", "Events queued in memory", registry=registry),
        )


def _spool_name(source: str) -> str:
    """Unique per publisher (several may share a process and a source name, e.g. in tests); what a gone
    publisher leaves behind is adopted by the next one sharing the directory."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", source)[:64] + f"-{os.getpid()}-{uuid.uuid4().hex[:8]}"


class EventPublisher:
    """See the module docstring. Use from one event loop; `close()` when the service stops."""

    def __init__(
        self,
        settings: Settings,
        source: str,
        *,
        registry: CollectorRegistry | None = None,
        spool_name: str | None = None,
    ) -> None:
        self._settings = settings
        self._cfg = settings.events
        self.source = source
        self.metrics = PublisherMetrics.create(registry or CollectorRegistry())
        self._spool = Spool(
            Path(self._cfg.spool_dir), spool_name or _spool_name(source), self._cfg.spool_max_bytes
        )
        self._spool_open = False
        self._queue: deque[events_pb2.Event] = deque()
        self._inflight: list[events_pb2.Event] = []
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._bus: EventBus | None = None
        self._closed = False
        self._last_alert = 0.0
        self.published = 0
        self.dead_lettered = 0
        self.dropped = 0

    # --- the sink API -------------------------------------------------------------------------------

    def emit(self, tenant_id: str, call_id: str, **payload: Message) -> None:
        """Queues one event built from one payload case (`usage_minute=...`); never blocks."""
        fields: dict[str, Any] = payload
        self.publish(new_event(tenant_id, call_id, self.source, **fields))

    def publish(self, event: events_pb2.Event) -> None:
        """Queues a built event (e.g. with a stable id from `call_event_id`); never blocks."""
        if self._closed:
            raise RuntimeError("the event publisher is closed")
        self._queue.append(event)
        self.metrics.pending.set(len(self._queue))
        self._idle.clear()
        self._wake.set()
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"events-{self.source}")

    @property
    def connected(self) -> bool:
        return self._bus is not None and self._bus.nc.is_connected

    @property
    def spooled_events(self) -> int:
        return self._spool.count

    async def flush(self, within_s: float) -> bool:
        """Waits until everything queued and spooled is acked; False on timeout."""
        if self._task is None:
            return True
        try:
            await asyncio.wait_for(self._idle.wait(), within_s)
        except TimeoutError:
            return False
        return True

    async def close(self, flush_s: float = 5.0) -> None:
        """Sends what it can within `flush_s` (less when NATS is away), spools the rest, stops."""
        self._closed = True
        deadline = time.monotonic() + flush_s
        while self._task is not None and not self._idle.is_set() and time.monotonic() < deadline:
            if not self.connected and not self._queue and not self._inflight:
                break  # offline: everything is already on disk
            await asyncio.sleep(0.02)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        left = self._inflight + list(self._queue)
        self._inflight, self._queue = [], deque()
        if left:
            await self._to_spool(left)
            log.warning(
                "event publisher stopped with events unsent: spooled", extra={"data": {"events": len(left)}}
            )
        if self._spool_open:
            await asyncio.to_thread(self._spool.close)
            self._spool_open = False
        await self._drop_bus()

    # --- the background task ------------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            await self._open_spool()
        except OSError:
            # Publishing goes on without a spool; an outage then drops events (counted, alerted).
            log.exception("event spool unavailable", extra={"data": {"spool": str(self._spool.path)}})
        failures = 0
        while True:
            if not self._queue and self._spool.count == 0:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            bus = await self._connect()
            if bus is None:
                await self._spool_queue()
                delay = RECONNECT_BACKOFF_S[min(failures, len(RECONNECT_BACKOFF_S) - 1)]
                failures += 1
                await asyncio.sleep(delay)
                continue
            try:
                if self._spool.count:
                    await self._replay(bus)
                else:
                    await self._send_queue(bus)
                failures = 0
            except _Offline as exc:
                log.warning("event bus unreachable: spooling", extra={"data": {"error": str(exc)}})
                await self._drop_bus()

    async def _open_spool(self) -> None:
        def open_and_adopt() -> int:
            self._spool.open()
            return self._spool.adopt_orphans()

        adopted = await asyncio.to_thread(open_and_adopt)
        self._spool_open = True
        self._update_spool_gauges()
        if adopted:
            log.info("adopted spooled events of a stopped publisher", extra={"data": {"events": adopted}})

    async def _connect(self) -> EventBus | None:
        if self._bus is not None:
            return self._bus if self._bus.nc.is_connected else None
        try:
            self._bus = await EventBus.connect(self._settings, name=self.source)
        except Exception as exc:
            log.debug("event bus connect failed: %s", exc)
            return None
        if self._spool.count:
            log.info(
                "event bus reachable: replaying the spool", extra={"data": {"events": self._spool.count}}
            )
        return self._bus

    async def _drop_bus(self) -> None:
        bus, self._bus = self._bus, None
        if bus is not None:
            with contextlib.suppress(Exception):
                await bus.nc.close()

    async def _send_queue(self, bus: EventBus) -> None:
        window = self._cfg.pipeline_window
        batch = [self._queue.popleft() for _ in range(min(window, len(self._queue)))]
        self.metrics.pending.set(len(self._queue))
        self._inflight = batch
        try:
            await self._send(bus, batch)
        except _Offline:
            # Order: what failed first, then the rest of the memory queue behind it. Taken out of memory
            # before the write, so a close() cancelling us meanwhile does not spool them twice.
            left = [*self._inflight, *self._queue]
            self._inflight, self._queue = [], deque()
            self.metrics.pending.set(0)
            await self._to_spool(left)
            raise
        # A cancellation (close) leaves `_inflight` set: close() spools it.
        self._inflight = []

    async def _replay(self, bus: EventBus) -> None:
        records = await asyncio.to_thread(self._spool.read)
        window = self._cfg.pipeline_window
        for start in range(0, len(records), window):
            chunk = records[start : start + window]
            events = []
            for record in chunk:
                try:
                    events.append(events_pb2.Event.FromString(record))
                except DecodeError:
                    await self._dead_letter_raw(record, "undecodable spool record")
            try:
                await self._send(bus, events)
            except _Offline:
                await asyncio.to_thread(self._spool.replace, records[start:])
                self._update_spool_gauges()
                raise
        await asyncio.to_thread(self._spool.replace, [])
        self._update_spool_gauges()
        log.info("spool replayed", extra={"data": {"events": len(records)}})

    async def _send(self, bus: EventBus, events: list[events_pb2.Event]) -> None:
        """Publishes `events` in order, retrying transient failures; raises _Offline (with
        `self._inflight` = what is still unacked, in order) when the bus stays unreachable."""
        limit = min(self._cfg.max_event_bytes, bus.nc.max_payload - _HEADER_ROOM)
        ready: list[tuple[events_pb2.Event, str, bytes]] = []
        for event in events:
            try:
                subject = subject_for(event.tenant_id, event.call_id, event.type)
            except ValueError as exc:
                await self._dead_letter(event, f"invalid: {exc}")
                continue
            data = event.SerializeToString()
            if len(data) > limit:
                await self._dead_letter(event, f"too large: {len(data)} bytes > {limit}")
                continue
            ready.append((event, subject, data))
        for attempt in range(1, self._cfg.max_attempts + 1):
            if not ready:
                return
            results = await self._publish_all(bus, ready)
            retry: list[tuple[events_pb2.Event, str, bytes]] = []
            last_error: BaseException | None = None
            for item, result in zip(ready, results, strict=True):
                if isinstance(result, PubAck):
                    self.published += 1
                    self.metrics.published.labels(item[0].type).inc()
                elif isinstance(result, nats.js.errors.APIError) and not _transient(result):
                    await self._dead_letter(item[0], f"refused by JetStream: {result.description or result}")
                else:
                    retry.append(item)
                    last_error = result
            ready = retry
            self._inflight = [event for event, _, _ in ready]
            if ready and attempt < self._cfg.max_attempts and bus.nc.is_connected:
                await asyncio.sleep(0.05 * attempt)
            elif ready:
                raise _Offline(f"{len(ready)} events unacked: {type(last_error).__name__}: {last_error}")

    async def _publish_all(
        self, bus: EventBus, items: list[tuple[events_pb2.Event, str, bytes]]
    ) -> list[PubAck | BaseException]:
        timeout = self._cfg.publish_timeout_seconds
        if len(items) == 1:
            event, subject, data = items[0]
            try:
                return [
                    await bus.js.publish(
                        subject, data, timeout=timeout, headers={"Nats-Msg-Id": event.event_id}
                    )
                ]
            except Exception as exc:
                return [exc]
        return await bus.publish_pipelined(
            [(subject, data, event.event_id) for event, subject, data in items], timeout
        )

    # --- spool and dead letters ---------------------------------------------------------------------

    async def _spool_queue(self) -> None:
        if self._queue:
            events = list(self._queue)
            self._queue.clear()
            self.metrics.pending.set(0)
            await self._to_spool(events)

    async def _to_spool(self, events: list[events_pb2.Event]) -> None:
        records = [e.SerializeToString() for e in events]
        written = 0
        try:
            if not self._spool_open:
                await self._open_spool()
            written = await asyncio.to_thread(self._spool.append, records)
        except OSError:
            log.exception("event spool write failed", extra={"data": {"spool": str(self._spool.path)}})
        self.metrics.spooled.inc(written)
        self._update_spool_gauges()
        lost = len(records) - written
        if lost:
            self.dropped += lost
            self.metrics.dropped.labels("spool_full").inc(lost)
            now = time.monotonic()
            if now - self._last_alert >= _ALERT_EVERY_S:
                self._last_alert = now
                log.error(
                    "ALERT: event spool full, events dropped",
                    extra={
                        "data": {
                            "dropped": lost,
                            "dropped_total": self.dropped,
                            "spool": str(self._spool.path),
                            "spool_bytes": self._spool.size,
                            "max_bytes": self._spool.max_bytes,
                        }
                    },
                )

    async def _dead_letter(self, event: events_pb2.Event, reason: str) -> None:
        self.dead_lettered += 1
        self.metrics.dead_lettered.labels(reason.split(":", 1)[0]).inc()
        log.error(
            "event dead-lettered locally: %s",
            reason,
            extra={
                "data": {
                    "event_id": event.event_id,
                    "type": event.type,
                    "tenant_id": event.tenant_id[:128],
                    "call_id": event.call_id[:128],
                    "file": str(self._spool.dead_path),
                }
            },
        )
        await self._write_dead(event.SerializeToString())

    async def _dead_letter_raw(self, record: bytes, reason: str) -> None:
        self.dead_lettered += 1
        self.metrics.dead_lettered.labels(reason).inc()
        log.error("spooled record dead-lettered locally: %s", reason, extra={"data": {"bytes": len(record)}})
        await self._write_dead(record)

    async def _write_dead(self, record: bytes) -> None:
        with contextlib.suppress(OSError):  # the error line above already reported the event
            if not self._spool_open:
                await self._open_spool()
            await asyncio.to_thread(self._spool.dead_letter, record)

    def _update_spool_gauges(self) -> None:
        self.metrics.spool_bytes.set(self._spool.size)
        self.metrics.spool_events.set(self._spool.count)


def _transient(error: nats.js.errors.APIError) -> bool:
    """503 (no quorum, stream unavailable) and unknown codes are worth a retry; 4xx are refusals."""
    return error.code is None or error.code >= 500
