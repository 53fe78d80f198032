"""Starts the platform's servers as local processes, waits until they answer grpc.health.v1, and stops
them. Used by `make demo`, `make up` / `make down`, and the end-to-end tests.

Each server runs as `python -m services.<name>`; its pid and log go under `.var/run/`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import grpc
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

from services.shared.grpc_channels import open_channel
from services.shared.settings import ServerSettings, Settings, load_settings

RUN_DIR = Path(".var/run")


@dataclass(frozen=True)
class ServerSpec:
    name: str
    module: str
    host: str
    port: int
    metrics_port: int | None = None
    # gRPC servers are probed with grpc.health.v1; the REST gateway with GET /health.
    kind: Literal["grpc", "http"] = "grpc"

    @classmethod
    def grpc(cls, name: str, module: str, settings: ServerSettings) -> ServerSpec:
        return cls(name, module, settings.host, settings.grpc_port, settings.metrics_port)


def platform_servers(settings: Settings) -> list[ServerSpec]:
    gateway = settings.api_gateway
    return [
        ServerSpec.grpc("control", "services.control", settings.control),
        ServerSpec.grpc("agent", "services.agent", settings.agent_service),
        ServerSpec.grpc("bridge", "services.bridge", settings.webrtc_bridge),
        ServerSpec.grpc("worker", "services.worker", settings.worker_service),
        ServerSpec("gateway", "gateway", gateway.host, gateway.port, kind="http"),
    ]


def http_status(url: str) -> int | None:
    """The HTTP status of GET `url` (None when nothing answers). Blocking: call it in a thread."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except (OSError, ValueError):
        return None


async def health_status(
    address: str, service: str = "", deadline_s: float = 2.0, settings: Settings | None = None
) -> str:
    """The grpc.health.v1 status name of `service` at `address` ("SERVING", ...), or the error. Over the
    same channels as the services (mutual TLS unless the settings choose plaintext)."""
    # Typed multicallables instead of the generated stubs, whose published type stubs are incomplete.
    async with open_channel(settings or load_settings(), address) as channel:
        check = channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        try:
            reply = await check(health_pb2.HealthCheckRequest(service=service), timeout=deadline_s)
        except grpc.aio.AioRpcError as exc:
            return f"{exc.code().name}: {exc.details()}"
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


async def reflected_services(address: str, settings: Settings | None = None) -> list[str]:
    """Services a server lists over gRPC reflection (what `grpcurl list` shows)."""
    async with open_channel(settings or load_settings(), address) as channel:
        info = channel.stream_stream(
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        call = info(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
        async for reply in call:
            return sorted(s.name for s in reply.list_services_response.service)
    return []


async def wait_serving(
    address: str, deadline_s: float, proc: asyncio.subprocess.Process | None = None, kind: str = "grpc"
) -> None:
    """Waits until the server answers: SERVING over grpc.health.v1, or any HTTP answer on /health."""
    end = time.monotonic() + deadline_s
    status = "not started"
    while time.monotonic() < end:
        if proc is not None and proc.returncode is not None:
            raise RuntimeError(f"server at {address} exited with status {proc.returncode}")
        if kind == "http":
            if await asyncio.to_thread(http_status, f"http://{address}/health") is not None:
                return
            status = "no answer"
        else:
            status = await health_status(address, deadline_s=1.0)
            if status == "SERVING":
                return
        await asyncio.sleep(0.1)
    raise TimeoutError(f"server at {address} not serving after {deadline_s:.0f} s (last: {status})")


class Platform:
    """The set of running server processes."""

    def __init__(
        self, specs: list[ServerSpec], run_dir: Path = RUN_DIR, env: dict[str, str] | None = None
    ) -> None:
        self.specs = specs
        self.run_dir = run_dir
        # Environment of the children: ours plus overrides (settings travel as environment variables).
        self.env = {**os.environ, **(env or {})}
        self.procs: dict[str, asyncio.subprocess.Process] = {}

    def spec(self, name: str) -> ServerSpec:
        return next(s for s in self.specs if s.name == name)

    def address(self, name: str) -> str:
        spec = self.spec(name)
        return f"{spec.host}:{spec.port}"

    async def start(self, *, startup_timeout: float = 30.0) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for spec in self.specs:
            log_path = self.run_dir / f"{spec.name}.log"
            with log_path.open("ab") as log_file:
                proc = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    spec.module,
                    stdout=log_file,
                    stderr=log_file,
                    stdin=asyncio.subprocess.DEVNULL,
                    start_new_session=True,
                    env=self.env,
                )
            self.procs[spec.name] = proc
            (self.run_dir / f"{spec.name}.pid").write_text(str(proc.pid))
        try:
            await asyncio.gather(
                *(
                    wait_serving(self.address(s.name), startup_timeout, self.procs[s.name], s.kind)
                    for s in self.specs
                )
            )
        except Exception as exc:
            await self.stop()
            logs = ", ".join(str(self.run_dir / f"{s.name}.log") for s in self.specs)
            raise RuntimeError(f"{exc}; see {logs}") from exc

    async def stop(self, grace: float = 10.0) -> None:
        for proc in self.procs.values():
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        for name, proc in self.procs.items():
            try:
                await asyncio.wait_for(proc.wait(), grace)
            except TimeoutError:
                proc.kill()
                await proc.wait()
            (self.run_dir / f"{name}.pid").unlink(missing_ok=True)
        self.procs.clear()


def stop_detached(run_dir: Path = RUN_DIR) -> list[str]:
    """Stops servers left running by `make up` (from their pid files); returns their names."""
    stopped = []
    for pid_file in sorted(run_dir.glob("*.pid")):
        with contextlib.suppress(ValueError, ProcessLookupError):
            os.kill(int(pid_file.read_text()), signal.SIGTERM)
            stopped.append(pid_file.stem)
        pid_file.unlink(missing_ok=True)
    return stopped
