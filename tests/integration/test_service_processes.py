"""Several processes of one service on one port: the agent service as two processes (SO_REUSEPORT),
both answering, all stopped by one SIGTERM; and each child's settings."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time

import psutil

from services.launcher import health_status
from services.shared.processes import INDEX_VARIABLE, child_environment, process_count
from services.shared.settings import Settings

WAIT_S = 60.0


def test_child_settings() -> None:
    env = child_environment("AGENT_SERVICE", 2, 50052, 9102, {"INSTANCE_ID": "node-a", "X": "1"})
    assert env[INDEX_VARIABLE] == "2" and env["X"] == "1"
    assert env["AGENT_SERVICE__CAPACITY__PROCESSES"] == "1"
    assert env["AGENT_SERVICE__GRPC_PORT"] == "50052"
    assert env["AGENT_SERVICE__METRICS_PORT"] == str(9102 + 2000)
    assert env["INSTANCE_ID"] == "node-a-2"
    assert child_environment("AGENT_SERVICE", 1, 1, 0, {})["AGENT_SERVICE__METRICS_PORT"] == "0"
    assert process_count(3) == 3 and process_count(0) == (os.cpu_count() or 1)


def listening_ports(proc: psutil.Process) -> set[int]:
    try:
        return {c.laddr.port for c in proc.net_connections("tcp") if c.status == psutil.CONN_LISTEN}
    except psutil.Error:
        return set()


async def test_agent_as_two_processes_on_one_port(settings: Settings) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {
        **os.environ,
        "AGENT_SERVICE__GRPC_PORT": str(port),
        "AGENT_SERVICE__METRICS_PORT": "0",
        "AGENT_SERVICE__CAPACITY__PROCESSES": "2",
        "LOG_LEVEL": "WARNING",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.agent", env=env, stdin=asyncio.subprocess.DEVNULL
    )
    try:
        parent = psutil.Process(proc.pid)
        end = time.monotonic() + WAIT_S
        children: list[psutil.Process] = []
        listening = 0
        serving = False
        while time.monotonic() < end and (listening < 2 or not serving):
            children = parent.children()
            # Both children bind the one port (SO_REUSEPORT); the kernel gives connections to either.
            listening = sum(1 for child in children if port in listening_ports(child))
            serving = await health_status(f"127.0.0.1:{port}", settings=settings) == "SERVING"
            await asyncio.sleep(0.2)
        assert len(children) == 2 and listening == 2 and serving
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), WAIT_S) == 0
        assert not any(child.is_running() and child.status() != psutil.STATUS_ZOMBIE for child in children)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
