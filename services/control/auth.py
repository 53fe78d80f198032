"""Who is calling the control plane, and how that claim reaches it unforgeably.

The control plane never takes a tenant from a request field. Its callers either present their own
credential (`x-api-key` or `authorization: Bearer` metadata, verified by services/control/authn.py), or
are platform services that verified one and assert the resulting context as gRPC metadata:

    x-voice-tenant-id, x-voice-principal, x-voice-permission, x-voice-platform-admin, x-voice-key-id,
    x-voice-not-after, x-voice-auth-ts,
    x-voice-auth-sig = hex(HMAC(secret, "v2\\n" + those seven values joined by "\\n"))

An asserted context is accepted only from a caller whose mutual-TLS certificate names a platform
service allowed to assert one (`ASSERTING_SERVICES`): a tenant backend or tool holding the `client`
certificate, or a replayed header set, gets UNAUTHENTICATED. The HMAC (secret `INTERNAL_AUTH_SECRET`)
is kept as a second check and is the only one on an explicitly plaintext development deployment.
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
KEY_ID_KEY = "x-voice-key-id"
NOT_AFTER_KEY = "x-voice-not-after"
TIMESTAMP_KEY = "x-voice-auth-ts"
SIGNATURE_KEY = "x-voice-auth-sig"
RESERVED_PREFIX = "x-voice-"

SECRETS_DIR = Path(".var/secrets")

# Services whose certificate lets them assert a caller's context (they verified it themselves, or act
# for the platform: the agent reads a tenant's agent at call start, the bridge and worker likewise).
ASSERTING_SERVICES = frozenset({"gateway", "agent", "bridge", "worker"})


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
    """The authenticated caller: its tenant, what it may do, and who it is (for logs and audit).
    `key_id` is the API key the credential derives from ("" for platform services) and `not_after`
    the unix time after which it is no longer valid (0: no bound), so that what it mints never
    outlives it."""

    tenant_id: str
    principal: str
    permission: Permission
    platform_admin: bool = False
    key_id: str = ""
    not_after: int = 0

    def allows(self, needed: Permission) -> bool:
        return self.permission >= needed


def _payload(*values: str) -> bytes:
    return "\n".join(("v2", *values)).encode()


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
        not_after = str(p.not_after)
        sig = self._sign(
            _payload(p.tenant_id, p.principal, p.permission.label, admin, p.key_id, not_after, ts)
        )
        return [
            (TENANT_KEY, p.tenant_id),
            (PRINCIPAL_KEY, p.principal),
            (PERMISSION_KEY, p.permission.label),
            (PLATFORM_ADMIN_KEY, admin),
            (KEY_ID_KEY, p.key_id),
            (NOT_AFTER_KEY, not_after),
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
            key_id = values[KEY_ID_KEY]
            not_after = values[NOT_AFTER_KEY]
            ts = values[TIMESTAMP_KEY]
            sig = values[SIGNATURE_KEY]
        except KeyError:
            raise PermissionError("missing authentication") from None
        expected = self._sign(_payload(tenant_id, principal, permission, admin, key_id, not_after, ts))
        if not hmac.compare_digest(expected, sig):
            raise PermissionError("invalid authentication signature")
        try:
            current = time.time() if now is None else now
            age = current - int(ts)
            perm = Permission.parse(permission)
            bound = int(not_after)
        except ValueError:
            raise PermissionError("malformed authentication") from None
        if abs(age) > self._max_age or (bound and bound <= current):
            raise PermissionError("authentication expired")
        return Principal(tenant_id, principal, perm, admin == "1", key_id, bound)

    @staticmethod
    def asserted(metadata: Iterable[tuple[str, Any]] | None) -> bool:
        """Whether the metadata carries an asserted (signed) context at all."""
        return any(key == SIGNATURE_KEY for key, _ in metadata or ())


def resolve_secret(settings: Settings, name: str) -> bytes:
    """The secret `name` ("internal_auth_secret" or "jwt_secret") from the environment. In development
    and test, when unset, a random one is created once under .var/secrets/ so that the local processes
    share it; staging and production must set it."""
    value = getattr(settings, name)
    if value is not None:
        secret: bytes = value.get_secret_value().encode()
        return secret
    if settings.environment not in ("development", "test"):
        raise SettingsError(f"{name.upper()} must be set in {settings.environment or 'a deployment'}")
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
