"""A bridge on loopback with everything real around it: a control plane in its own PostgreSQL schema
(routing data), Redis (call state, slots), the agent service in-process (Silero, PocketSphinx, the
policy, Triton TTS) and SIPp as the phone network. Events are recorded, not published (tests must not
put events on the shared bus that the product did not produce for a real call)."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import redis.asyncio as aioredis
from google.protobuf.message import Message
from prometheus_client import CollectorRegistry

from services.agent.demo_agent import demo_agent
from services.agent.directory import StaticDirectory
from services.agent.server import build_server as build_agent
from services.bridge.call import BridgeCall
from services.bridge.control import CallControlServicer
from services.bridge.service import Bridge
from services.shared.grpc_channels import open_channel
from services.shared.grpc_server import GrpcServer, bind
from services.shared.settings import Settings
from tests.control.env import ControlPlane, control_plane
from voice.v1 import agent_session_pb2_grpc, agents_pb2, call_control_pb2, call_control_pb2_grpc, events_pb2

SCENARIOS = Path(__file__).parent / "scenarios"


@dataclass
class RecordedEvents:
    events: list[tuple[str, str, str, Message]] = field(default_factory=list)

    def emit(self, tenant_id: str, call_id: str, **payload: Message) -> None:
        ((case, message),) = payload.items()
        self.events.append((tenant_id, call_id, case, message))

    def publish(self, event: events_pb2.Event) -> None:
        case = event.WhichOneof("payload")
        assert case is not None
        self.events.append((event.tenant_id, event.call_id, case, getattr(event, case)))

    def of(self, call_id: str) -> list[str]:
        return [case for _, cid, case, _ in self.events if cid == call_id]

    def get(self, call_id: str, case: str) -> Message:
        return next(m for _, cid, c, m in self.events if cid == call_id and c == case)


@dataclass
class Tenant:
    tenant_id: str
    agent_id: str
    number: str


@dataclass
class SipEnv:
    cp: ControlPlane
    bridge: Bridge
    agent: GrpcServer
    redis: aioredis.Redis
    events: RecordedEvents
    calls: list[BridgeCall]
    workdir: Path
    directory: MutableDirectory
    rpc: GrpcServer  # CallControlService of the bridge

    async def tenant(self, *, max_calls: int = 10) -> Tenant:
        """A tenant with the demo agent's configuration under fresh ids and a number routed to it."""
        tenant_id, _ = await self.cp.tenant("Clinic")
        number = f"+1555{uuid.uuid4().int % 10**7:07d}"
        async with self.cp.pool.acquire() as conn:
            agent_id = await conn.fetchval(
                "INSERT INTO agents (tenant_id, name, system_prompt) VALUES ($1, 'Dr. Smith', 'x')"
                " RETURNING id",
                uuid.UUID(tenant_id),
            )
            await conn.execute(
                "INSERT INTO phone_numbers (tenant_id, agent_id, e164, provider) VALUES ($1, $2, $3, 'sip')",
                uuid.UUID(tenant_id),
                agent_id,
                number,
            )
            await conn.execute(
                "UPDATE tenants SET max_concurrent_calls = $2 WHERE id = $1", uuid.UUID(tenant_id), max_calls
            )
        agent = demo_agent()
        agent.tenant_id, agent.id = tenant_id, str(agent_id)
        self.directory.add(agent)
        return Tenant(tenant_id, str(agent_id), number)

    def call(self, call_id: str) -> BridgeCall:
        return next(c for c in self.calls if c.call_id == call_id)


class MutableDirectory(StaticDirectory):
    def add(self, agent: agents_pb2.Agent) -> None:
        self._agents[(agent.tenant_id, agent.id)] = agent


@dataclass
class SippRun:
    proc: asyncio.subprocess.Process
    log: Path

    async def wait(self, within_s: float = 120) -> tuple[int, str]:
        try:
            await asyncio.wait_for(self.proc.wait(), within_s)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
        out = self.log.read_text(errors="replace") if self.log.exists() else ""
        return self.proc.returncode or 0, out


