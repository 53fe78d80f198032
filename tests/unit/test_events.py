from __future__ import annotations

import pytest

from services.shared.events import EVENT_TYPES, new_event, subject_for
from voice.v1 import events_pb2


def test_every_catalog_event_has_a_payload_case() -> None:
    cases = {field.name for field in events_pb2.Event.DESCRIPTOR.oneofs_by_name["payload"].fields}
    assert cases == set(EVENT_TYPES)
    assert sorted(EVENT_TYPES.values()) == sorted(
        [
            "call.ringing", "call.connected", "call.ended", "call.failed", "call.transfer_requested",
            "call.transferred", "room.ready", "agent.joined", "transcript.turn", "tool.called",
            "usage.minute",
        ]
    )  # fmt: skip


def test_new_event_sets_type_from_payload() -> None:
    event = new_event("t_1", "c_1", "test", call_ended=events_pb2.CallEnded(end_reason="caller_hangup"))
    assert event.type == "call.ended"
    assert event.WhichOneof("payload") == "call_ended"
    assert event.event_id and event.time.seconds > 0


def test_new_event_requires_exactly_one_payload() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        new_event("t_1", "c_1", "test")


def test_subjects_are_namespaced_by_tenant_and_call() -> None:
    assert subject_for("t_1", "c_1", "call.ended") == "voice.t_1.c_1.call.ended"


@pytest.mark.parametrize("tenant", ["", "a.b", "a*", "a>", "a b"])
def test_subject_rejects_tokens_that_would_escape_the_namespace(tenant: str) -> None:
    with pytest.raises(ValueError, match="tenant_id"):
        subject_for(tenant, "c_1", "call.ended")
