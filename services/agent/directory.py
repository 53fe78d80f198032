"""Where the agent service finds an agent's configuration at call start."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

import grpc

from services.control.client import AgentConfigClient
from services.shared.settings import Settings
from voice.v1 import agents_pb2


class AgentNotFoundError(LookupError):
    pass


class DirectoryUnavailableError(RuntimeError):
    """The configuration store could not be asked (the call cannot start; the caller may retry)."""


class AgentDirectory(Protocol):
    async def get(self, tenant_id: str, agent_id: str) -> agents_pb2.Agent:
        """The agent, or AgentNotFoundError (also when it belongs to another tenant)."""
        ...


class StaticDirectory:
    """A fixed set of agents: the built-in demo agent (usable with no database) and tests."""

    def __init__(self, agents: Iterable[agents_pb2.Agent]) -> None:
        self._agents = {(a.tenant_id, a.id): a for a in agents}

    async def get(self, tenant_id: str, agent_id: str) -> agents_pb2.Agent:
        try:
            return self._agents[(tenant_id, agent_id)]
        except KeyError:
            raise AgentNotFoundError(f"agent {agent_id!r} not found for tenant {tenant_id!r}") from None


class ControlPlaneDirectory:
    """Agents from the control plane (GetAgent, signed as the agent service, cached a few seconds)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._client: AgentConfigClient | None = None

    async def get(self, tenant_id: str, agent_id: str) -> agents_pb2.Agent:
        if self._client is None:  # created on first use, inside the server's event loop
            self._client = AgentConfigClient.connect(self._settings)
        try:
            return await self._client.get_agent(tenant_id, agent_id)
        except grpc.aio.AioRpcError as exc:
            if exc.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                raise AgentNotFoundError(f"agent {agent_id!r} not found for tenant {tenant_id!r}") from None
            raise DirectoryUnavailableError(f"control plane: {exc.code().name}: {exc.details()}") from None

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()


class LayeredDirectory:
    """Asks each directory in turn; the first that knows the agent answers."""

    def __init__(self, *layers: AgentDirectory) -> None:
        self._layers = layers

    async def get(self, tenant_id: str, agent_id: str) -> agents_pb2.Agent:
        for layer in self._layers[:-1]:
            try:
                return await layer.get(tenant_id, agent_id)
            except AgentNotFoundError:
                continue
        return await self._layers[-1].get(tenant_id, agent_id)
