"""Structured JSON logs with the fields of spec 13.3.

Call-scoped fields (trace_id, span_id, tenant_id, call_id) live in context variables, so every log line
written while handling a call carries them without passing a logger around; asyncio copies the context
into each task, which keeps concurrent calls apart.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import secrets
import socket
import sys
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

_trace_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("trace_id", default=None)
_span_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("span_id", default=None)
_tenant_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("tenant_id", default=None)
_call_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("call_id", default=None)

_CONTEXT_FIELDS = {"trace_id": _trace_id, "span_id": _span_id, "tenant_id": _tenant_id, "call_id": _call_id}


def new_trace_id() -> str:
    return secrets.token_hex(16)


def new_span_id() -> str:
    return secrets.token_hex(8)


def current_trace_id() -> str | None:
    """The trace id bound by the innermost log_context (events carry it), or None outside one."""
    return _trace_id.get()


@contextlib.contextmanager
def log_context(
    *,
    trace_id: str | None = None,
    tenant_id: str | None = None,
    call_id: str | None = None,
    span_id: str | None = None,
) -> Iterator[None]:
    """Binds call-scoped fields to every log line written inside the block (a new span each time)."""
    values = {
        "trace_id": trace_id or _trace_id.get() or new_trace_id(),
        "span_id": span_id or new_span_id(),
        "tenant_id": tenant_id if tenant_id is not None else _tenant_id.get(),
        "call_id": call_id if call_id is not None else _call_id.get(),
    }
    tokens = [(var, var.set(values[name])) for name, var in _CONTEXT_FIELDS.items()]
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: timestamp, level, service, instance, context ids, message, data."""

    def __init__(self, service: str, instance: str) -> None:
        super().__init__()
        self.service = service
        self.instance = instance

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "service": self.service,
            "instance": self.instance,
            "logger": record.name,
        }
        for name, var in _CONTEXT_FIELDS.items():
            value = var.get()
            if value is not None:
                entry[name] = value
        entry["message"] = record.getMessage()
        data = getattr(record, "data", None)
        if isinstance(data, Mapping) and data:
            entry["data"] = dict(data)
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    """Human-readable lines for local runs (LOG_FORMAT=text)."""

    def __init__(self, service: str) -> None:
        super().__init__(f"%(asctime)s %(levelname)-7s {service} %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        call_id = _call_id.get()
        data = getattr(record, "data", None)
        suffix = f" call={call_id}" if call_id else ""
        if isinstance(data, Mapping) and data:
            suffix += " " + " ".join(f"{k}={v}" for k, v in data.items())
        return line + suffix


def default_instance_id(service: str) -> str:
    return f"{service}-{socket.gethostname()}-{os.getpid()}"


def configure_logging(
    service: str, *, level: str = "INFO", fmt: str = "json", instance: str | None = None
) -> None:
    """Routes the root logger to stderr in the chosen format. Idempotent (replaces our handler)."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter(service, instance or default_instance_id(service)))
    else:
        handler.setFormatter(TextFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
