"""The event bus: platform events as `voice.v1.Event` protobufs on NATS JetStream.

Subjects are `voice.<tenant_id>.<event type>` (e.g. `voice.t_1.call.ended`), all captured by one
stream. Each event's `event_id` is sent as the `Nats-Msg-Id` header, so JetStream drops a duplicate
published inside the stream's duplicate window (a retry after a lost ack never doubles an event).
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime

import nats
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.api import PubAck, StreamConfig

from services.shared.settings import Settings
from voice.v1 import events_pb2

SUBJECT_PREFIX = "voice"
_TOKEN = re.compile(r"^[A-Za-z0-9_-]+$")
DUPLICATE_WINDOW_SECONDS = 120.0


def subject_for(tenant_id: str, event_type: str) -> str:
    """`voice.<tenant>.<type>`; rejects ids that would break the subject hierarchy."""
    if not _TOKEN.match(tenant_id):
        raise ValueError(f"tenant_id {tenant_id!r} is not a valid subject token ([A-Za-z0-9_-]+)")
    if not all(_TOKEN.match(part) for part in event_type.split(".")):
        raise ValueError(f"event type {event_type!r} is not a dotted name")
    return f"{SUBJECT_PREFIX}.{tenant_id}.{event_type}"


def new_event(tenant_id: str, call_id: str, source: str, **payload: object) -> events_pb2.Event:
    """Builds an Event with a fresh id and time. `payload` is exactly one oneof case, e.g.
    `call_ended=events_pb2.CallEnded(...)`; the type name follows from the case (call.ended)."""
    if len(payload) != 1:
        raise ValueError("exactly one payload is required")
    ((case, message),) = payload.items()
    event = events_pb2.Event(event_id=str(uuid.uuid4()), tenant_id=tenant_id, call_id=call_id, source=source)
    event.time.FromDatetime(datetime.now(UTC))
    getattr(event, case).CopyFrom(message)
    event.type = EVENT_TYPES[case]
    return event


# oneof case -> catalog name (spec 5.3). transcript_turn's message is TranscriptTurnEvent.
EVENT_TYPES: dict[str, str] = {
    "call_ringing": "call.ringing",
    "call_connected": "call.connected",
    "call_ended": "call.ended",
    "call_transfer_requested": "call.transfer_requested",
    "call_transferred": "call.transferred",
    "room_ready": "room.ready",
    "agent_joined": "agent.joined",
    "transcript_turn": "transcript.turn",
    "tool_called": "tool.called",
    "usage_minute": "usage.minute",
}


class EventBus:
    """Publishes and stores events on JetStream. Create with `EventBus.connect(settings)`."""

    def __init__(self, nc: NatsClient, js: JetStreamContext, stream: str) -> None:
        self.nc = nc
        self.js = js
        self.stream = stream

    @classmethod
    async def connect(cls, settings: Settings, *, name: str = "voice") -> EventBus:
        nc = await nats.connect(settings.nats_url, name=name, connect_timeout=5, max_reconnect_attempts=-1)
        js = nc.jetstream()
        bus = cls(nc, js, settings.nats_stream)
        await bus.ensure_stream()
        return bus

    async def ensure_stream(self) -> None:
        """Creates the events stream if missing (idempotent; keeps an existing stream's settings)."""
        config = StreamConfig(
            name=self.stream,
            subjects=[f"{SUBJECT_PREFIX}.>"],
            duplicate_window=DUPLICATE_WINDOW_SECONDS,
            max_age=7 * 24 * 3600.0,
        )
        try:
            await self.js.stream_info(self.stream)
        except nats.js.errors.NotFoundError:
            await self.js.add_stream(config)

    async def publish(self, event: events_pb2.Event) -> PubAck:
        """Publishes and waits for JetStream's ack: once this returns, the event is stored."""
        if not event.event_id or not event.type:
            raise ValueError("event_id and type are required")
        return await self.js.publish(
            subject_for(event.tenant_id, event.type),
            event.SerializeToString(),
            headers={"Nats-Msg-Id": event.event_id},
        )

    async def close(self) -> None:
        await self.nc.drain()
