"""Client for internal services that read agent configuration from the control plane (the agent service
at call start). GetAgent answers are cached briefly: a call start must not wait on PostgreSQL, and an
edit reaches new calls within `ttl_seconds`.

    client = AgentConfigClient.connect(settings)  # or AgentConfigClient(channel, internal_auth(settings))
    agent = await client.get_agent(tenant_id, agent_id)   # voice.v1.Agent; grpc.aio.AioRpcError on failure
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict

import grpc

from services.control.auth import InternalAuth, Permission, Principal, internal_auth
from services.shared.grpc_channels import open_channel
from services.shared.settings import Settings
from voice.v1 import agents_pb2, agents_pb2_grpc

SERVICE_PRINCIPAL = "service:agent"


class AgentConfigClient:
    """GetAgent with a per-process TTL cache keyed by (tenant, agent), and one upstream call for
    concurrent misses of the same agent. Errors are not cached."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        auth: InternalAuth,
        *,
        ttl_seconds: float = 5.0,
        max_entries: int = 1024,
        timeout_seconds: float = 2.0,
    ) -> None:
        self._stub = agents_pb2_grpc.AgentServiceStub(channel)
        self._auth = auth
        self._ttl = ttl_seconds
        self._max = max_entries
        self._timeout = timeout_seconds
        self._cache: OrderedDict[tuple[str, str], tuple[agents_pb2.Agent, float]] = OrderedDict()
        self._inflight: dict[tuple[str, str], asyncio.Future[agents_pb2.Agent]] = {}
        self._hits = 0
        self._misses = 0
        self._channel: grpc.aio.Channel | None = None

    @classmethod
    def connect(cls, settings: Settings, **kwargs: float) -> AgentConfigClient:
        c = settings.control
        channel = open_channel(settings, f"{c.host}:{c.grpc_port}", expect="control")
        client = cls(channel, internal_auth(settings), **kwargs)  # type: ignore[arg-type]
        client._channel = channel
        return client

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()

    async def get_agent(self, tenant_id: str, agent_id: str) -> agents_pb2.Agent:
        key = (tenant_id, agent_id)
        now = time.monotonic()
        cached = self._cache.get(key)
        if cached is not None and cached[1] > now:
            self._hits += 1
            self._cache.move_to_end(key)
            return cached[0]
        pending = self._inflight.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        self._misses += 1
        future: asyncio.Future[agents_pb2.Agent] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            metadata = self._auth.metadata(Principal(tenant_id, SERVICE_PRINCIPAL, Permission.READ))
            reply = await self._stub.GetAgent(
                agents_pb2.GetAgentRequest(id=agent_id), metadata=metadata, timeout=self._timeout
            )
            self._cache[key] = (reply.agent, time.monotonic() + self._ttl)
            if len(self._cache) > self._max:
                self._cache.popitem(last=False)
            future.set_result(reply.agent)
            return reply.agent
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception as exc:
            future.set_exception(exc)
            # Waiters get the error; when there are none, mark it retrieved (no "never retrieved" noise).
            future.exception()
            raise
        finally:
            del self._inflight[key]

    def invalidate(self, tenant_id: str, agent_id: str) -> None:
        self._cache.pop((tenant_id, agent_id), None)

    def stats(self) -> dict[str, int]:
        return {"hits": self._hits, "misses": self._misses}
