"""The bridge (telephony edge) gRPC server: CallControlService (Dial, Answer, Hangup, Transfer, Hold,
Resume, Merge) over the calls of this instance, and the SIP trunk user agent (UDP) that carries them.
Call state lives in Redis, concurrent-call slots in services/shared/call_slots.py, events go out through
the shared EventPublisher, and the routing data comes from the control plane's tables (cached)."""

from __future__ import annotations

import os
from typing import cast

import redis.asyncio as aioredis

from services.bridge.agent_pool import AgentPool
from services.bridge.control import CallControlServicer
from services.bridge.service import Bridge
from services.shared.db import create_pool
from services.shared.events_publisher import EventPublisher
from services.shared.grpc_server import GrpcServer, bind
from services.shared.recordings.writer import RecordingWriter
from services.shared.settings import Settings
from voice.v1 import agent_session_pb2_grpc, call_control_pb2, call_control_pb2_grpc


class BridgeServer(GrpcServer):
    """GrpcServer plus the bridge's own resources: started after the gRPC port is bound (so a port
    clash fails fast) and closed after the last RPC."""

    def __init__(self, settings: Settings) -> None:
        self.platform_settings = settings
        self.bridge: Bridge | None = None
        # The servicer needs the event loop (Redis, PostgreSQL, the agent channel): bound in start().
        super().__init__(
            "bridge",
            settings.webrtc_bridge,
            [bind(call_control_pb2, call_control_pb2_grpc, "CallControlService")],
            platform=settings,
        )

    async def start(self) -> None:
        settings = self.platform_settings
        instance = f"bridge-{settings.instance_id or os.getpid()}"
        redis = aioredis.Redis.from_url(settings.redis_url)
        pool = await create_pool(settings)
        agent = settings.agent_service
        # The bridge is the bridge whatever process hosts it (its identity is what Converse admits), and
        # it only talks to a server that proves it is the agent service.
        # Several connections: the agent's processes share its port, and the kernel spreads connections.
        agents = AgentPool.connect(settings, f"{agent.host}:{agent.grpc_port}")
        events = EventPublisher(settings, instance, registry=self.registry)
        # Phone calls are recorded here, where their audio passes (reads the master key: fails early).
        recordings = RecordingWriter(settings)
        bridge = Bridge(
            settings,
            redis=redis,
            pool=pool,
            agent_stub=cast("agent_session_pb2_grpc.AgentSessionServiceAsyncStub", agents),
            events=events,
            registry=self.registry,
            instance=instance,
            recordings=recordings,
        )
        servicer = CallControlServicer(bridge)
        self.bindings = (bind(call_control_pb2, call_control_pb2_grpc, "CallControlService", servicer),)
        self.bridge = bridge

        async def cleanup() -> None:
            await bridge.close()
            await recordings.close()
            await events.close()
            await agents.close()
            await pool.close()
            await redis.aclose()

        self.on_stop.append(cleanup)
        if settings.webrtc_bridge.sip.enabled:
            await bridge.start()
        await super().start()


def build_server(settings: Settings) -> GrpcServer:
    return BridgeServer(settings)
