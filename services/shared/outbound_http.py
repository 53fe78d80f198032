"""HTTP requests to URLs that tenants configure (tool webhooks, event webhooks), safe against SSRF.

A tenant must not be able to make the platform reach its own insides (loopback, the cloud metadata
service at 169.254.169.254, private networks). So every request made through `safe_client`:

- goes to an `https` URL (plain `http` only to hosts inside `allowed_networks`, for tests' receivers);
- connects only to public addresses: the host name is resolved here, every address it resolves to must
  be public, the connection is made to the checked address, and the address actually connected to is
  checked again, so DNS rebinding (a second resolution answering 127.0.0.1) cannot slip through;
  refused: loopback, private, link-local, CGNAT (100.64/10), multicast, reserved, unspecified, IPv6 ULA
  and site-local, and IPv4-mapped/-compatible forms of those;
- never follows redirects (a signed POST must not be replayed to another host), and ignores proxy
  environment variables (a proxy would connect on our behalf, unchecked);
- is read with `read_capped`, which stops reading past a size limit (after decompression).

    async with safe_client(settings.outbound_http, timeout=10) as http:
        async with http.stream("POST", url, content=body, headers=headers) as response:
            raw = await read_capped(response, 64 * 1024)

Refusals raise `UnsafeDestinationError` (an httpx.ConnectError, so code that handles unreachable
endpoints handles them too); an oversized answer raises `ResponseTooLargeError` (an httpx.HTTPError).
`check_url` validates a URL when it is configured, so tenants learn of a refused URL at once.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpcore
import httpx

from services.shared.settings import OutboundHttpSettings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Not covered by `is_global` in every Python version, or worth naming explicitly.
_NEVER = tuple(
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.0.0.0/24",
        "192.168.0.0/16",
        "198.18.0.0/15",
        "224.0.0.0/4",
        "240.0.0.0/4",
        "::/128",
        "::1/128",
        "fc00::/7",
        "fe80::/10",
        "fec0::/10",
        "ff00::/8",
        "64:ff9b::/96",
        "2002::/16",
    )
)


class UnsafeDestinationError(httpx.ConnectError):
    """The URL or the address it leads to is not one the platform may send requests to."""


class ResponseTooLargeError(httpx.HTTPError):
    """The answer is larger than the caller's limit; reading stopped there."""


class _Refused(httpcore.ConnectError):
    pass