def free_udp_port() -> int:
    """A free UDP port for SIPp (its -p 0 means 5060, which parallel runs would share)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def run_sipp(
    env: SipEnv,
    scenario: str | Path,
    *args: str,
    service: str = "",
    port: int = 0,
    timeout_s: float = 120,
) -> SippRun:
    """Starts SIPp with `scenario` (a name in tests/bridge/scenarios, or a file) as a UAC calling
    `service` on the bridge, or (no service) as a UAS on `port`; one call, its messages logged to a
    file the test can show on failure."""
    sipp = shutil.which("sipp")
    assert sipp is not None, "SIPp is not installed (scripts/bootstrap.sh installs sip-tester)"
    path = scenario if isinstance(scenario, Path) else SCENARIOS / f"{scenario}.xml"
    log = env.workdir / f"{path.stem}-{uuid.uuid4().hex[:6]}.log"
    cmd = [
        sipp,
        "-sf",
        str(path),
        "-m",
        "1",
        "-i",
        "127.0.0.1",
        "-p",
        str(port or free_udp_port()),
        "-mp",
        str(free_udp_port()),
        "-timeout",
        f"{int(timeout_s)}s",
        "-timeout_error",
        "-trace_msg",
        "-message_file",
        str(log),
        "-nostdin",
        *args,
    ]
    if service:  # a caller: toward the bridge's UA
        cmd += ["-s", service, f"127.0.0.1:{env.bridge.ua.port}"]
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=env.workdir
    )
    return SippRun(proc, log)


@contextlib.asynccontextmanager
async def sip_env(settings: Settings, *, auto_answer: bool = True) -> AsyncIterator[SipEnv]:
    async with control_plane(settings) as cp:
        base = cp.settings
        agent_section = base.agent_service.model_copy(update={"grpc_port": 0, "metrics_port": 0})
        directory = MutableDirectory([])
        agent = build_agent(
            base.model_copy(update={"agent_service": agent_section}), directory, publish_events=False
        )
        await agent.start()
        sip = base.webrtc_bridge.sip.model_copy(update={"port": 0, "auto_answer": auto_answer})
        bridge_settings = base.model_copy(
            update={"webrtc_bridge": base.webrtc_bridge.model_copy(update={"sip": sip})}
        )
        redis = aioredis.Redis.from_url(base.redis_url)
        channel = open_channel(base, agent.address, identity="bridge")
        events = RecordedEvents()
        bridge = Bridge(
            bridge_settings,
            redis=redis,
            pool=cp.pool,
            agent_stub=agent_session_pb2_grpc.AgentSessionServiceStub(channel),
            events=events,
            registry=CollectorRegistry(),
            instance="bridge-test",
        )
        calls: list[BridgeCall] = []
        bridge.on_call = calls.append
        await bridge.start()
        # CallControlService on an ephemeral port; the control plane dials through it.
        ports = base.webrtc_bridge.model_copy(update={"grpc_port": 0, "metrics_port": 0})
        control = GrpcServer(
            "bridge",
            ports,
            [
                bind(
                    call_control_pb2, call_control_pb2_grpc, "CallControlService", CallControlServicer(bridge)
                )
            ],
            serve_metrics_http=False,
            platform=base,
        )
        await control.start()
        # The control plane calls it as the control service (what its runner sets in production).
        cp_settings = cp.state.settings
        cp.state.settings = cp_settings.model_copy(
            update={
                "webrtc_bridge": cp_settings.webrtc_bridge.model_copy(update={"grpc_port": control.port}),
                "internal_tls": cp_settings.internal_tls.model_copy(update={"identity": "control"}),
            }
        )
        workdir = Path(tempfile.mkdtemp(prefix="bridge-test-"))
        env = SipEnv(cp, bridge, agent, redis, events, calls, workdir, directory, control)
        try:
            yield env
        finally:
            await control.stop(grace=0)
            await bridge.close()
            await channel.close()
            await agent.stop(grace=1)
            await redis.aclose()
            shutil.rmtree(workdir, ignore_errors=True)
