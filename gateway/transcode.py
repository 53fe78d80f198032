"""HTTP/JSON <-> protobuf for one route, following grpc-gateway v2 and the proto3 JSON mapping.

Request: the body goes to the field named by `body` (or the whole message for "*"), path variables
override it, and every other field may come from the query string (`?page_size=10&status=...`,
nested as `a.b`, repeated by repetition). On PATCH with a field body and no explicit `update_mask`, the
mask is the set of fields present in the JSON body. Unknown fields anywhere are INVALID_ARGUMENT.
Response: proto3 JSON (lowerCamelCase names, int64 as strings, enums as names, unpopulated fields
emitted), or the `response_body` field alone. Errors: google.rpc.Status as JSON, details kept.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import parse_qsl, unquote

import grpc
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError, Message
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped]  # noqa: F401  (registers detail types)

from gateway.routes import PathVariable, Route
from services.control.common import repeated

# grpc-gateway v2 runtime.HTTPStatusFromCode.
HTTP_STATUS = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
}
STATUS_DETAILS_KEY = "grpc-status-details-bin"
HTTP_CODE_KEY = "x-http-code"
_WKT_SCALARS = frozenset(
    {
        "google.protobuf.Timestamp",
        "google.protobuf.Duration",
        "google.protobuf.FieldMask",
        "google.protobuf.StringValue",
        "google.protobuf.BytesValue",
        "google.protobuf.BoolValue",
        "google.protobuf.Int32Value",
        "google.protobuf.Int64Value",
        "google.protobuf.UInt32Value",
        "google.protobuf.UInt64Value",
        "google.protobuf.FloatValue",
        "google.protobuf.DoubleValue",
    }
)
_MAP_LIKE = frozenset({"google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue"})
_GRPC_TIMEOUT = re.compile(r"^(\d{1,8})([HMSmun])$")
_TIMEOUT_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}


class TranscodeError(Exception):
    """The HTTP request cannot become a gRPC request: answered as INVALID_ARGUMENT (400)."""

    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.field = field


def error_body(code: grpc.StatusCode, message: str, details: list[Any] | None = None) -> dict[str, Any]:
    return {"code": code.value[0], "message": message, "details": details or []}


def bad_request_body(err: TranscodeError) -> dict[str, Any]:
    violation = {
        "@type": "type.googleapis.com/google.rpc.BadRequest",
        "fieldViolations": [{"field": err.field, "description": err.message}],
    }
    return error_body(grpc.StatusCode.INVALID_ARGUMENT, err.message, [violation] if err.field else [])


def rpc_error_body(exc: grpc.aio.AioRpcError) -> tuple[int, dict[str, Any]]:
    """HTTP status and google.rpc.Status JSON of a failed RPC, with the server's details."""
    code = exc.code()
    message = exc.details() or ""
    details: list[Any] = []
    for key, value in exc.trailing_metadata() or ():
        if key == STATUS_DETAILS_KEY and isinstance(value, bytes):
            try:
                status = status_pb2.Status.FromString(value)
                details = json_format.MessageToDict(status)["details"] if status.details else []
            except (DecodeError, json_format.Error, KeyError, TypeError):
                details = []
    return HTTP_STATUS.get(code, 500), error_body(code, message, details)


# How deep a JSON body may nest (messages and JSON values together). Each JSON level of a Struct field
# costs protobuf two message levels, and the wire decoder stops at 100: 32 stays well inside it.
MAX_JSON_DEPTH = 32
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_JSON_BRACKET = re.compile(rb"[\[\]{}]")


def json_depth(body: bytes) -> int:
    """The deepest nesting of arrays/objects in `body` (brackets inside strings do not count), found
    without parsing, so a hostile body is refused before any recursive code sees it."""
    depth = deepest = 0
    for m in _JSON_BRACKET.finditer(_JSON_STRING.sub(b"", body)):
        if m.group() in (b"[", b"{"):
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def parse_grpc_timeout(value: str) -> float | None:
    m = _GRPC_TIMEOUT.match(value.strip())
    if m is None:
        return None
    return int(m.group(1)) * _TIMEOUT_UNITS[m.group(2)]


def json_name(f: FieldDescriptor) -> str:
    # The stubs lack FieldDescriptor.json_name; the runtime always has it.
    return str(getattr(f, "json_name"))  # noqa: B009


def _field(desc: Descriptor, name: str) -> FieldDescriptor | None:
    found: FieldDescriptor | None = desc.fields_by_name.get(name)
    if found is not None:
        return found
    field: FieldDescriptor
    for field in desc.fields:
        if json_name(field) == name:
            return field
    return None


def _query_leaf(f: FieldDescriptor) -> bool:
    if f.type != FieldDescriptor.TYPE_MESSAGE:
        return True
    return f.message_type.full_name in _WKT_SCALARS


def _query_value(f: FieldDescriptor, raw: str, name: str) -> Any:
    if f.type == FieldDescriptor.TYPE_BOOL:
        lowered = raw.lower()
        if lowered in ("true", "1"):
            return True
        if lowered in ("false", "0"):
            return False
        raise TranscodeError(f"invalid boolean {raw!r}", name)
    if f.type == FieldDescriptor.TYPE_MESSAGE and f.message_type.full_name == "google.protobuf.BoolValue":
        return raw.lower() in ("true", "1")
    return raw


