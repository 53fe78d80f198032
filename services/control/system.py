"""SystemService: platform health (GET /health) from the control plane's view of its dependencies."""

from __future__ import annotations

from services.shared.dependency_health import check_all
from services.shared.grpc_server import Context
from services.shared.settings import Settings
from voice.v1 import system_pb2, system_pb2_grpc

VERSION = "0.1.0"


class SystemServicer(system_pb2_grpc.SystemServiceServicer):
    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    async def CheckHealth(
        self, request: system_pb2.CheckHealthRequest, context: Context
    ) -> system_pb2.CheckHealthResponse:
        results = await check_all(self._settings)
        components = [
            system_pb2.ComponentHealth(
                name=r.name, healthy=r.healthy, detail=r.detail, latency_ms=r.latency_ms
            )
            for r in results
        ]
        status = "ok" if all(r.healthy for r in results) else "degraded"
        return system_pb2.CheckHealthResponse(status=status, components=components, version=VERSION)
