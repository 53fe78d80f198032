"""Every server bounds how long one unary RPC may run, whatever deadline the caller asked for."""

from __future__ import annotations

import asyncio

import grpc

from services.shared.grpc_channels import open_channel
from services.shared.grpc_server import GrpcServer, bind
from services.shared.settings import Settings
from voice.v1 import call_control_pb2, call_control_pb2_grpc


class SlowCallControl(call_control_pb2_grpc.CallControlServiceServicer):
    async def Dial(
        self, request: call_control_pb2.DialRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> call_control_pb2.DialResponse:
        if request.call_id == "slow":
            await asyncio.sleep(60)
        if request.call_id == "own-timeout":
            raise TimeoutError("the handler's own deadline")
        return call_control_pb2.DialResponse()


async def test_unary_rpc_is_cut_at_the_server_limit_not_the_callers_deadline(settings: Settings) -> None:
    ports = settings.webrtc_bridge.model_copy(
        update={"grpc_port": 0, "metrics_port": 0, "max_unary_seconds": 0.2}
    )
    # Only Dial is needed; the other RPCs keep the generated UNIMPLEMENTED answers.
    servicer = SlowCallControl()  # type: ignore[abstract]
    binding = bind(call_control_pb2, call_control_pb2_grpc, "CallControlService", servicer)
    server = GrpcServer("bridge", ports, [binding], serve_metrics_http=False, platform=settings)
    await server.start()
    try:
        async with open_channel(settings, server.address, identity="control", expect="bridge") as channel:
            stub = call_control_pb2_grpc.CallControlServiceStub(channel)
            # A caller asking for an hour still gets the server's limit.
            try:
                await stub.Dial(call_control_pb2.DialRequest(call_id="slow"), timeout=3600)
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                assert "limit of 0.2 s" in (exc.details() or "")
            else:
                raise AssertionError("the slow RPC was not cut")
            # A handler's own TimeoutError is its error, not the server limit.
            try:
                await stub.Dial(call_control_pb2.DialRequest(call_id="own-timeout"), timeout=30)
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.UNKNOWN
            else:
                raise AssertionError("the handler's error was swallowed")
            # Quick requests are untouched.
            await stub.Dial(call_control_pb2.DialRequest(call_id="fast"), timeout=30)
    finally:
        await server.stop(0)
