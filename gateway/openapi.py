"""OpenAPI 3.1 document of the REST surface, generated from the same routes (proto annotations) and
message descriptors the transcoder uses, so the document and the behaviour cannot drift apart.

Schemas follow the proto3 JSON mapping: lowerCamelCase properties, 64-bit integers as strings, enums
as their names, well-known types as their JSON forms; OUTPUT_ONLY fields are readOnly, REQUIRED
fields are required; unknown properties are refused (additionalProperties: false), as the gateway does.
"""

from __future__ import annotations

from typing import Any

from google.api import field_behavior_pb2
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor

from gateway.routes import PathTemplate, PathVariable, Route
from services.control.common import repeated

VERSION = "0.1.0"
_INT32 = {FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SFIXED32}
_UINT32 = {FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32}
_INT64 = {
    FieldDescriptor.TYPE_INT64,
    FieldDescriptor.TYPE_SINT64,
    FieldDescriptor.TYPE_SFIXED64,
    FieldDescriptor.TYPE_UINT64,
    FieldDescriptor.TYPE_FIXED64,
}
_WKT: dict[str, dict[str, Any]] = {
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    "google.protobuf.Duration": {"type": "string", "pattern": r"^-?[0-9]+(\.[0-9]{1,9})?s$"},
    "google.protobuf.FieldMask": {"type": "string"},
    "google.protobuf.Struct": {"type": "object", "additionalProperties": True},
    "google.protobuf.Value": {},
    "google.protobuf.ListValue": {"type": "array", "items": {}},
    "google.protobuf.Empty": {"type": "object", "additionalProperties": False},
    "google.protobuf.Any": {"type": "object", "properties": {"@type": {"type": "string"}}},
    "google.protobuf.StringValue": {"type": "string"},
    "google.protobuf.BoolValue": {"type": "boolean"},
    "google.protobuf.BytesValue": {"type": "string", "format": "byte"},
    "google.protobuf.Int32Value": {"type": "integer", "format": "int32"},
    "google.protobuf.UInt32Value": {"type": "integer", "format": "int64", "minimum": 0},
    "google.protobuf.Int64Value": {"type": "string", "format": "int64"},
    "google.protobuf.UInt64Value": {"type": "string", "format": "uint64"},
    "google.protobuf.FloatValue": {"type": "number", "format": "float"},
    "google.protobuf.DoubleValue": {"type": "number", "format": "double"},
}
_STATUS_SCHEMA = {
    "type": "object",
    "description": "google.rpc.Status: the gRPC code, a message, and typed details.",
    "properties": {
        "code": {"type": "integer", "format": "int32"},
        "message": {"type": "string"},
        "details": {"type": "array", "items": {"$ref": "#/components/schemas/google.protobuf.Any"}},
    },
}


_E164 = r"^\+[1-9][0-9]{6,14}$"
# The server's own checks (services/control/*.py, common.py), declared so that clients and schema-based
# testers send what the server accepts: field full name -> JSON Schema keywords added to the field.
_CONSTRAINTS: dict[str, dict[str, Any]] = {
    "voice.v1.PhoneNumber.e164": {"pattern": _E164},
    "voice.v1.CreateCallRequest.to_number": {"pattern": _E164},
    "voice.v1.CreateCallRequest.from_number": {"pattern": r"^(\+[1-9][0-9]{6,14})?$"},
    "voice.v1.Agent.name": {"minLength": 1, "maxLength": 255, "pattern": r"\S"},
    "voice.v1.Agent.metadata": {"maxProperties": 64},
    "voice.v1.Agent.tools": {"maxItems": 64},
    "voice.v1.ToolDefinition.name": {"pattern": r"^[a-zA-Z0-9_-]{1,64}$"},
    "voice.v1.ToolDefinition.timeout_ms": {"maximum": 60000},
    "voice.v1.Tenant.name": {"minLength": 1, "maxLength": 255, "pattern": r"\S"},
    "voice.v1.Tenant.max_concurrent_calls": {"maximum": 10000},
    "voice.v1.CreateApiKeyRequest.name": {"minLength": 1, "maxLength": 255, "pattern": r"\S"},
    "voice.v1.PhoneNumber.label": {"maxLength": 255},
    "voice.v1.Webhook.url": {"maxLength": 2048, "pattern": r"^https://"},
}


