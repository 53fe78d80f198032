"""The per-tenant secret that signs tool webhook requests (services/agent/tools/signing.py signs with it;
the control plane's TenantService hands it to the tenant so its endpoints can verify)."""

from __future__ import annotations

import hashlib
import hmac


def tenant_secret(master: bytes, tenant_id: str, version: int = 1) -> bytes:
    """A per-tenant signing secret derived from the platform's, so tenants never share one; `version`
    is the tenant's rotation count (TenantService.RotateToolSigningSecret; 1 until the first rotation).
    Tenants read it, hex-encoded, with TenantService.GetToolSigningSecret."""
    label = b"tool-webhook:" + tenant_id.encode()
    if version > 1:
        label += b":" + str(version).encode()
    return hmac.new(master, label, hashlib.sha256).digest()
