"""CallControlService on the bridge: every RPC acts on a live call of this instance.

A call another instance carries is answered from its Redis state: FAILED_PRECONDITION when it has
ended, UNAVAILABLE (retry on the owner, named in the message) while it lives elsewhere.
"""

from __future__ import annotations

import re
import uuid
from typing import NoReturn

import grpc

from services.bridge.call import BridgeCall, CallInfo
from services.bridge.service import Bridge, Rejected
from services.bridge.state import CallState
from services.shared.grpc_server import Context
from voice.v1 import agent_session_pb2, call_control_pb2, call_control_pb2_grpc, common_pb2

_E164 = re.compile(r"^\+[1-9][0-9]{6,14}$")
_TARGET = re.compile(r"^(\+[1-9][0-9]{6,14}|ext:[0-9]{1,10})$")
_DIRECTION = {"inbound": common_pb2.CALL_DIRECTION_INBOUND, "outbound": common_pb2.CALL_DIRECTION_OUTBOUND}


def leg_of(call: BridgeCall) -> call_control_pb2.CallLeg:
    return call_control_pb2.CallLeg(
        call_id=call.call_id,
        tenant_id=call.info.tenant_id,
        status=call.leg_proto(),
        direction=_DIRECTION[call.info.direction],
        from_number=call.info.from_number,
        to_number=call.info.to_number,
    )


def _uuid(value: str, name: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise ValueError(f"{name} must be a UUID") from None


class CallControlServicer(call_control_pb2_grpc.CallControlServiceServicer):
    def __init__(self, bridge: Bridge) -> None:
        self._bridge = bridge

    async def _live(self, call_id: str, context: Context) -> BridgeCall:
        call = self._bridge.calls.get(call_id)
        if call is not None and not call.ended.is_set():
            return call
        state = await self._bridge.store.get(call_id) if call_id else {}
        if call is not None or state.get("state") == CallState.ENDED.value:
            await _abort(context, grpc.StatusCode.FAILED_PRECONDITION, "the call has ended")
        if state:
            await _abort(
                context,
                grpc.StatusCode.UNAVAILABLE,
                f"the call is carried by bridge instance {state.get('instance', '?')}",
            )
        await _abort(context, grpc.StatusCode.NOT_FOUND, "no such call")

    async def Dial(
        self, request: call_control_pb2.DialRequest, context: Context
    ) -> call_control_pb2.DialResponse:
        try:
            call_id = _uuid(request.call_id, "call_id")
            tenant_id = _uuid(request.tenant_id, "tenant_id")
            agent_id = _uuid(request.agent_id, "agent_id")
        except ValueError as exc:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        for name, number in (("from_number", request.from_number), ("to_number", request.to_number)):
            if not _E164.fullmatch(number):
                await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"{name} must be E.164")
        if len(request.context) > 50 or any(len(k) > 64 or len(v) > 1024 for k, v in request.context.items()):
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "context: at most 50 short entries")
        if call_id in self._bridge.calls:
            return call_control_pb2.DialResponse(leg=leg_of(self._bridge.calls[call_id]))
        route = await self._bridge.routes.get(request.from_number)
        max_calls = route.max_concurrent_calls if route is not None and route.tenant_id == tenant_id else None
        ring_timeout = float(min(request.ring_timeout_seconds or 30, 120))
        info = CallInfo(
            call_id,
            tenant_id,
            agent_id,
            "outbound",
            request.from_number,
            request.to_number,
            dict(request.context),
        )
        try:
            call = await self._bridge.dial(info, ring_timeout, max_calls)
        except Rejected as rej:
            await _abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED, rej.reason)
        return call_control_pb2.DialResponse(leg=leg_of(call))

    async def Answer(
        self, request: call_control_pb2.AnswerRequest, context: Context
    ) -> call_control_pb2.AnswerResponse:
        call = await self._live(request.call_id, context)
        if request.agent_id and request.agent_id != call.info.agent_id:
            call.info.agent_id = request.agent_id  # answer with another agent of the tenant
        if not self._bridge.answer(call.call_id):
            await _abort(
                context, grpc.StatusCode.FAILED_PRECONDITION, "only a ringing inbound call can be answered"
            )
        return call_control_pb2.AnswerResponse(leg=leg_of(call))

    async def Hangup(
        self, request: call_control_pb2.HangupRequest, context: Context
    ) -> call_control_pb2.HangupResponse:
        call = await self._live(request.call_id, context)
        await call.end((request.reason or "api_hangup")[:100])
        return call_control_pb2.HangupResponse(leg=leg_of(call))

    async def Transfer(
        self, request: call_control_pb2.CallControlServiceTransferRequest, context: Context
    ) -> call_control_pb2.CallControlServiceTransferResponse:
        call = await self._live(request.call_id, context)
        if not _TARGET.match(request.target):
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "target must be E.164 or ext:NNNN")
        if call.state != CallState.CONVERSING:
            await _abort(
                context, grpc.StatusCode.FAILED_PRECONDITION, "only a connected call can be transferred"
            )
        transfer = agent_session_pb2.TransferRequest(
            type=request.type or agent_session_pb2.TRANSFER_TYPE_BLIND,
            target=request.target,
            context=request.context[:4000],
            reason=request.reason[:255],
        )
        self._bridge.ua.spawn(self._bridge.transfer(call, transfer))
        leg = leg_of(call)
        leg.status = common_pb2.CALL_STATUS_TRANSFERRING
        return call_control_pb2.CallControlServiceTransferResponse(leg=leg)

    async def Hold(
        self, request: call_control_pb2.HoldRequest, context: Context
    ) -> call_control_pb2.HoldResponse:
        call = await self._live(request.call_id, context)
        if call.state != CallState.CONVERSING:
            await _abort(context, grpc.StatusCode.FAILED_PRECONDITION, "only a connected call can be held")
        await call.hold(True)
        return call_control_pb2.HoldResponse(leg=leg_of(call))

    async def Resume(
        self, request: call_control_pb2.ResumeRequest, context: Context
    ) -> call_control_pb2.ResumeResponse:
        call = await self._live(request.call_id, context)
        if call.state != CallState.ON_HOLD:
            await _abort(context, grpc.StatusCode.FAILED_PRECONDITION, "the call is not on hold")
        await call.hold(False)
        return call_control_pb2.ResumeResponse(leg=leg_of(call))

    async def Merge(
        self, request: call_control_pb2.MergeRequest, context: Context
    ) -> call_control_pb2.MergeResponse:
        call = await self._live(request.call_id, context)
        guest = await self._live(request.other_call_id, context)
        if guest.info.tenant_id != call.info.tenant_id:
            await _abort(context, grpc.StatusCode.NOT_FOUND, "no such call")
        if not await call.merge(guest):
            await _abort(
                context, grpc.StatusCode.FAILED_PRECONDITION, "both calls must be connected and not merged"
            )
        return call_control_pb2.MergeResponse(leg=leg_of(call))


async def _abort(context: Context, code: grpc.StatusCode, message: str) -> NoReturn:
    await context.abort(code, message)
    raise AssertionError("unreachable")  # context.abort raises