def _constraints(f: FieldDescriptor) -> dict[str, Any]:
    if f.name == "page_size":
        return {"minimum": 0}
    return _CONSTRAINTS.get(f.full_name, {})


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _behaviors(f: FieldDescriptor) -> set[int]:
    options = f.GetOptions()
    return set(options.Extensions[field_behavior_pb2.field_behavior]) if options else set()


class _Schemas:
    def __init__(self) -> None:
        self.components: dict[str, Any] = {"google.rpc.Status": _STATUS_SCHEMA}

    def enum(self, e: EnumDescriptor) -> dict[str, Any]:
        if e.full_name not in self.components:
            self.components[e.full_name] = {"type": "string", "enum": [v.name for v in e.values]}
        return _ref(e.full_name)

    def scalar(self, f: FieldDescriptor) -> dict[str, Any]:
        t = f.type
        if t == FieldDescriptor.TYPE_ENUM:
            return self.enum(f.enum_type)
        if t == FieldDescriptor.TYPE_MESSAGE:
            return self.message(f.message_type)
        if t in _INT32:
            return {"type": "integer", "format": "int32", "minimum": -(2**31), "maximum": 2**31 - 1}
        if t in _UINT32:
            return {"type": "integer", "format": "int64", "minimum": 0, "maximum": 2**32 - 1}
        if t in _INT64:
            return {"type": "string", "format": "int64", "pattern": r"^-?[0-9]{1,19}$"}
        if t == FieldDescriptor.TYPE_BOOL:
            return {"type": "boolean"}
        if t == FieldDescriptor.TYPE_FLOAT:
            return {"type": "number", "format": "float", "minimum": -3.4e38, "maximum": 3.4e38}
        if t == FieldDescriptor.TYPE_DOUBLE:
            return {"type": "number", "format": "double"}
        if t == FieldDescriptor.TYPE_BYTES:
            return {"type": "string", "format": "byte"}
        return {"type": "string"}

    def field(self, f: FieldDescriptor) -> dict[str, Any]:
        if f.message_type is not None and f.message_type.GetOptions().map_entry:
            value = f.message_type.fields_by_name["value"]
            return {"type": "object", "additionalProperties": self.scalar(value), **_constraints(f)}
        schema = self.scalar(f)
        if repeated(f):
            schema = {"type": "array", "items": schema}
        extra = _constraints(f)
        if extra:
            schema = {"allOf": [schema], **extra} if "$ref" in schema else {**schema, **extra}
        if field_behavior_pb2.OUTPUT_ONLY in _behaviors(f):
            schema = (
                {"allOf": [schema], "readOnly": True} if "$ref" in schema else {**schema, "readOnly": True}
            )
        return schema

    def message(
        self, d: Descriptor, *, skip: frozenset[str] = frozenset(), name: str | None = None
    ) -> dict[str, Any]:
        if d.full_name in _WKT:
            if d.full_name in ("google.protobuf.Any",):
                self.components.setdefault(d.full_name, _WKT[d.full_name])
                return _ref(d.full_name)
            return dict(_WKT[d.full_name])
        key = name or d.full_name
        if key in self.components:
            return _ref(key)
        self.components[key] = {}  # placeholder: recursive messages refer to themselves
        properties: dict[str, Any] = {}
        required: list[str] = []
        for f in d.fields:
            if f.name in skip:
                continue
            properties[f.json_name] = self.field(f)
            if field_behavior_pb2.REQUIRED in _behaviors(f):
                required.append(f.json_name)
        schema: dict[str, Any] = {"type": "object", "properties": properties, "additionalProperties": False}
        if required:
            schema["required"] = required
        self.components[key] = schema
        return _ref(key)


