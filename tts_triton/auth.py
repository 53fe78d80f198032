"""Whose voices a TtsService call may use. Platform services (the agent speaking for a call, the control
plane registering a tenant's voice, the gateway) are trusted with the tenant they name; any other
caller (the `client` certificate) must present its tenant's API key or token, and acts for that tenant
only. So a cloned voice is listed, read, registered or spoken only for its own tenant.

Credential checks need PostgreSQL; they are imported and connected on the first such call, so a TTS
node that only serves platform services needs neither the driver nor the database.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import grpc

from services.shared.grpc_server import Context, caller_identity
from services.shared.settings import Settings, load_settings

if TYPE_CHECKING:
    from services.control.authn import CredentialVerifier

TRUSTED_SERVICES = frozenset({"agent", "control", "gateway"})


class TenantRefusedError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class TenantResolver:
    """Resolves the tenant of a call (see the module docstring); connects to PostgreSQL on first need."""

    def __init__(self, settings: Settings | None = None) -> None:
        self._settings = settings
        self._lock = asyncio.Lock()
        self._verifier: CredentialVerifier | None = None
        self._pool: Any = None

    async def _ensure(self) -> CredentialVerifier:
        import asyncpg  # noqa: PLC0415 - only for credentialed callers (see the module docstring)

        from services.control.auth import resolve_secret  # noqa: PLC0415
        from services.control.authn import CredentialVerifier  # noqa: PLC0415

        async with self._lock:
            if self._verifier is None:
                settings = self._settings or load_settings()
                self._pool = await asyncpg.create_pool(
                    settings.database_url, min_size=0, max_size=2, command_timeout=5
                )
                self._verifier = CredentialVerifier(
                    self._pool,
                    resolve_secret(settings, "jwt_secret"),
                    settings.api_gateway.auth_cache_seconds,
                )
            return self._verifier

    async def http_tenant(self, api_key: str | None, authorization: str | None, requested: str) -> str:
        """The tenant of an HTTP request's credential; raises TenantRefusedError (401/403/503)."""
        from services.control.authn import AuthError  # noqa: PLC0415

        try:
            verifier = await self._ensure()
            principal = await verifier.authenticate(api_key, authorization)
        except AuthError as exc:
            raise TenantRefusedError(401, str(exc)) from None
        except Exception as exc:
            if isinstance(exc, OSError | ImportError) or type(exc).__module__.startswith("asyncpg"):
                raise TenantRefusedError(503, f"cannot verify credentials ({exc})") from None
            raise
        if requested and requested != principal.tenant_id:
            raise TenantRefusedError(403, "this credential belongs to another tenant")
        return principal.tenant_id

    async def tenant(self, context: Context, requested: str) -> str:
        """The tenant this call acts for; aborts UNAUTHENTICATED / PERMISSION_DENIED otherwise."""
        peer = caller_identity(context)
        if peer is None or peer in TRUSTED_SERVICES:
            return requested  # a platform service (or a plaintext development node)
        from services.control.authn import AuthError  # noqa: PLC0415

        try:
            verifier = await self._ensure()
            principal = await verifier.authenticate_metadata(context.invocation_metadata())
        except AuthError as exc:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))
        except (OSError, ImportError) as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"cannot verify credentials ({exc})")
        except Exception as exc:  # asyncpg's errors, without importing the driver up front
            if type(exc).__module__.startswith("asyncpg"):
                await context.abort(grpc.StatusCode.UNAVAILABLE, f"cannot verify credentials ({exc})")
            raise
        if requested and requested != principal.tenant_id:
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED, "this credential belongs to another tenant"
            )
        return principal.tenant_id

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
