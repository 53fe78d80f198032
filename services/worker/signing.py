"""Signatures of tenant event webhooks (HMAC-SHA256), the same scheme as tool webhooks.

The signed string is `<unix timestamp>.<raw body>` with the webhook's signing secret (`whsec_...`, shown
once by CreateWebhook). Headers: `X-Voice-Timestamp: 1767225600`, `X-Voice-Signature: v1=<hex>`. A
receiver recomputes the HMAC over the raw body and rejects timestamps older than a few minutes.
"""

from __future__ import annotations

import hashlib
import hmac

TIMESTAMP_HEADER = "X-Voice-Timestamp"
SIGNATURE_HEADER = "X-Voice-Signature"


def sign(secret: str, timestamp: int, body: bytes) -> str:
    digest = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"v1={digest}"


def verify(
    secret: str, timestamp: str, signature: str, body: bytes, *, now: float, tolerance_s: float = 300
) -> bool:
    try:
        ts = int(timestamp)
    except ValueError:
        return False
    if abs(now - ts) > tolerance_s:
        return False
    expected = sign(secret, ts, body)
    return any(hmac.compare_digest(expected, part.strip()) for part in signature.split(","))
