"""HTTP digest authentication for SIP (RFC 3261 section 22, RFC 2617 / RFC 7616): MD5 and SHA-256,
qop=auth or none. The bridge answers a trunk's 401/407 challenge to its INVITE or REGISTER."""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass

MAX_CHALLENGE = 2048  # a challenge header is a few hundred bytes; longer is refused
_PARAM = re.compile(r'\s*([A-Za-z0-9_-]+)\s*=\s*("((?:[^"\\]|\\.)*)"|[^\s,]+)\s*(?:,|$)')
_HASHES = {"MD5": hashlib.md5, "SHA-256": hashlib.sha256}


class DigestError(ValueError):
    """A challenge we cannot answer (malformed, unknown algorithm or qop)."""


@dataclass(frozen=True)
class Challenge:
    realm: str
    nonce: str
    algorithm: str = "MD5"
    qop: str = ""  # "auth" or "" (RFC 2069 style)
    opaque: str = ""
    stale: bool = False


def parse_challenge(value: str) -> Challenge:
    """A WWW-Authenticate / Proxy-Authenticate value: `Digest realm="..", nonce="..", ...`."""
    if len(value) > MAX_CHALLENGE:
        raise DigestError("challenge too long")
    scheme, _, rest = value.strip().partition(" ")
    if scheme.lower() != "digest":
        raise DigestError(f"not a digest challenge: {scheme!r}")
    params: dict[str, str] = {}
    pos = 0
    rest = rest.strip()
    while pos < len(rest):
        m = _PARAM.match(rest, pos)
        if m is None or m.end() == pos:
            raise DigestError("malformed challenge parameters")
        params[m.group(1).lower()] = m.group(3) if m.group(3) is not None else m.group(2)
        pos = m.end()
    if "realm" not in params or "nonce" not in params:
        raise DigestError("challenge without realm or nonce")
    algorithm = params.get("algorithm", "MD5").upper()
    if algorithm not in _HASHES:
        raise DigestError(f"unsupported algorithm {algorithm}")
    qops = [q.strip() for q in params.get("qop", "").split(",") if q.strip()]
    if qops and "auth" not in qops:
        raise DigestError("only qop=auth is supported")
    return Challenge(
        realm=params["realm"],
        nonce=params["nonce"],
        algorithm=algorithm,
        qop="auth" if qops else "",
        opaque=params.get("opaque", ""),
        stale=params.get("stale", "").lower() == "true",
    )


def digest_response(
    challenge: Challenge, *, username: str, password: str, method: str, uri: str, cnonce: str, nc: int = 1
) -> str:
    """The `response` value (RFC 7616 section 3.4.1)."""
    h = _HASHES[challenge.algorithm]

    def hx(text: str) -> str:
        return h(text.encode("utf-8")).hexdigest()

    ha1 = hx(f"{username}:{challenge.realm}:{password}")
    ha2 = hx(f"{method}:{uri}")
    if challenge.qop:
        return hx(f"{ha1}:{challenge.nonce}:{nc:08x}:{cnonce}:{challenge.qop}:{ha2}")
    return hx(f"{ha1}:{challenge.nonce}:{ha2}")


def authorization(
    challenge: Challenge, *, username: str, password: str, method: str, uri: str, cnonce: str = ""
) -> str:
    """The Authorization / Proxy-Authorization header value answering `challenge`."""
    cnonce = cnonce or secrets.token_hex(8)
    response = digest_response(
        challenge, username=username, password=password, method=method, uri=uri, cnonce=cnonce
    )
    parts = [
        f'username="{username}"',
        f'realm="{challenge.realm}"',
        f'nonce="{challenge.nonce}"',
        f'uri="{uri}"',
        f'response="{response}"',
        f"algorithm={challenge.algorithm}",
    ]
    if challenge.qop:
        parts += [f"qop={challenge.qop}", "nc=00000001", f'cnonce="{cnonce}"']
    if challenge.opaque:
        parts.append(f'opaque="{challenge.opaque}"')
    return "Digest " + ", ".join(parts)
