"""Service identity: which certificate a process presents, and which service may call which method.

Every internal gRPC connection is mutual TLS under the platform's local CA (scripts/certs.sh). A
certificate's common name is the caller's identity: one of `SERVICES`, or `client` (tools, tests, load
testers, tenant backends: it grants nothing by itself, the methods open to it authenticate the caller
with an API key or token). Servers look the (identity, method) pair up in `ACL` before any handler runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from services.shared.settings import InternalTlsSettings, Settings, SettingsError

SERVICES = ("control", "agent", "bridge", "worker", "tts", "gateway")
CLIENT = "client"
IDENTITIES = (*SERVICES, CLIENT)

# Every verified peer may ask for health and reflection (load balancers, grpcurl, the launcher).
PUBLIC_SERVICES = ("grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection")

# server identity -> caller identity -> methods ("package.Service/Method", "package.Service/*" or "*").
# What is not listed is refused with PERMISSION_DENIED.
ACL: Mapping[str, Mapping[str, tuple[str, ...]]] = {
    # The control plane authenticates every resource RPC itself: a tenant context asserted by the
    # gateway or a service (signed metadata), or the caller's own API key / token (`client`).
    "control": {
        "gateway": ("*",),
        "agent": ("voice.v1.AgentService/GetAgent", "voice.v1.SystemService/*"),
        "bridge": (
            "voice.v1.AgentService/GetAgent",
            "voice.v1.NumberService/*",
            "voice.v1.CallService/*",
            "voice.v1.SystemService/*",
        ),
        "worker": (
            "voice.v1.CallService/*",
            "voice.v1.UsageService/*",
            "voice.v1.WebhookService/*",
            "voice.v1.SystemService/*",
        ),
        CLIENT: ("*",),
    },
    # Converse checks the tenant itself: a bridge's identity, or a tenant credential with call permission.
    "agent": {
        "bridge": ("voice.v1.AgentSessionService/*",),
        CLIENT: ("voice.v1.AgentSessionService/*",),
    },
    "bridge": {
        "control": ("*",),
        "gateway": ("*",),
        "agent": ("voice.v1.CallControlService/*",),
    },
    "worker": {"control": ("*",), "gateway": ("*",)},
    # The TTS node authenticates tenants on its voice APIs; services reach it for synthesis and voices.
    "tts": {"agent": ("*",), "control": ("*",), "gateway": ("*",), CLIENT: ("*",)},
}


def allowed(server: str, caller: str, method: str) -> bool:
    """Whether `caller` may call `method` ("/package.Service/Method") on the server `server`."""
    _, service, _ = method.split("/", 2) if method.count("/") >= 2 else ("", method, "")
    if service in PUBLIC_SERVICES:
        return caller in IDENTITIES
    rules = ACL.get(server, {}).get(caller, ())
    name = method.lstrip("/")
    return any(r in ("*", name) or (r.endswith("/*") and name.startswith(r[:-1])) for r in rules)


@dataclass(frozen=True)
class TlsMaterial:
    """PEM bytes of the CA and of one identity's certificate and key."""

    identity: str
    ca: bytes
    cert: bytes
    key: bytes


def plaintext(settings: Settings) -> bool:
    """Whether internal channels run without TLS (an explicit development choice only)."""
    if settings.internal_tls.mode != "plaintext":
        return False
    if settings.environment not in ("development", "test"):
        raise SettingsError(
            f"INTERNAL_TLS__MODE=plaintext is only for development, not {settings.environment or 'unset'}"
        )
    return True


def client_identity(settings: Settings) -> str:
    return settings.internal_tls.identity or CLIENT


def with_identity(settings: Settings, identity: str) -> Settings:
    """`settings` whose outgoing channels present `identity` (a service's own name, or for tests)."""
    tls = settings.internal_tls.model_copy(update={"identity": identity})
    return settings.model_copy(update={"internal_tls": tls})


def load_material(tls: InternalTlsSettings, identity: str) -> TlsMaterial:
    """Reads the CA and `identity`'s certificate and key (explicit paths, which a deployment sets for the
    one identity of its process, win over pki_dir). Blocking
    file reads of a few hundred bytes, done once per channel or server."""
    base = Path(tls.pki_dir)
    paths = {
        "ca": Path(tls.ca_cert) if tls.ca_cert else base / "ca.crt",
        "cert": Path(tls.cert) if tls.cert else base / f"{identity}.crt",
        "key": Path(tls.key) if tls.key else base / f"{identity}.key",
    }
    try:
        data = {name: path.read_bytes() for name, path in paths.items()}
    except FileNotFoundError as exc:
        raise SettingsError(
            f"no certificate material for service identity {identity!r}: {exc.filename} is missing; "
            "run scripts/certs.sh (make setup does), or set INTERNAL_TLS__MODE=plaintext for development"
        ) from None
    return TlsMaterial(identity, data["ca"], data["cert"], data["key"])


def peer_identity(auth_context: Mapping[str, object]) -> str | None:
    """The verified caller identity of an RPC (its certificate's common name), or None."""
    names = auth_context.get("x509_common_name")
    if not isinstance(names, list | tuple) or not names:
        return None
    first = names[0]
    return first.decode() if isinstance(first, bytes) else str(first)
