"""Errors that end one session with a gRPC status, leaving every other call untouched."""

from __future__ import annotations

import grpc


class SessionError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
