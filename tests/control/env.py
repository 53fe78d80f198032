"""A control plane (and gateway) on the real local PostgreSQL / Redis / NATS, in a fresh schema.

Each test session migrates its own PostgreSQL schema (`cp_<random>`, selected with search_path in the
database URL) and drops it at the end, so runs are repeatable and never touch the development data.
Servers listen on ephemeral ports. Shared by tests/control and tests/gateway (their conftests import
the fixtures from here).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
import tempfile
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import grpc
import pytest
import uvicorn

from gateway.app import Gateway
from services.agent.providers.tts import TritonTextToSpeech
from services.control.auth import InternalAuth, Permission, Principal, internal_auth
from services.control.bootstrap import bootstrap
from services.control.inventory import provision
from services.control.migrate import migrate_url
from services.control.server import build_server, build_state
from services.control.state import ControlState
from services.shared.dependency_health import check_all
from services.shared.grpc_channels import open_channel
from services.shared.grpc_server import GrpcServer
from services.shared.settings import ServerSettings, Settings, load_settings
from tts_triton.auth import TenantResolver
from tts_triton.grpc_service import tts_binding
from tts_triton.voices import VoiceRegistry


@dataclass
class ControlPlane:
    settings: Settings
    server: GrpcServer
    state: ControlState
    auth: InternalAuth
    pool: asyncpg.Pool
    channel: grpc.aio.Channel
    # Where the test TTS node keeps cloned voices.
    voices_dir: str = ""

    def metadata(
        self, tenant_id: str, permission: Permission = Permission.ADMIN, *, platform_admin: bool = False
    ) -> list[tuple[str, str]]:
        return self.auth.metadata(Principal(tenant_id, "test", permission, platform_admin))

    async def number(self, prefix: str = "+1555") -> str:
        """A fresh E.164 number provisioned in the platform's inventory (the operator's step)."""
        e164 = f"{prefix}{uuid.uuid4().int % 10**7:07d}"
        async with self.pool.acquire() as conn:
            await provision(conn, [e164])
        return e164

    async def tenant(self, name: str = "Tenant", *, platform_admin: bool = False) -> tuple[str, str]:
        """A fresh tenant and an admin API key for it: (tenant id, key)."""
        async with self.pool.acquire() as conn:
            tenant_id, _, key = await bootstrap(conn, name, trial_minutes=60.0, platform_admin=platform_admin)
        return str(tenant_id), key


async def _require_services(settings: Settings) -> None:
    down = [dep for dep in await check_all(settings) if not dep.healthy]
    if down:
        details = "; ".join(f"{d.name}: {d.detail}" for d in down)
        pytest.fail(f"local services down ({details}); start them with `make services`", pytrace=False)


def make_settings(base: Settings, database_url: str, **gateway: object) -> Settings:
    control = base.control.model_copy(update={"host": "127.0.0.1", "grpc_port": 0, "metrics_port": 0})
    # Failed authentications from 127.0.0.1 add up across the suite (one counter per address, shared
    # by gateway and control plane); tests of the limit set their own.
    limits = base.api_gateway.rate_limiting.model_copy(update={"failed_auth_limit": 1_000_000})
    api_gateway = base.api_gateway.model_copy(
        update={"host": "127.0.0.1", "port": 0, "workers": 1, "rate_limiting": limits, **gateway}
    )
    return load_settings(
        environment="test",
        database_url=database_url,
        internal_auth_secret=secrets.token_hex(32),
        jwt_secret=secrets.token_hex(32),
        control=control,
        api_gateway=api_gateway,
        log_format="text",
    )


@contextlib.asynccontextmanager
async def control_plane(base: Settings) -> AsyncIterator[ControlPlane]:
    await _require_services(base)
    schema = f"cp_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(base.database_url)
    await admin.execute(f'CREATE SCHEMA "{schema}"')
    url = base.database_url + ("&" if "?" in base.database_url else "?") + f"search_path={schema}"
    try:
        await migrate_url(url)
        # A rate limit far above what the suite sends; tests of the limiter start their own gateway.
        cfg = make_settings(base, url)
        # The TTS node's TtsService (voice registry only: registering needs no Triton), where CreateVoice
        # stores cloned voices; on a temporary directory, verifying credentials on this schema.
        voices_dir = tempfile.TemporaryDirectory(prefix="voices-")
        tts = TritonTextToSpeech(base.agent_service.tts)
        tenants = TenantResolver(cfg)
        tts_node = GrpcServer(
            "tts",
            ServerSettings(grpc_port=0, metrics_port=0),
            [tts_binding(tts, VoiceRegistry(voices_dir.name), tenants)],
            serve_metrics_http=False,
        )
        await tts_node.start()
        node = cfg.chatterbox_service.model_copy(update={"grpc_port": tts_node.port})
        cfg = cfg.model_copy(update={"chatterbox_service": node})
        state = build_state(cfg)
        server = build_server(cfg, state)
        await server.start()
        pool = await asyncpg.create_pool(url, min_size=1, max_size=4)
        channel = open_channel(cfg, server.address, identity="gateway")
        try:
            yield ControlPlane(cfg, server, state, internal_auth(cfg), pool, channel, voices_dir.name)
        finally:
            await channel.close()
            await server.stop(0)
            await tts_node.stop(0)
            await tenants.close()
            await tts.close()
            voices_dir.cleanup()
            await state.close()
            await pool.close()
    finally:
        await admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await admin.close()


@dataclass
class RunningGateway:
    app: Gateway
    server: uvicorn.Server
    task: asyncio.Task[None]
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextlib.asynccontextmanager
async def running_gateway(cp: ControlPlane, **gateway: object) -> AsyncIterator[RunningGateway]:
    """The gateway in this process on an ephemeral port, pointed at `cp`, with setting overrides."""
    update = {"control_target": cp.server.address, **gateway}
    cfg = cp.settings.model_copy(update={"api_gateway": cp.settings.api_gateway.model_copy(update=update)})
    # Same secrets as the control plane: it must verify what this gateway signs.
    app = Gateway(cfg)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, lifespan="on", log_config=None, access_log=False, http="httptools")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    for _ in range(200):
        if server.started:
            break
        if task.done():
            task.result()
        await asyncio.sleep(0.02)
    try:
        yield RunningGateway(app, server, task, port)
    finally:
        server.should_exit = True
        await task
        sock.close()
