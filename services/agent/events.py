"""The agent's call events on NATS JetStream (spec 5.3): agent.joined, transcript.turn, tool.called,
call.transfer_requested, usage.minute, and call.ended when its Converse stream ends.

The service publishes through `services.shared.events_publisher.EventPublisher` (never blocks a call,
acked, spooled to disk while NATS is away); sessions only see this narrow sink.
"""

from __future__ import annotations

from typing import Protocol

from google.protobuf.message import Message

from voice.v1 import events_pb2


class CallEventSink(Protocol):
    def emit(self, tenant_id: str, call_id: str, **payload: Message) -> None:
        """Queues one event; `payload` is one case of voice.v1.Event's payload, e.g. usage_minute=..."""
        ...

    def publish(self, event: events_pb2.Event) -> None:
        """Queues a built event (one with a stable id, like call.ended)."""
        ...


class NullEventSink:
    """For embedded use without a bus (benchmarks, unit tests of the pipeline)."""

    source = "agent"

    def emit(self, tenant_id: str, call_id: str, **payload: Message) -> None:
        return None

    def publish(self, event: events_pb2.Event) -> None:
        return None