def _query_dict(route: Route, query: str) -> dict[str, Any]:
    """Query parameters as a proto3-JSON dict for the request message (fields not bound elsewhere)."""
    out: dict[str, Any] = {}
    desc = route.method.input_type
    for key, raw in parse_qsl(query, keep_blank_values=True, max_num_fields=200):
        parts = key.split(".")
        target, current_desc = out, desc
        for i, part in enumerate(parts):
            f = _field(current_desc, part)
            if f is None or (i == 0 and (f.name in route.path_fields or f.name == route.body)):
                raise TranscodeError(f"unknown query parameter {key!r}", key)
            last = i == len(parts) - 1
            if last:
                if not _query_leaf(f) or (
                    f.message_type is not None and f.message_type.GetOptions().map_entry
                ):
                    raise TranscodeError(f"query parameter {key!r} is not a scalar field", key)
                value = _query_value(f, raw, key)
                if repeated(f):
                    target.setdefault(json_name(f), []).append(value)
                elif json_name(f) in target:
                    raise TranscodeError(f"query parameter {key!r} repeated", key)
                else:
                    target[json_name(f)] = value
            else:
                if f.type != FieldDescriptor.TYPE_MESSAGE or repeated(f):
                    raise TranscodeError(f"unknown query parameter {key!r}", key)
                nested = target.setdefault(json_name(f), {})
                if not isinstance(nested, dict):
                    raise TranscodeError(f"query parameter {key!r} conflicts with another", key)
                target, current_desc = nested, f.message_type
    return out


def _mask_paths(desc: Descriptor, body: dict[str, Any], prefix: str = "") -> list[str]:
    """Field paths present in a JSON object (grpc-gateway's FieldMaskFromRequestBody)."""
    paths = []
    for key, value in body.items():
        f = _field(desc, key)
        if f is None:
            continue  # ParseDict reports unknown fields with a better message
        path = f"{prefix}{f.name}"
        nested = (
            f.type == FieldDescriptor.TYPE_MESSAGE
            and not repeated(f)
            and not f.message_type.GetOptions().map_entry
            and f.message_type.full_name not in _WKT_SCALARS | _MAP_LIKE
            and isinstance(value, dict)
            and value
        )
        if nested:
            paths.extend(_mask_paths(f.message_type, value, f"{path}."))
        else:
            paths.append(path)
    return paths


def _parse_into(data: dict[str, Any], message: Message, where: str) -> None:
    try:
        json_format.ParseDict(data, message, ignore_unknown_fields=False, max_recursion_depth=MAX_JSON_DEPTH)
    except json_format.ParseError as exc:
        raise TranscodeError(f"invalid {where}: {exc}") from None
    except (ValueError, TypeError, OverflowError, RecursionError, UnicodeError) as exc:
        raise TranscodeError(f"invalid {where}: {type(exc).__name__}") from None


def build_request(
    route: Route, path_values: dict[PathVariable, str], query: str, body: bytes, http_method: str
) -> Message:
    """The gRPC request message of an HTTP request; TranscodeError when it is malformed."""
    request = route.request_class()
    body_obj: Any = None
    if route.body:
        if body.strip():
            if json_depth(body) > MAX_JSON_DEPTH:
                raise TranscodeError(f"JSON body nested too deeply (at most {MAX_JSON_DEPTH} levels)")
            try:
                body_obj = json.loads(body)
            except (ValueError, UnicodeDecodeError) as exc:
                raise TranscodeError(f"malformed JSON body: {exc}") from None
            if body_obj is None:
                raise TranscodeError("the body must be a JSON object, not null")
        if route.body == "*":
            if body_obj is None:
                body_obj = {}  # no body at all: an empty request (POST /v1/api-keys/{id}:revoke)
            if not isinstance(body_obj, dict):
                raise TranscodeError("the body must be a JSON object")
            _parse_into(body_obj, request, "body")
        elif body_obj is not None:
            f = route.method.input_type.fields_by_name[route.body]
            if (
                f.type == FieldDescriptor.TYPE_MESSAGE
                and not isinstance(body_obj, dict)
                and not _query_leaf(f)
            ):
                raise TranscodeError("the body must be a JSON object")
            _parse_into({json_name(f): body_obj}, request, "body")
    elif body.strip():
        raise TranscodeError("this method takes no request body")

    if path_values:
        path_dict: dict[str, Any] = {}
        for var, raw in path_values.items():
            # One segment may carry an encoded '/'; a multi-segment variable keeps its '/' separators.
            value = unquote(raw) if not var.multi else "/".join(unquote(s) for s in raw.split("/"))
            target, desc = path_dict, route.method.input_type
            for part in var.field_path[:-1]:
                f = desc.fields_by_name[part]
                target = target.setdefault(json_name(f), {})
                desc = f.message_type
            target[json_name(desc.fields_by_name[var.field_path[-1]])] = value
        overlay = route.request_class()
        _parse_into(path_dict, overlay, "path")
        request.MergeFrom(overlay)

    if query and route.body != "*":
        query_dict = _query_dict(route, query)
        if query_dict:
            overlay = route.request_class()
            _parse_into(query_dict, overlay, "query parameters")
            request.MergeFrom(overlay)

    if (
        http_method == "PATCH"
        and route.body not in ("", "*")
        and isinstance(body_obj, dict)
        and "update_mask" in route.method.input_type.fields_by_name
    ):
        mask_field = route.method.input_type.fields_by_name["update_mask"]
        if mask_field.message_type.full_name == "google.protobuf.FieldMask" and not request.HasField(
            "update_mask"
        ):
            body_desc = route.method.input_type.fields_by_name[route.body].message_type
            mask: Any = request.__getattribute__("update_mask")  # a field of this route's request type
            mask.paths.extend(_mask_paths(body_desc, body_obj))
    return request


def response_dict(route: Route, message: Message) -> Any:
    data = json_format.MessageToDict(message, always_print_fields_with_no_presence=True)
    if route.response_body:
        return data.get(json_name(route.method.output_type.fields_by_name[route.response_body]))
    return data


def dumps(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()
