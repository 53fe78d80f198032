"""The bridge (telephony edge) gRPC server: CallControlService (Dial, Answer, Hangup, Transfer, Hold,
Resume, Merge). The PBX side lands with the bridge issue; until then the RPCs answer UNIMPLEMENTED."""

from __future__ import annotations

from services.shared.grpc_server import GrpcServer, bind
from services.shared.settings import Settings
from voice.v1 import call_control_pb2, call_control_pb2_grpc


def build_server(settings: Settings) -> GrpcServer:
    bindings = [bind(call_control_pb2, call_control_pb2_grpc, "CallControlService")]
    return GrpcServer("bridge", settings.webrtc_bridge, bindings)
