"""Where the agent service finds an agent's configuration at call start."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from voice.v1 import agents_pb2


class AgentNotFoundError(LookupError):
    pass


class AgentDirectory(Protocol):
    async def get(self, tenant_id: str, agent_id: str) -> agents_pb2.Agent:
        """The agent, or AgentNotFoundError (also when it belongs to another tenant)."""
        ...


class StaticDirectory:
    """A fixed set of agents (the demo agent, tests); the control plane's client replaces it in
    production."""

    def __init__(self, agents: Iterable[agents_pb2.Agent]) -> None:
        self._agents = {(a.tenant_id, a.id): a for a in agents}

    async def get(self, tenant_id: str, agent_id: str) -> agents_pb2.Agent:
        try:
            return self._agents[(tenant_id, agent_id)]
        except KeyError:
            raise AgentNotFoundError(f"agent {agent_id!r} not found for tenant {tenant_id!r}") from None
