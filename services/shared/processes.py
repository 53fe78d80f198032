"""Several processes of one gRPC service on one port, so a service whose load grows with calls uses
every core.

The parent (`python -m services.<name>` with `<section>.capacity.processes` other than 1) starts that
many copies of itself, each a full single-process server with its own event loop, provider clients and
models, sharing nothing but the backing services. They all bind the same port with SO_REUSEPORT (gRPC's
`grpc.so_reuseport`), so the kernel spreads new connections across them; a process that is full refuses
new sessions itself (RESOURCE_EXHAUSTED), and the caller tries again on another connection.

The parent forwards SIGTERM/SIGINT to every child and waits for all of them (each stops gracefully),
and starts again a child that dies on its own. Child i > 0 serves /metrics on metrics_port + 1000 * i.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import socket
import sys
import time

log = logging.getLogger(__name__)

# Set in each child: its index among the processes of the service.
INDEX_VARIABLE = "SERVICE_PROCESS_INDEX"
METRICS_PORT_STRIDE = 1000
# A child that exits sooner than this after its start failed to start (bad settings, port in use):
# starting it again would fail the same way, so the whole service stops with its status.
START_GRACE_S = 5.0
RESTART_DELAY_S = 1.0
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the supervisor dies, even by SIGKILL, so that no copy is
    left holding the port (Linux prctl; elsewhere a no-op)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def process_count(configured: int) -> int:
    """`configured`, or one per CPU core when it is 0."""
    return configured if configured > 0 else max(1, os.cpu_count() or 1)


def is_child() -> bool:
    return INDEX_VARIABLE in os.environ


def reserve_port(host: str, port: int) -> tuple[socket.socket | None, int]:
    """A fixed port as is; for port 0, a free port held (bound with SO_REUSEPORT, never listening, so it
    takes no connections) until the service stops, so that every child binds the same one."""
    if port != 0:
        return None, port
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, 0))
    return sock, int(sock.getsockname()[1])


def child_environment(
    section: str, index: int, port: int, metrics_port: int, base: dict[str, str]
) -> dict[str, str]:
    """Settings of child `index` as environment overrides (settings travel as environment variables)."""
    env = {
        **base,
        INDEX_VARIABLE: str(index),
        f"{section}__CAPACITY__PROCESSES": "1",
        f"{section}__GRPC_PORT": str(port),
        f"{section}__METRICS_PORT": str(metrics_port + METRICS_PORT_STRIDE * index if metrics_port else 0),
    }
    if base.get("INSTANCE_ID"):
        env["INSTANCE_ID"] = f"{base['INSTANCE_ID']}-{index}"
    return env


class Supervisor:
    """Runs `count` children of `python -m module` and keeps them running until signalled."""

    def __init__(self, module: str, section: str, count: int, *, host: str, port: int, metrics_port: int):
        self._module = module
        self._section = section
        self._count = count
        self._host = host
        self._port = port
        self._metrics_port = metrics_port
        self._children: dict[int, asyncio.subprocess.Process] = {}
        self._stopping = asyncio.Event()

    async def _spawn(self, index: int, port: int) -> asyncio.subprocess.Process:
        env = child_environment(self._section, index, port, self._metrics_port, dict(os.environ))
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", self._module, env=env, preexec_fn=_die_with_parent
        )
        self._children[index] = proc
        return proc

    async def _keep(self, index: int, port: int) -> int:
        """Runs child `index`, starting it again when it dies on its own; its last exit status."""
        while True:
            started = time.monotonic()
            proc = await self._spawn(index, port)
            code = await proc.wait()
            if self._stopping.is_set():
                return code
            if time.monotonic() - started < START_GRACE_S:
                log.error("process failed to start", extra={"data": {"index": index, "status": code}})
                self._stopping.set()
                self._signal_all(signal.SIGTERM)
                return code or 1
            log.error("process died; starting it again", extra={"data": {"index": index, "status": code}})
            await asyncio.sleep(RESTART_DELAY_S)

    def _signal_all(self, sig: signal.Signals) -> None:
        for proc in self._children.values():
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(sig)

    def _stop(self) -> None:
        self._stopping.set()
        self._signal_all(signal.SIGTERM)

    async def run(self) -> int:
        reserved, port = reserve_port(self._host, self._port)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop)
        try:
            log.info(
                "starting processes",
                extra={"data": {"module": self._module, "processes": self._count, "port": port}},
            )
            codes = await asyncio.gather(*(self._keep(i, port) for i in range(self._count)))
        finally:
            if reserved is not None:
                reserved.close()
        # Children stopped by our SIGTERM exit 0 (graceful) or -SIGTERM; a start failure is reported.
        failed = [c for c in codes if c not in (0, -signal.SIGTERM)]
        return failed[0] if failed else 0
