"""Errors of the control plane as rich gRPC statuses (google.rpc.Status with details in the
`grpc-status-details-bin` trailer, which the gateway renders as JSON).

Servicers raise `ApiError`; they never let a request become INTERNAL because of what a client sent:
constraint and data errors from PostgreSQL map to INVALID_ARGUMENT / ALREADY_EXISTS / FAILED_PRECONDITION.
"""

from __future__ import annotations

import logging

import asyncpg
import grpc
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped]

log = logging.getLogger(__name__)

STATUS_DETAILS_KEY = "grpc-status-details-bin"
ERROR_DOMAIN = "voice.aiconnected.io"


class ApiError(Exception):
    """An error answered to the caller: a status code, a message and google.rpc details."""

    def __init__(self, code: grpc.StatusCode, message: str, *details: Message) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details

    def trailing_metadata(self) -> tuple[tuple[str, bytes], ...]:
        status = status_pb2.Status(code=self.code.value[0], message=self.message)
        for detail in self.details:
            packed = any_pb2.Any()
            packed.Pack(detail)
            status.details.append(packed)
        return ((STATUS_DETAILS_KEY, status.SerializeToString()),)


def invalid(field: str, description: str) -> ApiError:
    """INVALID_ARGUMENT with a BadRequest field violation naming the offending field."""
    violation = error_details_pb2.BadRequest.FieldViolation(field=field, description=description)
    return ApiError(
        grpc.StatusCode.INVALID_ARGUMENT,
        f"{field}: {description}" if field else description,
        error_details_pb2.BadRequest(field_violations=[violation]),
    )


def not_found(kind: str) -> ApiError:
    # Same answer whether the object does not exist or belongs to another tenant (no existence oracle).
    return ApiError(
        grpc.StatusCode.NOT_FOUND,
        f"{kind} not found",
        error_details_pb2.ResourceInfo(resource_type=kind),
    )


def failed_precondition(reason: str, message: str) -> ApiError:
    return ApiError(
        grpc.StatusCode.FAILED_PRECONDITION,
        message,
        error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN),
    )


def database_error(exc: BaseException) -> ApiError | None:
    """The status for a database error a client's input caused; None for anything else (a real fault)."""
    if isinstance(exc, asyncpg.UniqueViolationError):
        return ApiError(grpc.StatusCode.ALREADY_EXISTS, "already exists")
    if isinstance(exc, asyncpg.ForeignKeyViolationError):
        return ApiError(
            grpc.StatusCode.FAILED_PRECONDITION, "a referenced object does not exist or is in use"
        )
    if isinstance(exc, asyncpg.CheckViolationError | asyncpg.NotNullViolationError | asyncpg.DataError):
        log.info(
            "database rejected a request", extra={"data": {"error": type(exc).__name__, "detail": str(exc)}}
        )
        return ApiError(grpc.StatusCode.INVALID_ARGUMENT, "a value is out of range or malformed")
    return None
