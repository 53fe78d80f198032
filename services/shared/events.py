"""The event bus: platform events as `voice.v1.Event` protobufs on one NATS JetStream stream.

Subjects are a namespace, `voice.<tenant_id>.<call_id>.<event type>` (e.g.
`voice.t_1.c_9.call.ended`), all captured by one stream (file storage). Each event's `event_id` is sent
as the `Nats-Msg-Id` header, so JetStream drops a duplicate published inside the stream's duplicate
window (a retry after a lost ack never doubles an event); consumers are idempotent on `event_id` too.

Publishing from a service (never blocks the caller, acked, spooled to disk while NATS is away)::

    from services.shared.events_publisher import EventPublisher

    publisher = EventPublisher(settings, source="bridge-1", registry=server.registry)
    server.on_stop.append(publisher.close)           # flushes, or spools what is left
    publisher.emit(tenant_id, call_id, call_ringing=events_pb2.CallRinging(...))

Consuming (explicit ack, nak with backoff, term into the dead-letter stream): see
`services.shared.events_consumer.subscribe`.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from datetime import UTC, datetime

import nats
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import PubAck, StorageType, StreamConfig

from services.shared.logging import current_trace_id
from services.shared.settings import Settings
from voice.v1 import events_pb2

SUBJECT_PREFIX = "voice"
# Poison messages a consumer gave up on: `voice_dlq.<durable>.<tenant>.<call>.<type>`.
DEAD_LETTER_PREFIX = "voice_dlq"
_TOKEN = re.compile(r"^[A-Za-z0-9_-]+$")
# Call ids travel in subjects, headers and every row about the call: bounded and subject-safe.
MAX_ID_LENGTH = 128
DUPLICATE_WINDOW_SECONDS = 120.0
# Derives the event id of once-per-call events (call.ended) from the call, see call_event_id().
_CALL_EVENT_NAMESPACE = uuid.UUID("6f1d3c52-8f3e-4b0a-9d7e-2f6c1a4b5e70")


def check_id(value: str, what: str) -> str:
    """A tenant or call id usable as a subject token: 1-128 of [A-Za-z0-9_-]. Raises ValueError."""
    if not value or len(value) > MAX_ID_LENGTH or not _TOKEN.fullmatch(value):
        raise ValueError(f"{what} must be 1-{MAX_ID_LENGTH} characters of [A-Za-z0-9_-]")
    return value


def subject_for(tenant_id: str, call_id: str, event_type: str) -> str:
    """`voice.<tenant>.<call>.<type>`; rejects ids that would break the subject hierarchy."""
    check_id(tenant_id, "tenant_id")
    check_id(call_id, "call_id")
    if not all(_TOKEN.fullmatch(part) for part in event_type.split(".")):
        raise ValueError(f"event type {event_type!r} is not a dotted name")
    return f"{SUBJECT_PREFIX}.{tenant_id}.{call_id}.{event_type}"


def type_filter(event_type: str) -> str:
    """The subject filter of one event type across tenants and calls (`voice.*.*.call.ended`)."""
    return f"{SUBJECT_PREFIX}.*.*.{event_type}"


def call_event_id(tenant_id: str, call_id: str, event_type: str) -> str:
    """A stable event id for events that happen once per call, so that several publishers (bridge and
    agent both report call.ended) produce one stored, delivered event."""
    return str(uuid.uuid5(_CALL_EVENT_NAMESPACE, f"{tenant_id}/{call_id}/{event_type}"))


def new_event(
    tenant_id: str, call_id: str, source: str, *, event_id: str = "", trace_id: str = "", **payload: object
) -> events_pb2.Event:
    """Builds an Event with a fresh id (unless given) and the current time. `payload` is exactly one oneof
    case, e.g. `call_ended=events_pb2.CallEnded(...)`; the type name follows from the case (call.ended).
    The trace id defaults to the one bound to the current log context."""
    if len(payload) != 1:
        raise ValueError("exactly one payload is required")
    ((case, message),) = payload.items()
    if case not in EVENT_TYPES:
        raise ValueError(f"unknown event payload {case!r}")
    event = events_pb2.Event(
        event_id=event_id or str(uuid.uuid4()),
        tenant_id=tenant_id,
        call_id=call_id,
        source=source,
        trace_id=trace_id or current_trace_id() or "",
    )
    event.time.FromDatetime(datetime.now(UTC))
    getattr(event, case).CopyFrom(message)
    event.type = EVENT_TYPES[case]
    return event


# oneof case -> catalog name (spec 5.3, plus call.failed). transcript_turn's message is TranscriptTurnEvent.
EVENT_TYPES: dict[str, str] = {
    "call_ringing": "call.ringing",
    "call_connected": "call.connected",
    "call_ended": "call.ended",
    "call_failed": "call.failed",
    "call_transfer_requested": "call.transfer_requested",
    "call_transferred": "call.transferred",
    "room_ready": "room.ready",
    "agent_joined": "agent.joined",
    "transcript_turn": "transcript.turn",
    "tool_called": "tool.called",
    "usage_minute": "usage.minute",
}


def stream_configs(settings: Settings) -> list[StreamConfig]:
    """The events stream and its dead-letter stream (poison messages, kept for inspection)."""
    ev = settings.events
    return [
        StreamConfig(
            name=settings.nats_stream,
            subjects=[f"{SUBJECT_PREFIX}.>"],
            storage=StorageType.FILE,
            num_replicas=ev.replicas,
            duplicate_window=ev.duplicate_window_seconds,
            max_age=ev.max_age_days * 24 * 3600.0,
        ),
        StreamConfig(
            name=f"{settings.nats_stream}_DLQ",
            subjects=[f"{DEAD_LETTER_PREFIX}.>"],
            storage=StorageType.FILE,
            num_replicas=ev.replicas,
            max_age=30 * 24 * 3600.0,
        ),
    ]


async def connect_nats(settings: Settings, name: str, **options: object) -> NatsClient:
    """A NATS connection that reconnects forever (publishers and consumers outlive NATS restarts)."""
    defaults: dict[str, object] = {
        "name": name,
        "connect_timeout": 2,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 0.5,
    }
    defaults.update(options)
    return await nats.connect(settings.nats_url, **defaults)


class EventBus:
    """A JetStream connection with the platform's streams. Create with `EventBus.connect(settings)`.

    `publish` waits for the stream's ack; services publish through `EventPublisher`, which adds
    pipelining, retries, the disk spool and dead-lettering on top of this."""

    def __init__(self, nc: NatsClient, js: JetStreamContext, stream: str) -> None:
        self.nc = nc
        self.js = js
        self.stream = stream
        # Pipelined publishes: one reply subscription, acks matched to futures by a token.
        self._ack_prefix = ""
        self._acks: dict[str, asyncio.Future[PubAck]] = {}
        self._next_token = 0

    @classmethod
    async def connect(cls, settings: Settings, *, name: str = "voice", **options: object) -> EventBus:
        nc = await connect_nats(settings, name, **options)
        try:
            bus = cls(nc, nc.jetstream(timeout=settings.events.publish_timeout_seconds), settings.nats_stream)
            await bus.ensure_streams(settings)
        except BaseException:
            await nc.close()
            raise
        return bus

    async def ensure_streams(self, settings: Settings) -> None:
        """Creates the streams if missing (idempotent; keeps an existing stream's settings)."""
        for config in stream_configs(settings):
            assert config.name is not None
            try:
                await self.js.stream_info(config.name)
            except nats.js.errors.NotFoundError:
                try:
                    await self.js.add_stream(config)
                except nats.js.errors.BadRequestError:
                    # Created meanwhile by another process (err 10058 "stream name already in use").
                    await self.js.stream_info(config.name)

    async def publish(self, event: events_pb2.Event, *, ack_timeout_s: float | None = None) -> PubAck:
        """Publishes and waits for JetStream's ack: once this returns, the event is stored."""
        if not event.event_id or not event.type:
            raise ValueError("event_id and type are required")
        return await self.js.publish(
            subject_for(event.tenant_id, event.call_id, event.type),
            event.SerializeToString(),
            timeout=ack_timeout_s,
            headers={"Nats-Msg-Id": event.event_id},
        )

    async def publish_pipelined(
        self, items: list[tuple[str, bytes, str]], ack_timeout_s: float
    ) -> list[PubAck | BaseException]:
        """Publishes (subject, data, msg id) items without waiting between them, then collects their acks
        (a result per item, in order: the PubAck, or the error or timeout). The messages leave in one
        write instead of one per message, which is what makes a backlog fast."""
        if not self._ack_prefix:
            self._ack_prefix = self.nc.new_inbox()
            await self.nc.subscribe(f"{self._ack_prefix}.*", cb=self._on_ack)
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[PubAck]] = []
        results: dict[int, BaseException] = {}
        for i, (subject, data, msg_id) in enumerate(items):
            self._next_token += 1
            token = str(self._next_token)
            future: asyncio.Future[PubAck] = loop.create_future()
            futures.append(future)
            try:
                await self.nc.publish(
                    subject, data, reply=f"{self._ack_prefix}.{token}", headers={"Nats-Msg-Id": msg_id}
                )
            except Exception as exc:
                future.cancel()
                results[i] = exc
                continue
            self._acks[token] = future
            future.add_done_callback(lambda _, t=token: self._acks.pop(t, None))  # type: ignore[misc]
        waiting = [f for f in futures if not f.done()]
        if waiting:
            _done, late = await asyncio.wait(waiting, timeout=ack_timeout_s)
            for future in late:
                future.cancel()
        out: list[PubAck | BaseException] = []
        for i, future in enumerate(futures):
            if i in results:
                out.append(results[i])
            elif future.cancelled():
                out.append(TimeoutError("no ack within the publish timeout"))
            elif (error := future.exception()) is not None:
                out.append(error)
            else:
                out.append(future.result())
        return out

    async def _on_ack(self, msg: Msg) -> None:
        future = self._acks.get(msg.subject.rsplit(".", 1)[-1])
        if future is None or future.done():
            return
        if msg.headers and msg.headers.get("Status") == "503":
            future.set_exception(nats.js.errors.NoStreamResponseError())
            return
        try:
            reply = json.loads(msg.data)
        except ValueError as exc:
            future.set_exception(exc)
            return
        if "error" in reply:
            future.set_exception(nats.js.errors.APIError.from_error(reply["error"]))
        else:
            future.set_result(PubAck.from_response(reply))

    async def close(self, *, drain: bool = True) -> None:
        """Drains (lets in-flight publishes and handlers finish) unless `drain=False`: consumers that
        stopped their subscriptions themselves just close."""
        if self.nc.is_closed:
            return
        if not drain:
            await self.nc.close()
            return
        try:
            await asyncio.wait_for(self.nc.drain(), 5.0)
        except Exception:
            await self.nc.close()
