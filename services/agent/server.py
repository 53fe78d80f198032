"""The agent service's gRPC server: AgentSessionService.Converse, one stream per call. The
conversation engine lands with the agent issue; until then Converse answers UNIMPLEMENTED."""

from __future__ import annotations

from services.shared.grpc_server import GrpcServer, bind
from services.shared.settings import Settings
from voice.v1 import agent_session_pb2, agent_session_pb2_grpc


def build_server(settings: Settings) -> GrpcServer:
    bindings = [bind(agent_session_pb2, agent_session_pb2_grpc, "AgentSessionService")]
    return GrpcServer("agent", settings.agent_service, bindings)
