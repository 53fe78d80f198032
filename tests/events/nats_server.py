"""A private nats-server (JetStream, file storage in a temp dir) on an ephemeral loopback port, so tests
can restart or stop it without touching the shared one."""

from __future__ import annotations

import asyncio
import socket
import sys
from pathlib import Path

NATS_SERVER = Path(sys.executable).parent / "nats-server"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrivateNats:
    def __init__(self, store: Path) -> None:
        self.store = store
        self.port = free_port()
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            str(NATS_SERVER), "-js", "-a", "127.0.0.1", "-p", str(self.port), "-sd", str(self.store),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        for _ in range(200):
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            writer.close()
            await writer.wait_closed()
            return
        raise RuntimeError("private nats-server did not start")

    async def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            await asyncio.wait_for(self.proc.wait(), 10)
            self.proc = None
