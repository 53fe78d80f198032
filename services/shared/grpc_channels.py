"""The one way a process of the platform opens a gRPC channel to another of its services.

Every internal client (the gateway to the control plane, the agent to the control plane, the bridge to
the agent, the worker, tools) goes through `open_channel`, so how services prove who they are to each
other (transport security, service identity) is decided in this module and nowhere else.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc

from services.shared.service_identity import SERVICES, client_identity, load_material, plaintext
from services.shared.settings import Settings

# Keep-alives so a dead peer is noticed within seconds; the server side permits pings this often.
DEFAULT_CHANNEL_OPTIONS: Sequence[tuple[str, Any]] = (
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
)


def open_channel(
    settings: Settings,
    target: str,
    *,
    options: Sequence[tuple[str, Any]] = DEFAULT_CHANNEL_OPTIONS,
    identity: str | None = None,
    expect: str | None = None,
) -> grpc.aio.Channel:
    """An asyncio channel from this process to the platform service at `target` ("host:port").

    Mutual TLS under the platform's CA, presenting this process's identity (`internal_tls.identity`,
    set to the service's name by the service runner; "client" for tools and tests) unless `identity`
    names another one (tests acting as a given service). With `expect` (a service name), the server
    must also prove that it is that service: its certificate has to name it (scripts/certs.sh puts the
    service's name in each certificate's subject alternative names), so one compromised service cannot
    stand in for another by taking over its address. Plaintext only when the settings say so
    explicitly, and never in staging or production."""
    if plaintext(settings):
        return grpc.aio.insecure_channel(target, options=list(options))
    material = load_material(settings.internal_tls, identity or client_identity(settings))
    credentials = grpc.ssl_channel_credentials(
        root_certificates=material.ca, private_key=material.key, certificate_chain=material.cert
    )
    channel_options = list(options)
    if expect is not None:
        if expect not in SERVICES:
            raise ValueError(f"unknown service {expect!r}; expected one of {', '.join(SERVICES)}")
        # The TLS host check then compares the certificate's names with the service, not the address.
        channel_options.append(("grpc.ssl_target_name_override", expect))
    return grpc.aio.secure_channel(target, credentials, options=channel_options)
