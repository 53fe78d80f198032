"""The bridge's connections to the agent service, and where each call's Converse goes.

The agent runs several processes on one port (SO_REUSEPORT), and the kernel spreads *connections*, not
calls: one HTTP/2 connection would put every call of this bridge on one agent process. So the bridge
holds a few separate connections (`webrtc_bridge.agent_connections`; each channel gets its own
subchannel pool, so they really are separate TCP connections) and gives each new call the next one.
An agent process that is full refuses a session with RESOURCE_EXHAUSTED and `grpc-retry-pushback-ms`;
the call then tries the next connection after that hint (capped), a bounded number of times, and only
before the agent has answered (a session that started is never moved)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc

from services.shared.grpc_channels import DEFAULT_CHANNEL_OPTIONS, open_channel
from services.shared.settings import Settings
from voice.v1 import agent_session_pb2 as pb
from voice.v1 import agent_session_pb2_grpc

log = logging.getLogger(__name__)

if TYPE_CHECKING:  # typing-only names (the generated stub module has no async class at run time)
    from typing import TypeAlias

    from voice.v1.agent_session_pb2_grpc import AgentSessionServiceAsyncStub as Stub

    ConverseCall: TypeAlias = grpc.aio.StreamStreamCall[pb.ConverseRequest, pb.ConverseResponse]
PUSHBACK_KEY = "grpc-retry-pushback-ms"


class AgentAtCapacity(Exception):
    """Every attempt was refused with RESOURCE_EXHAUSTED: no agent process took the call."""

    def __init__(self, attempts: int, details: str) -> None:
        super().__init__(f"agent at capacity after {attempts} attempts: {details}")
        self.attempts = attempts
        self.details = details


@dataclass
class Admitted:
    """A Converse the agent took: the call, its response iterator, and the first response (None when
    the stream ended without one)."""

    call: ConverseCall
    responses: AsyncIterator[pb.ConverseResponse]
    first: pb.ConverseResponse | None


def pushback_seconds(exc: grpc.aio.AioRpcError, default_ms: float, cap_ms: float) -> float:
    """The server's retry hint in seconds, capped; `default_ms` when it sent none or garbage."""
    wanted = default_ms
    for key, value in exc.trailing_metadata() or ():
        if key == PUSHBACK_KEY:
            with contextlib.suppress(TypeError, ValueError):
                wanted = float(value)
    return max(0.0, min(wanted, cap_ms)) / 1000.0


class AgentPool:
    """Round-robin over stubs (one per connection) with retry on refusal. `.Converse` keeps the plain
    stub's shape, so anything that took a stub can take a pool."""

    def __init__(
        self,
        stubs: Sequence[Stub],
        *,
        attempts: int = 3,
        max_pushback_ms: float = 2000.0,
        default_pushback_ms: float = 200.0,
        channels: Sequence[grpc.aio.Channel] = (),
    ) -> None:
        if not stubs:
            raise ValueError("an agent pool needs at least one stub")
        self.stubs = list(stubs)
        self.attempts = max(1, attempts)
        self.max_pushback_ms = max_pushback_ms
        self.default_pushback_ms = default_pushback_ms
        self._channels = list(channels)
        self._next = itertools.cycle(range(len(self.stubs)))

    @classmethod
    def connect(cls, settings: Settings, target: str) -> AgentPool:
        """`webrtc_bridge.agent_connections` separate connections to the agent at `target`, the bridge
        presenting its own identity and requiring the agent's."""
        section = settings.webrtc_bridge
        options = [*DEFAULT_CHANNEL_OPTIONS, ("grpc.use_local_subchannel_pool", 1)]
        channels = [
            open_channel(settings, target, options=options, identity="bridge", expect="agent")
            for _ in range(section.agent_connections)
        ]
        return cls(
            [agent_session_pb2_grpc.AgentSessionServiceStub(c) for c in channels],
            attempts=section.agent_attempts,
            max_pushback_ms=section.agent_max_pushback_ms,
            channels=channels,
        )

    @classmethod
    def of(cls, stub: Stub | AgentPool) -> AgentPool:
        """A pool as is; a plain stub as a pool of one that does not retry (tests, benchmarks)."""
        return stub if isinstance(stub, AgentPool) else cls([stub], attempts=1)

    def pick(self) -> Stub:
        return self.stubs[next(self._next)]

    def Converse(self, requests: AsyncIterator[pb.ConverseRequest]) -> ConverseCall:
        return self.pick().Converse(requests)

    async def converse(
        self,
        requests: Callable[[], AsyncIterator[pb.ConverseRequest]],
        on_call: Callable[[ConverseCall], None] = lambda _: None,
    ) -> Admitted:
        """Opens Converse on the next connection and waits for the agent's first response; on
        RESOURCE_EXHAUSTED before it, waits the pushback hint and tries the next connection. Raises
        AgentAtCapacity when every attempt was refused, the call's own AioRpcError for anything else.
        `requests` makes a fresh request stream per attempt; `on_call` sees each call (to cancel it)."""
        details = ""
        for attempt in range(1, self.attempts + 1):
            call = self.pick().Converse(requests())
            on_call(call)
            responses = aiter(call)
            try:
                first = await anext(responses)
            except StopAsyncIteration:
                return Admitted(call, responses, None)
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                    raise
                details = exc.details() or ""
                if attempt == self.attempts:
                    break
                wait = pushback_seconds(exc, self.default_pushback_ms, self.max_pushback_ms)
                log.info(
                    "agent refused the session; trying the next connection",
                    extra={"data": {"attempt": attempt, "wait_ms": round(wait * 1000), "details": details}},
                )
                await asyncio.sleep(wait)
                continue
            return Admitted(call, responses, first)
        raise AgentAtCapacity(self.attempts, details)

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()
