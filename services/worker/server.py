"""The worker process: JetStream consumers, the webhook deliverer and the scheduler behind the platform's
standard server (grpc.health.v1, reflection, /metrics). It serves no RPC of its own.

Health is SERVING only while the consumers fetch from the stream and the deliverer runs; while NATS,
PostgreSQL or Redis are unreachable (at start or later) it reports NOT_SERVING.
"""

from __future__ import annotations

import asyncio
import contextlib

from grpc_health.v1 import health_pb2

from services.shared.grpc_server import GrpcServer
from services.shared.settings import Settings
from services.worker.app import Worker

_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class WorkerServer(GrpcServer):
    def __init__(self, settings: Settings) -> None:
        super().__init__("worker", settings.worker_service, [])
        self.worker = Worker(settings, self.registry)
        self._watch: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await super().start()
        await self.health.set("", _NOT_SERVING)
        self.metrics.up.labels(service=self.name).set(0)
        self.worker.start()
        self._watch = asyncio.create_task(self._watch_health(), name="worker-health")

    async def _watch_health(self) -> None:
        serving: bool | None = None
        while True:
            now = self.worker.healthy
            if now != serving:
                serving = now
                await self.health.set("", _SERVING if now else _NOT_SERVING)
                self.metrics.up.labels(service=self.name).set(1 if now else 0)
            await asyncio.sleep(0.25)

    async def stop(self, grace: float = 5.0) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
            self._watch = None
        await self.worker.stop()
        await super().stop(grace)


def build_server(settings: Settings) -> GrpcServer:
    return WorkerServer(settings)
