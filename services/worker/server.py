"""The worker: JetStream durable consumers and a scheduler. It serves no RPC of its own, only
grpc.health.v1 (so orchestrators and the demo probe it like any other service) and /metrics."""

from __future__ import annotations

from services.shared.grpc_server import GrpcServer
from services.shared.settings import Settings


def build_server(settings: Settings) -> GrpcServer:
    return GrpcServer("worker", settings.worker_service, [])
