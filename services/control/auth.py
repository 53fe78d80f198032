"""Who is calling the control plane, and how that claim reaches it unforgeably.

The control plane never takes a tenant from a request field. Its callers (the REST gateway after it
verified an API key or JWT; internal services such as the agent service) send the authenticated
context as gRPC metadata, signed with HMAC-SHA256 under a secret shared by the platform's processes
(`INTERNAL_AUTH_SECRET`):

    x-voice-tenant-id, x-voice-principal, x-voice-permission, x-voice-platform-admin, x-voice-auth-ts,
    x-voice-auth-sig = hex(HMAC(secret, "v1\\n" + those five values joined by "\\n"))

A client cannot spoof it: the gateway forwards only an allow-list of its own headers (never `x-voice-*`)
and signs what it verified itself; a caller that reaches the gRPC port directly has no secret, and a
captured header set is only replayable for `internal_auth_max_age_seconds`.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import logging
import os
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.shared.settings import Settings, SettingsError

log = logging.getLogger(__name__)

TENANT_KEY = "x-voice-tenant-id"
PRINCIPAL_KEY = "x-voice-principal"
PERMISSION_KEY = "x-voice-permission"
PLATFORM_ADMIN_KEY = "x-voice-platform-admin"
TIMESTAMP_KEY = "x-voice-auth-ts"
SIGNATURE_KEY = "x-voice-auth-sig"
RESERVED_PREFIX = "x-voice-"

SECRETS_DIR = Path(".var/secrets")


class Permission(enum.IntEnum):
    """API key permissions; each includes the ones below it."""

    READ = 1
    WRITE = 2
    ADMIN = 3

    @classmethod
    def parse(cls, value: str) -> Permission:
        try:
            return cls[value.upper()]
        except KeyError:
            raise ValueError(f"unknown permission {value!r}") from None

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class Principal:
    """The authenticated caller: its tenant, what it may do, and who it is (for logs and audit)."""

    tenant_id: str
    principal: str
    permission: Permission
    platform_admin: bool = False

    def allows(self, needed: Permission) -> bool:
        return self.permission >= needed


def _payload(tenant_id: str, principal: str, permission: str, platform_admin: str, ts: str) -> bytes:
    return "\n".join(("v1", tenant_id, principal, permission, platform_admin, ts)).encode()


class InternalAuth:
    """Signs (callers) and verifies (control plane) the tenant context carried in gRPC metadata."""

    def __init__(self, secret: bytes, max_age_seconds: int = 300) -> None:
        if len(secret) < 16:
            raise ValueError("the internal auth secret must be at least 16 bytes")
        self._secret = secret
        self._max_age = max_age_seconds

    def _sign(self, payload: bytes) -> str:
        return hmac.new(self._secret, payload, hashlib.sha256).hexdigest()

    def metadata(self, p: Principal, now: float | None = None) -> list[tuple[str, str]]:
        ts = str(int(time.time() if now is None else now))
        admin = "1" if p.platform_admin else "0"
        sig = self._sign(_payload(p.tenant_id, p.principal, p.permission.label, admin, ts))
        return [
            (TENANT_KEY, p.tenant_id),
            (PRINCIPAL_KEY, p.principal),
            (PERMISSION_KEY, p.permission.label),
            (PLATFORM_ADMIN_KEY, admin),
            (TIMESTAMP_KEY, ts),
            (SIGNATURE_KEY, sig),
        ]

    def verify(self, metadata: Iterable[tuple[str, Any]] | None, now: float | None = None) -> Principal:
        """The principal the metadata proves; raises PermissionError (-> UNAUTHENTICATED) otherwise."""
        values: dict[str, str] = {}
        for key, value in metadata or ():
            if key.startswith(RESERVED_PREFIX) and isinstance(value, str):
                values[key] = value
        try:
            tenant_id = values[TENANT_KEY]
            principal = values[PRINCIPAL_KEY]
            permission = values[PERMISSION_KEY]
            admin = values[PLATFORM_ADMIN_KEY]
            ts = values[TIMESTAMP_KEY]
            sig = values[SIGNATURE_KEY]
        except KeyError:
            raise PermissionError("missing authentication") from None
        expected = self._sign(_payload(tenant_id, principal, permission, admin, ts))
        if not hmac.compare_digest(expected, sig):
            raise PermissionError("invalid authentication signature")
        try:
            age = (time.time() if now is None else now) - int(ts)
            perm = Permission.parse(permission)
        except ValueError:
            raise PermissionError("malformed authentication") from None
        if abs(age) > self._max_age:
            raise PermissionError("authentication expired")
        return Principal(tenant_id, principal, perm, admin == "1")


def resolve_secret(settings: Settings, name: str) -> bytes:
    """The secret `name` ("internal_auth_secret" or "jwt_secret") from the environment. In development
    and test, when unset, a random one is created once under .var/secrets/ so that the local processes
    share it; staging and production must set it."""
    value = getattr(settings, name)
    if value is not None:
        secret: bytes = value.get_secret_value().encode()
        return secret
    if settings.environment in ("staging", "production"):
        raise SettingsError(f"{name.upper()} must be set in {settings.environment}")
    path = SECRETS_DIR / name
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    SECRETS_DIR.mkdir(parents=True, exist_ok=True)
    fresh = secrets.token_hex(32).encode()
    # O_EXCL: when two processes race to create it, one wins and the other reads the winner's.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_bytes()
    with os.fdopen(fd, "wb") as f:
        f.write(fresh)
    log.warning("generated a development secret", extra={"data": {"name": name, "path": str(path)}})
    return fresh


def internal_auth(settings: Settings) -> InternalAuth:
    return InternalAuth(
        resolve_secret(settings, "internal_auth_secret"), settings.control.internal_auth_max_age_seconds
    )
