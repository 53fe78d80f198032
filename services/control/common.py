"""Helpers every control-plane servicer uses: ids, cursor pagination, field masks, input checks."""

from __future__ import annotations

import base64
import binascii
import json
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import asyncpg
from asyncpg.pool import PoolConnectionProxy
from google.protobuf import field_mask_pb2, struct_pb2, timestamp_pb2
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from services.control.errors import invalid, not_found

# Anchored at both ends (`\Z`, not `$`, which also matches before a trailing newline).
E164 = re.compile(r"\A\+[1-9][0-9]{6,14}\Z")
DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100

M = TypeVar("M", bound=Message)
# What servicers run queries on: a pooled connection or a plain one (bootstrap, migrations).
Conn = asyncpg.Connection | PoolConnectionProxy


def repeated(f: FieldDescriptor) -> bool:
    """Whether a field is repeated (FieldDescriptor.label is deprecated in protobuf 6)."""
    return bool(getattr(f, "is_repeated"))  # noqa: B009  (missing from the stubs)


def parse_id(value: str, kind: str) -> uuid.UUID:
    """An object id from a request. A malformed id names no object, so it is NOT_FOUND like any other."""
    try:
        return uuid.UUID(value)
    except ValueError:
        raise not_found(kind) from None


def parse_ref(value: str, field: str) -> uuid.UUID:
    """An id that references another object in a request body: malformed is INVALID_ARGUMENT."""
    try:
        return uuid.UUID(value)
    except ValueError:
        raise invalid(field, "must be an id returned by the API") from None


def check_e164(value: str, field: str) -> str:
    if not E164.match(value):
        raise invalid(field, "must be an E.164 number such as +15551234567")
    return value


def check_text(value: str, field: str, *, max_len: int, required: bool = False) -> str:
    if required and not value.strip():
        raise invalid(field, "is required")
    if len(value) > max_len:
        raise invalid(field, f"must be at most {max_len} characters")
    return value


# Bounds on what one object may hold (the gateway's body limit and gRPC's message limit are far larger).
MAX_MAP_ENTRIES = 64
MAX_MAP_KEY_CHARS = 128
MAX_MAP_VALUE_CHARS = 4096
MAX_LIST_ITEMS = 256
MAX_STRUCT_DEPTH = 16
MAX_STRUCT_NODES = 2000


def _check_struct(value: struct_pb2.Struct | struct_pb2.ListValue, name: str) -> None:
    """A JSON value (tool input schemas, tool inputs) nested at most MAX_STRUCT_DEPTH deep and with at
    most MAX_STRUCT_NODES values: deeper ones are refused before anything walks them recursively."""
    nodes = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        nodes += 1
        if depth > MAX_STRUCT_DEPTH:
            raise invalid(name, f"is nested too deeply (at most {MAX_STRUCT_DEPTH} levels)")
        if nodes > MAX_STRUCT_NODES:
            raise invalid(name, f"is too large (at most {MAX_STRUCT_NODES} values)")
        if isinstance(item, struct_pb2.Struct):
            if any("\x00" in k for k in item.fields):
                raise invalid(name, "must not contain NUL characters")
            stack.extend((v, depth + 1) for v in item.fields.values())
        elif isinstance(item, struct_pb2.ListValue):
            stack.extend((v, depth + 1) for v in item.values)
        elif isinstance(item, struct_pb2.Value):
            kind = item.WhichOneof("kind")
            if kind == "struct_value":
                stack.append((item.struct_value, depth))
            elif kind == "list_value":
                stack.append((item.list_value, depth))
            elif kind == "string_value" and "\x00" in item.string_value:
                raise invalid(name, "must not contain NUL characters")