def _query_parameters(schemas: _Schemas, d: Descriptor, skip: frozenset[str], prefix: str = "") -> list[Any]:
    params = []
    for f in d.fields:
        if f.name in skip:
            continue
        name = f"{prefix}{f.name}"
        is_message = f.type == FieldDescriptor.TYPE_MESSAGE
        if is_message and f.message_type.full_name not in _WKT:
            if not repeated(f) and not f.message_type.GetOptions().map_entry:
                params.extend(_query_parameters(schemas, f.message_type, frozenset(), f"{name}."))
            continue
        if is_message and f.message_type.full_name in ("google.protobuf.Struct", "google.protobuf.Value"):
            continue
        schema = schemas.field(f)
        params.append(
            {
                "name": name,
                "in": "query",
                "required": False,
                "schema": schema,
                **({"explode": True, "style": "form"} if repeated(f) else {}),
            }
        )
    return params


def build_openapi(routes: list[Route]) -> dict[str, Any]:
    schemas = _Schemas()
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        template = route.template
        path = openapi_path(template)
        input_desc = route.method.input_type
        parameters: list[Any] = [
            {"name": _param_name(v), "in": "path", "required": True, "schema": {"type": "string"}}
            for v in template.variables
        ]
        operation: dict[str, Any] = {
            "operationId": f"{route.service.rsplit('.', 1)[-1]}_{route.method.name}"
            + (f"_{route.http_method.lower()}" if _is_additional(route, routes) else ""),
            "tags": [route.service.rsplit(".", 1)[-1]],
            "summary": route.method.name,
        }
        if route.body == "*":
            skip = frozenset(v.field_path[0] for v in template.variables if len(v.field_path) == 1)
            body_schema = schemas.message(
                input_desc, skip=skip, name=f"{input_desc.full_name}.Body" if skip else None
            )
            operation["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": body_schema}},
            }
        elif route.body:
            f = input_desc.fields_by_name[route.body]
            operation["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": schemas.field(f)}},
            }
        if route.body != "*":
            skip = frozenset({route.body, *(v.field_path[0] for v in template.variables)})
            parameters.extend(_query_parameters(schemas, input_desc, skip))
        if parameters:
            operation["parameters"] = parameters
        if route.response_body:
            ok_schema = schemas.field(route.method.output_type.fields_by_name[route.response_body])
        else:
            ok_schema = schemas.message(route.method.output_type)
        content_type = "application/x-ndjson" if route.server_streaming else "application/json"
        if route.method.output_type.full_name == "google.api.HttpBody":
            # The body is the payload itself (e.g. a recording's audio/wav), not a JSON document.
            content_type, ok_schema = "*/*", {"type": "string", "format": "binary"}
        operation["responses"] = {
            # 2XX: most RPCs answer 200; some (CreateCall) answer 202 through the x-http-code convention.
            "2XX": {"description": "Success", "content": {content_type: {"schema": ok_schema}}},
            "default": {
                "description": "Error (google.rpc.Status)",
                "content": {"application/json": {"schema": _ref("google.rpc.Status")}},
            },
        }
        if route.service != "voice.v1.SystemService":
            operation["security"] = [{"ApiKey": []}, {"Bearer": []}]
        paths.setdefault(path, {})[route.http_method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Voice by aiConnected API",
            "version": VERSION,
            "description": "REST surface of the voice.v1 protos (google.api.http annotations), "
            "transcoded to gRPC by the gateway. Authenticate with X-API-Key or a Bearer JWT.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas.components,
            "securitySchemes": {
                "ApiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                "Bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
            },
        },
    }


def _param_name(var: PathVariable) -> str:
    # `agent.id` would read as attribute access to tools that fill paths with str.format; the name is
    # only a label in OpenAPI, the template decides which field it sets.
    return "_".join(var.field_path)


def openapi_path(template: PathTemplate) -> str:
    """The template with each variable as a plain `{name}` (`{name=tenants/*}` -> `{name}`)."""
    out, depth, start = [], 0, 0
    variables = iter(template.variables)
    text = template.template
    for i, ch in enumerate(text):
        if ch == "{":
            if depth == 0:
                out.append(text[start:i])
                out.append("{" + _param_name(next(variables)) + "}")
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                start = i + 1
    out.append(text[start:])
    return "".join(out)


def _is_additional(route: Route, routes: list[Route]) -> bool:
    return sum(1 for r in routes if r.method is route.method) > 1
