"""HMAC-SHA256 signatures of tool webhook requests, and their verification (for tenants' endpoints).

The signed string is `<unix timestamp>.<raw body>`, so a captured request cannot be replayed later with
a fresh timestamp: a receiver checks the signature and that the timestamp is recent.
Headers: `X-Voice-Timestamp: 1767225600` and `X-Voice-Signature: v1=<hex digest>`.
"""

from __future__ import annotations

import hashlib
import hmac

# Per-tenant secrets are derived in services/shared (the control plane hands them to tenants too).
from services.shared.tool_signing import tenant_secret

__all__ = ["SIGNATURE_HEADER", "TIMESTAMP_HEADER", "sign", "signature_headers", "tenant_secret", "verify"]

TIMESTAMP_HEADER = "X-Voice-Timestamp"
SIGNATURE_HEADER = "X-Voice-Signature"
SCHEME = "v1"
DEFAULT_TOLERANCE_S = 300


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    digest = hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"{SCHEME}={digest}"


def signature_headers(secret: bytes, timestamp: int, body: bytes) -> dict[str, str]:
    return {TIMESTAMP_HEADER: str(timestamp), SIGNATURE_HEADER: sign(secret, timestamp, body)}


def verify(
    secret: bytes,
    timestamp_header: str,
    signature_header: str,
    body: bytes,
    *,
    now: float,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
) -> bool:
    """True when the signature matches the body and the timestamp is within `tolerance_s` of `now`."""
    try:
        timestamp = int(timestamp_header)
    except ValueError:
        return False
    if abs(now - timestamp) > tolerance_s:
        return False
    expected = sign(secret, timestamp, body)
    # A header may carry several signatures (secret rotation): any match will do.
    candidates = [part.strip() for part in signature_header.split(",")]
    return any(hmac.compare_digest(expected, candidate) for candidate in candidates)
