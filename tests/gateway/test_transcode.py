"""The transcoder on its own: path templates, query parameters, body binding, PATCH masks, errors."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped]

from gateway.routes import Router, TemplateError, load_routes, parse_template
from gateway.transcode import TranscodeError, build_request, parse_grpc_timeout, rpc_error_body
from voice.v1 import agents_pb2, api_keys_pb2, calls_pb2, common_pb2, usage_pb2

ROUTER = Router(load_routes(["voice.v1.TtsService"]))


def test_templates() -> None:
    t = parse_template("/v1/{name=tenants/*/agents/*}:publish")
    assert t.verb == "publish" and t.variables[0].field_path == ("name",) and t.variables[0].multi
    assert t.match("/v1/tenants/t1/agents/a1:publish") is not None
    assert t.match("/v1/tenants/t1/agents/a1") is None
    deep = parse_template("/files/{path=**}")
    found = deep.match("/files/a/b/c.txt")
    assert found is not None and list(found.values()) == ["a/b/c.txt"]
    nested = parse_template("/v1/agents/{agent.id}")
    assert nested.variables[0].field_path == ("agent", "id")
    for bad in ["v1/x", "/v1/{x", "/v1/x}", "/v1/{a=b{c}}"]:
        with pytest.raises(TemplateError):
            parse_template(bad)


def test_routing_prefers_verbs_and_reports_allowed_methods() -> None:
    matched = ROUTER.match("POST", "/v1/api-keys/k1:revoke")
    assert matched is not None and matched[0].method.name == "RevokeApiKey"
    matched = ROUTER.match("GET", "/v1/api-keys/k1")
    assert matched is not None and matched[0].method.name == "GetApiKey"
    assert ROUTER.match("PATCH", "/v1/agents/a1") is not None  # additional_bindings
    assert ROUTER.allowed_methods("/v1/agents/a1") == ["DELETE", "GET", "PATCH", "PUT"]


def _request(method: str, path: str, query: str = "", body: bytes = b"") -> object:
    matched = ROUTER.match(method, path)
    assert matched is not None
    return build_request(matched[0], matched[1], query, body, method)


def test_query_parameters_map_to_fields() -> None:
    req = _request(
        "GET",
        "/v1/calls",
        "pageSize=5&status=CALL_STATUS_CONNECTED&direction=2&start_time=2026-01-01T00:00:00Z&agent_id=a%2Fb",
    )
    assert isinstance(req, calls_pb2.ListCallsRequest)
    assert req.page_size == 5 and req.status == common_pb2.CALL_STATUS_CONNECTED
    assert req.direction == common_pb2.CALL_DIRECTION_OUTBOUND and req.agent_id == "a/b"
    assert req.start_time.seconds == 1767225600
    usage = _request("GET", "/v1/usage", "granularity=USAGE_GRANULARITY_MONTH")
    assert (
        isinstance(usage, usage_pb2.GetUsageRequest)
        and usage.granularity == usage_pb2.USAGE_GRANULARITY_MONTH
    )
    for query in ["nope=1", "page_size=1&page_size=2", "page_size=x", "status=BOGUS"]:
        with pytest.raises(TranscodeError):
            _request("GET", "/v1/calls", query)


def test_path_variables_override_body_and_are_decoded() -> None:
    req = _request("PATCH", "/v1/agents/a%2F1", body=b'{"id": "x", "name": "N"}')
    assert isinstance(req, agents_pb2.UpdateAgentRequest)
    assert req.agent.id == "a/1" and req.agent.name == "N"


def test_patch_mask_comes_from_the_body() -> None:
    req = _request("PATCH", "/v1/agents/a1", body=b'{"greeting": "hi", "llm": {"model": "m"}, "tools": []}')
    assert isinstance(req, agents_pb2.UpdateAgentRequest)
    assert sorted(req.update_mask.paths) == ["greeting", "llm.model", "tools"]
    put = _request("PUT", "/v1/agents/a1", body=b'{"greeting": "hi"}')
    assert isinstance(put, agents_pb2.UpdateAgentRequest) and list(put.update_mask.paths) == []
    explicit = _request("PATCH", "/v1/agents/a1", "update_mask=name", b'{"greeting": "hi"}')
    assert isinstance(explicit, agents_pb2.UpdateAgentRequest) and list(explicit.update_mask.paths) == [
        "name"
    ]


def test_body_star_and_int64_strings() -> None:
    req = _request("POST", "/v1/api-keys/k1:revoke", body=b"{}")
    assert isinstance(req, api_keys_pb2.RevokeApiKeyRequest) and req.id == "k1"
    with pytest.raises(TranscodeError):
        _request("POST", "/v1/api-keys", body=b'{"name": "x", "extra": 1}')


def test_grpc_timeout_parsing() -> None:
    assert parse_grpc_timeout("10S") == 10.0
    assert parse_grpc_timeout("250m") == 0.25
    assert parse_grpc_timeout("2M") == 120.0
    assert parse_grpc_timeout("1X") is None and parse_grpc_timeout("123456789S") is None


class _FakeError(grpc.aio.AioRpcError):
    def __init__(self, code: grpc.StatusCode, trailing: tuple[tuple[str, bytes], ...]) -> None:
        super().__init__(code, grpc.aio.Metadata(), grpc.aio.Metadata(*trailing), details="boom")


@pytest.mark.parametrize(
    ("code", "http"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, 400),
        (grpc.StatusCode.UNAUTHENTICATED, 401),
        (grpc.StatusCode.PERMISSION_DENIED, 403),
        (grpc.StatusCode.NOT_FOUND, 404),
        (grpc.StatusCode.ALREADY_EXISTS, 409),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, 429),
        (grpc.StatusCode.FAILED_PRECONDITION, 400),
        (grpc.StatusCode.UNIMPLEMENTED, 501),
        (grpc.StatusCode.UNAVAILABLE, 503),
        (grpc.StatusCode.DEADLINE_EXCEEDED, 504),
        (grpc.StatusCode.INTERNAL, 500),
    ],
)
def test_error_mapping_keeps_details(code: grpc.StatusCode, http: int) -> None:
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.ErrorInfo(reason="WHY", domain="d"))
    status = status_pb2.Status(code=code.value[0], message="boom", details=[detail])
    got_http, body = rpc_error_body(
        _FakeError(code, (("grpc-status-details-bin", status.SerializeToString()),))
    )
    assert got_http == http
    assert body == {
        "code": code.value[0],
        "message": "boom",
        "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "WHY", "domain": "d"}],
    }
