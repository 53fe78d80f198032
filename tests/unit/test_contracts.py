"""The generated contracts import in the platform's single environment and cover the spec's tables."""

from __future__ import annotations

import importlib
import pkgutil

import google.protobuf
import grpc
import tritonclient.grpc.aio
from google.api import annotations_pb2

import voice.v1
from voice.v1 import agent_session_pb2, agents_pb2, media_pb2

# Spec 3.1.4 (API gateway) and 3.5.4 (TTS facade) routes, as (method, path template).
SPEC_ROUTES = {
    ("GET", "/v1/agents"), ("POST", "/v1/agents"),
    ("GET", "/v1/agents/{id}"), ("PUT", "/v1/agents/{agent.id}"), ("DELETE", "/v1/agents/{id}"),
    ("GET", "/v1/calls"), ("POST", "/v1/calls"), ("GET", "/v1/calls/{id}"),
    ("POST", "/v1/calls/{id}/transfer"),
    ("GET", "/v1/numbers"), ("POST", "/v1/numbers"),
    ("GET", "/v1/voices"), ("POST", "/v1/voices"),
    ("GET", "/v1/usage"),
    ("GET", "/v1/webhooks"), ("POST", "/v1/webhooks"),
    ("GET", "/health"),
    ("POST", "/synthesize"), ("POST", "/synthesize/stream"),
    ("GET", "/voices"), ("GET", "/voices/{voice_id}"),
}  # fmt: skip


def declared_routes() -> set[tuple[str, str]]:
    routes = set()
    for info in pkgutil.iter_modules(voice.v1.__path__):
        if not info.name.endswith("_pb2"):
            continue
        module = importlib.import_module(f"voice.v1.{info.name}")
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                rule = method.GetOptions().Extensions[annotations_pb2.http]
                bindings = [rule, *rule.additional_bindings]
                for binding in bindings:
                    kind = binding.WhichOneof("pattern")
                    if kind and kind != "custom":
                        routes.add((kind.upper(), getattr(binding, kind)))
    return routes


def test_every_spec_route_is_declared_in_a_proto() -> None:
    assert SPEC_ROUTES - declared_routes() == set()


def test_protobuf_and_grpc_versions_work_with_tritonclient() -> None:
    # tritonclient[grpc] needs protobuf < 7; our generated code must import under the same runtime.
    assert tritonclient.grpc.aio.InferenceServerClient is not None
    assert int(google.protobuf.__version__.split(".")[0]) < 7
    assert grpc.__version__.startswith("1.81.")


def test_audio_frame_round_trips() -> None:
    frame = media_pb2.AudioFrame(
        sequence_number=2**32 - 1, timestamp=2**40, sample_rate=16000,
        codec=media_pb2.AUDIO_CODEC_PCM16, channels=1, payload=b"\x00\x01" * 320,
    )  # fmt: skip
    request = agent_session_pb2.ConverseRequest(audio=frame)
    decoded = agent_session_pb2.ConverseRequest.FromString(request.SerializeToString())
    assert decoded.WhichOneof("event") == "audio"
    assert decoded.audio == frame


def test_agent_update_has_a_field_mask() -> None:
    fields = agents_pb2.UpdateAgentRequest.DESCRIPTOR.fields_by_name
    assert fields["update_mask"].message_type.full_name == "google.protobuf.FieldMask"