def check_strings(message: Message, prefix: str = "") -> None:
    """Refuses NUL characters anywhere in a message (PostgreSQL text cannot hold them), and maps, lists
    and JSON values beyond the bounds above (a clear INVALID_ARGUMENT instead of unbounded rows or a
    recursion error)."""
    if isinstance(message, struct_pb2.Struct | struct_pb2.ListValue):
        _check_struct(message, prefix.rstrip(".") or "value")
        return
    for field, value in message.ListFields():
        name = f"{prefix}{field.name}"
        if field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type.GetOptions().map_entry:
            if len(value) > MAX_MAP_ENTRIES:
                raise invalid(name, f"must have at most {MAX_MAP_ENTRIES} entries")
            for k, v in value.items():
                if isinstance(k, str) and len(k) > MAX_MAP_KEY_CHARS:
                    raise invalid(name, f"keys must be at most {MAX_MAP_KEY_CHARS} characters")
                if isinstance(v, str) and len(v) > MAX_MAP_VALUE_CHARS:
                    raise invalid(name, f"values must be at most {MAX_MAP_VALUE_CHARS} characters")
        elif repeated(field) and len(value) > MAX_LIST_ITEMS:
            raise invalid(name, f"must have at most {MAX_LIST_ITEMS} items")
        if field.type == FieldDescriptor.TYPE_STRING:
            values: Iterable[Any] = value if repeated(field) else (value,)
            if field.message_type is None and any("\x00" in v for v in values):
                raise invalid(name, "must not contain NUL characters")
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            if field.message_type.GetOptions().map_entry:
                for k, v in value.items():
                    if "\x00" in k or (isinstance(v, str) and "\x00" in v):
                        raise invalid(name, "must not contain NUL characters")
                    if isinstance(v, Message):
                        check_strings(v, f"{name}.")
            elif repeated(field):
                for i, item in enumerate(value):
                    check_strings(item, f"{name}[{i}].")
            else:
                check_strings(value, f"{name}.")


def timestamp(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value)
    return ts


def from_timestamp(ts: timestamp_pb2.Timestamp) -> datetime:
    return ts.ToDatetime(tzinfo=UTC)


@dataclass(frozen=True)
class Page:
    size: int
    after: tuple[datetime, uuid.UUID] | None


def page(page_size: int, page_token: str) -> Page:
    """Cursor pagination (AIP-158): size defaults to 20 and is capped at 100; the token is the
    (create time, id) of the last row served, so pages stay stable while rows are added."""
    if page_size < 0:
        raise invalid("page_size", "must not be negative")
    size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
    if not page_token:
        return Page(size, None)
    try:
        raw = json.loads(base64.urlsafe_b64decode(page_token.encode() + b"=" * (-len(page_token) % 4)))
        after = (datetime.fromisoformat(raw[0]), uuid.UUID(raw[1]))
    except (ValueError, TypeError, IndexError, KeyError, binascii.Error, UnicodeError):
        raise invalid("page_token", "is not a token this API returned") from None
    if after[0].tzinfo is None:
        raise invalid("page_token", "is not a token this API returned")
    return Page(size, after)


def next_token(rows: list[Any], size: int) -> str:
    """The token of the page after `rows` (fetched with LIMIT size + 1), or "" on the last page."""
    if len(rows) <= size:
        return ""
    last = rows[size - 1]
    raw = json.dumps([last["created_at"].isoformat(), str(last["id"])]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def apply_mask(current: M, patch: M, mask: field_mask_pb2.FieldMask, output_only: frozenset[str]) -> M:
    """`current` with the fields of `mask` taken from `patch`; an empty mask replaces every field that
    is not output-only (PUT semantics). Output-only paths in a mask are ignored (AIP-203)."""
    paths = [p for p in mask.paths if p.split(".")[0] not in output_only]
    for p in paths:
        if not _valid_path(patch.DESCRIPTOR, p.split(".")):
            raise invalid("update_mask", f"unknown field {p!r}")
    if not mask.paths:
        paths = [f.name for f in patch.DESCRIPTOR.fields if f.name not in output_only]
    if not paths:
        return current
    merged = type(current)()
    merged.CopyFrom(current)
    field_mask_pb2.FieldMask(paths=paths).MergeMessage(
        patch, merged, replace_message_field=True, replace_repeated_field=True
    )
    return merged


def _valid_path(descriptor: Any, parts: list[str]) -> bool:
    field = descriptor.fields_by_name.get(parts[0])
    if field is None:
        return False
    if len(parts) == 1:
        return True
    if field.message_type is None or repeated(field):
        return False
    if field.message_type.GetOptions().map_entry:
        return False
    return _valid_path(field.message_type, parts[1:])