def is_public(address: IPAddress) -> bool:
    """Whether `address` is a public unicast address (see the module docstring for what is not)."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or _ipv4_compatible(address)
        if embedded is not None:
            return is_public(embedded)
    if any(address in net for net in _NEVER if net.version == address.version):
        return False
    return address.is_global and not (address.is_multicast or address.is_reserved or address.is_unspecified)


def _ipv4_compatible(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    # ::a.b.c.d (deprecated IPv4-compatible form): treat like the IPv4 address it carries.
    if int(address) >> 32 == 0 and int(address) > 1:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


@dataclass(frozen=True)
class OutboundPolicy:
    """Which addresses outbound requests may reach: public ones, plus `allowed` (tests only)."""

    allowed: tuple[IPNetwork, ...] = ()

    @classmethod
    def from_settings(cls, cfg: OutboundHttpSettings) -> OutboundPolicy:
        return cls(tuple(ipaddress.ip_network(n, strict=False) for n in cfg.allowed_networks))

    def _explicitly_allowed(self, address: IPAddress) -> bool:
        return any(address.version == net.version and address in net for net in self.allowed)

    def permits(self, address: str | IPAddress) -> bool:
        ip = ipaddress.ip_address(address.split("%", 1)[0]) if isinstance(address, str) else address
        return is_public(ip) or self._explicitly_allowed(ip)

    def check_url(self, url: str) -> None:
        """Raises ValueError (a message for the tenant) when `url` may never be requested."""
        parts = urlsplit(url)
        host = parts.hostname
        if parts.scheme not in ("https", "http") or not host:
            raise ValueError("must be an https:// URL")
        if parts.username is not None or parts.password is not None:
            raise ValueError("must not contain credentials")
        literal = _ip_literal(host)
        if parts.scheme == "http" and (literal is None or not self._explicitly_allowed(literal)):
            raise ValueError("must be an https:// URL")
        if literal is not None and not self.permits(literal):
            raise ValueError("must point at a public address")
        if literal is None and (host == "localhost" or host.endswith((".localhost", ".local", ".internal"))):
            raise ValueError("must point at a public host")


def _ip_literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return None


class _GuardedBackend(httpcore.AsyncNetworkBackend):
    """Resolves, checks, connects to the checked address, then checks the connected peer."""

    def __init__(self, policy: OutboundPolicy) -> None:
        self._policy = policy
        self._inner = httpcore.AnyIOBackend()

    async def _resolve(self, host: str, port: int, timeout: float | None) -> list[str]:  # noqa: ASYNC109
        literal = _ip_literal(host)
        if literal is not None:
            return [str(literal)]
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, TimeoutError) as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
        return list(dict.fromkeys(str(info[4][0]) for info in infos))

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await self._resolve(host, port, timeout)
        refused = [a for a in addresses if not self._policy.permits(a)]
        if not addresses or refused:
            # One bad answer refuses the host: a name that can lead inside is not a tenant endpoint.
            raise _Refused(f"{host} resolves to a non-public address ({', '.join(refused) or 'none'})")
        error: Exception | None = None
        for address in addresses:
            try:
                stream = await self._inner.connect_tcp(address, port, timeout, local_address, socket_options)
            except httpcore.ConnectError as exc:
                error = exc
                continue
            peer = stream.get_extra_info("server_addr")
            if not peer or not self._policy.permits(str(peer[0])):
                await stream.aclose()
                raise _Refused(f"connected to a non-public address ({peer[0] if peer else 'unknown'})")
            return stream
        raise error or httpcore.ConnectError(f"cannot connect to {host}")

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise _Refused("unix sockets are not outbound destinations")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class _GuardedTransport(httpx.AsyncHTTPTransport):
    def __init__(self, policy: OutboundPolicy, limits: httpx.Limits) -> None:
        super().__init__(limits=limits, trust_env=False)
        self._policy = policy
        # The same pool httpx builds, on the checking network backend (httpx has no public hook for it).
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=False),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=_GuardedBackend(policy),
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            self._policy.check_url(str(request.url))
        except ValueError as exc:
            raise UnsafeDestinationError(f"refused {request.url.host}: URL {exc}", request=request) from None
        try:
            return await super().handle_async_request(request)
        except httpx.ConnectError as exc:
            if isinstance(exc.__cause__, _Refused) or isinstance(exc.__context__, _Refused):
                raise UnsafeDestinationError(f"refused: {exc}", request=request) from exc
            raise


def safe_client(
    cfg: OutboundHttpSettings,
    *,
    timeout: float = 10.0,
    headers: Sequence[tuple[str, str]] = (),
    max_connections: int = 100,
) -> httpx.AsyncClient:
    """An httpx client for tenant-configured URLs (see the module docstring). Close it when done."""
    policy = OutboundPolicy.from_settings(cfg)
    limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=20)
    return httpx.AsyncClient(
        transport=_GuardedTransport(policy, limits),
        follow_redirects=False,
        trust_env=False,
        timeout=httpx.Timeout(timeout, connect=min(timeout, cfg.connect_timeout_seconds)),
        headers=list(headers),
    )


async def read_capped(response: httpx.Response, limit: int) -> bytes:
    """The body of a streamed `response`, refusing (and no longer reading) more than `limit` bytes."""
    declared = response.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ResponseTooLargeError(f"the answer declares {declared} bytes, more than {limit}")
    parts: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > limit:
            raise ResponseTooLargeError(f"the answer is larger than {limit} bytes")
        parts.append(chunk)
    return b"".join(parts)
