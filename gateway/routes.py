"""The REST surface, read from the `google.api.http` annotations of the protos (like grpc-gateway).

Every annotated RPC of every `voice.v1` service becomes one route per binding (the main one and each of
`additional_bindings`). Nothing here names a service or a method: adding an annotated RPC to a proto
adds its route, its OpenAPI operation and its transcoding.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor, message_factory
from google.protobuf.message import Message

import voice.v1

HTTP_METHODS = ("get", "put", "post", "delete", "patch")


class TemplateError(ValueError):
    pass


@dataclass(frozen=True)
class PathVariable:
    """A `{field.path}` or `{field.path=segments}` of a path template; `multi` when it may span '/'."""

    field_path: tuple[str, ...]
    group: str
    multi: bool


@dataclass(frozen=True)
class PathTemplate:
    template: str
    regex: re.Pattern[str]
    variables: tuple[PathVariable, ...]
    literals: int
    verb: str

    def match(self, path: str) -> dict[PathVariable, str] | None:
        m = self.regex.match(path)
        if m is None:
            return None
        return {v: m.group(v.group) for v in self.variables}


def _split_segments(text: str) -> list[str]:
    """Splits on '/' outside braces: `v1/{name=tenants/*}/x` -> [v1, {name=tenants/*}, x]."""
    segments: list[str] = []
    current: list[str] = []
    depth = 0
    for ch in text:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth < 0:
                raise TemplateError(f"unbalanced '}}' in {text!r}")
        if ch == "/" and depth == 0:
            segments.append("".join(current))
            current = []
        else:
            current.append(ch)
    if depth:
        raise TemplateError(f"unbalanced '{{' in {text!r}")
    segments.append("".join(current))
    return segments


def _segment_regex(segment: str) -> tuple[str, bool]:
    if segment == "*":
        return r"[^/]+", False
    if segment == "**":
        return r".+", True
    if not segment or any(c in segment for c in "{}*="):
        raise TemplateError(f"bad path segment {segment!r}")
    return re.escape(segment), False


def parse_template(template: str) -> PathTemplate:
    """Compiles a google.api.http path template (`/v1/{name=tenants/*}/agents:verb`) to a matcher."""
    if not template.startswith("/"):
        raise TemplateError(f"template {template!r} must start with '/'")
    body, verb = template[1:], ""
    last_close, last_colon = body.rfind("}"), body.rfind(":")
    if last_colon > last_close and last_colon > body.rfind("/"):
        body, verb = body[:last_colon], body[last_colon + 1 :]
    parts: list[str] = []
    variables: list[PathVariable] = []
    literals = 0
    for segment in _split_segments(body):
        if segment.startswith("{"):
            if not segment.endswith("}"):
                raise TemplateError(f"bad variable {segment!r} in {template!r}")
            inner = segment[1:-1]
            name, _, sub = inner.partition("=")
            group = f"v{len(variables)}"
            sub_parts = _split_segments(sub) if sub else ["*"]
            regexes = [_segment_regex(s) for s in sub_parts]
            multi = len(sub_parts) > 1 or any(m for _, m in regexes)
            parts.append(f"(?P<{group}>{'/'.join(r for r, _ in regexes)})")
            variables.append(PathVariable(tuple(name.split(".")), group, multi))
            literals += sum(1 for s in sub_parts if s not in ("*", "**"))
        else:
            regex, _ = _segment_regex(segment)
            parts.append(regex)
            literals += 1
    pattern = "^/" + "/".join(parts) + (re.escape(":" + verb) if verb else "") + "$"
    return PathTemplate(template, re.compile(pattern), tuple(variables), literals, verb)


@dataclass(frozen=True)
class Route:
    http_method: str
    template: PathTemplate
    service: str  # full name, e.g. voice.v1.AgentService
    method: descriptor.MethodDescriptor
    body: str  # "", "*" or a top-level field name
    response_body: str
    request_class: type[Message]
    response_class: type[Message]
    server_streaming: bool
    path_fields: frozenset[str] = field(default=frozenset())

    @property
    def grpc_path(self) -> str:
        return f"/{self.service}/{self.method.name}"

    @property
    def mutating(self) -> bool:
        return self.http_method != "GET"

    @property
    def label(self) -> str:
        """Bounded-cardinality route name for metrics and logs."""
        return f"{self.http_method} {self.template.template}"


def _bindings(rule: Any) -> Iterator[tuple[str, str, str, str]]:
    """(method, template, body, response_body) of an HttpRule and its additional bindings."""
    for r in (rule, *rule.additional_bindings):
        kind = r.WhichOneof("pattern")
        if kind is None:
            continue
        if kind == "custom":
            yield r.custom.kind.upper(), r.custom.path, r.body, r.response_body
        else:
            yield kind.upper(), getattr(r, kind), r.body, r.response_body


def voice_modules() -> list[Any]:
    """Every generated `voice.v1.*_pb2` module (imported, so the descriptor pool knows its types)."""
    names = sorted(
        m.name
        for m in pkgutil.iter_modules(voice.v1.__path__)
        if m.name.endswith("_pb2") and not m.name.endswith("_grpc")
    )
    return [importlib.import_module(f"voice.v1.{n}") for n in names]


def _check_field_path(msg: descriptor.Descriptor, path: Iterable[str], where: str) -> None:
    current: descriptor.Descriptor | None = msg
    for part in path:
        if current is None or part not in current.fields_by_name:
            raise TemplateError(f"{where}: no field {'.'.join(path)!r} in {msg.full_name}")
        current = current.fields_by_name[part].message_type


def load_routes(excluded_services: Iterable[str] = ()) -> list[Route]:
    """Routes of all annotated RPCs, most specific first (more literal segments, verbs before none)."""
    excluded = set(excluded_services)
    routes: list[Route] = []
    for module in voice_modules():
        for service in module.DESCRIPTOR.services_by_name.values():
            if service.full_name in excluded:
                continue
            for method in service.methods:
                options = method.GetOptions()
                if not options.HasExtension(annotations_pb2.http):
                    continue
                rule: http_pb2.HttpRule = options.Extensions[annotations_pb2.http]
                for http_method, template_text, body, response_body in _bindings(rule):
                    where = f"{method.full_name} {http_method} {template_text}"
                    template = parse_template(template_text)
                    for var in template.variables:
                        _check_field_path(method.input_type, var.field_path, where)
                    if body not in ("", "*"):
                        _check_field_path(method.input_type, (body,), where)
                    if response_body:
                        _check_field_path(method.output_type, (response_body,), where)
                    routes.append(
                        Route(
                            http_method=http_method,
                            template=template,
                            service=service.full_name,
                            method=method,
                            body=body,
                            response_body=response_body,
                            request_class=message_factory.GetMessageClass(method.input_type),
                            response_class=message_factory.GetMessageClass(method.output_type),
                            server_streaming=method.server_streaming,
                            path_fields=frozenset(v.field_path[0] for v in template.variables),
                        )
                    )
    routes.sort(key=lambda r: (-r.template.literals, r.template.verb == "", len(r.template.variables)))
    return routes


class Router:
    """Finds the route of (method, path); knows when a path exists under other methods (405)."""

    def __init__(self, routes: list[Route]) -> None:
        self.routes = routes
        self._by_method: dict[str, list[Route]] = {}
        for route in routes:
            self._by_method.setdefault(route.http_method, []).append(route)

    def match(self, http_method: str, path: str) -> tuple[Route, dict[PathVariable, str]] | None:
        for route in self._by_method.get(http_method, ()):
            found = route.template.match(path)
            if found is not None:
                return route, found
        return None

    def allowed_methods(self, path: str) -> list[str]:
        return sorted({r.http_method for r in self.routes if r.template.match(path) is not None})
