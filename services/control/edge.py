"""The control plane's client of the telephony edge (CallControlService on the bridge): places the
calls of `POST /v1/calls` and acts on live calls for hang-up and transfer requests.

The channel is opened on first use (inside the server's event loop) with the control plane's service
identity. `dial_until_placed` retries while no bridge is reachable, for at most the call set-up time,
so a bridge restart does not fail calls that were just accepted.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import grpc

from services.shared.grpc_channels import open_channel
from services.shared.settings import Settings
from voice.v1 import agent_session_pb2, call_control_pb2, call_control_pb2_grpc

log = logging.getLogger(__name__)

RPC_TIMEOUT_S = 5.0
RETRY_S = 0.5
# The bridge does not carry the call (or no bridge is up): the caller falls back to the stored record.
NOT_LIVE = (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


class Edge:
    def __init__(self, settings: Callable[[], Settings]) -> None:
        self._settings_of = settings
        self._channel: grpc.aio.Channel | None = None
        self._stub: call_control_pb2_grpc.CallControlServiceAsyncStub | None = None

    def _bridge(self) -> call_control_pb2_grpc.CallControlServiceAsyncStub:
        if self._stub is None:
            settings = self._settings_of()
            b = settings.webrtc_bridge
            self._channel = open_channel(settings, f"{b.host}:{b.grpc_port}", expect="bridge")
            self._stub = call_control_pb2_grpc.CallControlServiceStub(self._channel)
        return self._stub

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = self._stub = None

    async def dial_until_placed(self, request: call_control_pb2.DialRequest) -> None:
        """Dial; retried while the bridge is unreachable, up to the set-up timeout. Raises the last
        grpc.aio.AioRpcError when the call could not be placed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._settings_of().webrtc_bridge.timeouts.call_setup_timeout_seconds
        while True:
            try:
                await self._bridge().Dial(request, timeout=RPC_TIMEOUT_S)
                return
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE or loop.time() + RETRY_S > deadline:
                    raise
            await asyncio.sleep(RETRY_S)

    async def hangup(self, call_id: str, reason: str) -> bool:
        """True when the bridge ended the live call; False when it carries no such call."""
        try:
            await self._bridge().Hangup(
                call_control_pb2.HangupRequest(call_id=call_id, reason=reason), timeout=RPC_TIMEOUT_S
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() in (*NOT_LIVE, grpc.StatusCode.FAILED_PRECONDITION):
                return False
            raise
        return True

    async def transfer(
        self,
        call_id: str,
        kind: agent_session_pb2.TransferType.ValueType,
        target: str,
        context: str,
        reason: str,
    ) -> bool:
        """True when the bridge started the transfer of the live call; False when it carries no such
        call; FAILED_PRECONDITION (not connected) is raised to the caller."""
        request = call_control_pb2.CallControlServiceTransferRequest(
            call_id=call_id, type=kind, target=target, context=context, reason=reason
        )
        try:
            await self._bridge().Transfer(request, timeout=RPC_TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            if exc.code() in NOT_LIVE:
                return False
            raise
        return True
