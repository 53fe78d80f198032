"""`make bench-events`: the event bus and the worker on this machine; prints one JSON object.

Runs its own nats-server (JetStream, temp dir, ephemeral port) and a fresh PostgreSQL schema (dropped
afterwards), so nothing shared is touched; Redis is the local one. Measures:

- publish_eps.sync: one acked publish at a time (EventBus.publish), events per second;
- publish_eps.pipelined: EventPublisher draining a backlog with pipelined acks;
- e2e_ms p50/p99: event time (set at emit) -> handled by the worker's transcripts handler, publishing
  transcript.turn at BENCH_RATE (1,000) events/s for BENCH_SECONDS (5) after one unmeasured second;
- handled_eps: worker throughput draining a backlog per handler: transcripts (transcript.turn), usage
  (usage.minute: record, credit debit, hourly roll-up), webhooks (signed POSTs delivered to a loopback
  receiver, the endpoint's rate limit lifted).
Progress goes to stderr. Knobs: BENCH_RATE, BENCH_SECONDS, BENCH_BACKLOG (2000), WORKER_CONCURRENCY (8).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import socket
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import asyncpg
import uvloop

from services.control.bootstrap import bootstrap
from services.control.migrate import migrate_url
from services.shared.events import EventBus, new_event
from services.shared.events_publisher import EventPublisher
from services.shared.settings import Settings, load_settings
from services.worker.app import Worker
from voice.v1 import agent_session_pb2, common_pb2, events_pb2

NATS_SERVER = Path(sys.executable).parent / "nats-server"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def machine() -> str:
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores, {cpu}".strip(", ")


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def wait_until(done: Any, within_s: float) -> None:
    """Polls `done()` (progress counters of other tasks) until true or the time is up."""
    deadline = time.monotonic() + within_s
    while not done() and time.monotonic() < deadline:  # noqa: ASYNC110 - polling counters, no event to wait on
        await asyncio.sleep(0.05)


def turn(n: int) -> events_pb2.TranscriptTurnEvent:
    return events_pb2.TranscriptTurnEvent(
        speaker=agent_session_pb2.SPEAKER_CALLER, text=f"caller sentence number {n}", turn_index=n
    )


class Receiver:
    """A webhook endpoint answering 204 to every POST (raw asyncio HTTP/1.1, keep-alive)."""

    def __init__(self) -> None:
        self.count = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                await reader.readexactly(length)
                self.count += 1
                writer.write(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()
        writer.close()


async def publish_sync(settings: Settings, n: int) -> float:
    bus = await EventBus.connect(settings, name="bench-sync")
    try:
        events = [new_event("t_bench", "c_sync", "bench", transcript_turn=turn(i)) for i in range(n)]
        started = time.perf_counter()
        for event in events:
            await bus.publish(event)
        return n / (time.perf_counter() - started)
    finally:
        await bus.close()


async def publish_pipelined(settings: Settings, n: int) -> float:
    publisher = EventPublisher(settings, "bench-pipelined")
    # Connect first, so the measurement is the steady state, not the connection set-up.
    publisher.emit("t_bench", "c_warm", transcript_turn=turn(0))
    await publisher.flush(10)
    events = [new_event("t_bench", "c_pipe", "bench", transcript_turn=turn(i)) for i in range(n)]
    started = time.perf_counter()
    for event in events:
        publisher.publish(event)
    assert await publisher.flush(120), "pipelined publish did not finish"
    elapsed = time.perf_counter() - started
    await publisher.close()
    return n / elapsed


async def main() -> dict[str, Any]:
    rate = int(os.environ.get("BENCH_RATE", "1000"))
    seconds = float(os.environ.get("BENCH_SECONDS", "5"))
    backlog = int(os.environ.get("BENCH_BACKLOG", "2000"))
    concurrency = int(os.environ.get("WORKER_CONCURRENCY", "8"))
    base = load_settings()
    tmp = Path(tempfile.mkdtemp(prefix="bench-events-"))
    port = free_port()
    nats = await asyncio.create_subprocess_exec(
        str(NATS_SERVER), "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", str(tmp / "js"),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(base.database_url)
    await admin.execute(f'CREATE SCHEMA "{schema}"')
    db_url = base.database_url + ("&" if "?" in base.database_url else "?") + f"search_path={schema}"
    try:
        await asyncio.sleep(0.5)
        await migrate_url(db_url)
        worker_cfg = base.worker_service.model_copy(
            update={
                "default_concurrency": concurrency,
                "webhooks_concurrency": concurrency,
                "webhook_rate_per_minute": 1_000_000,
                "grpc_port": 0,
                "metrics_port": 0,
            }
        )
        settings = base.model_copy(
            update={
                "nats_url": f"nats://127.0.0.1:{port}",
                "database_url": db_url,
                "worker_service": worker_cfg,
                "events": base.events.model_copy(update={"spool_dir": str(tmp / "spool")}),
                "outbound_http": base.outbound_http.model_copy(update={"allowed_networks": ["127.0.0.0/8"]}),
            }
        )
        log("publish: one at a time ...")
        sync_eps = await publish_sync(settings, 2000)
        log("publish: pipelined ...")
        pipelined_eps = await publish_pipelined(settings, 50_000)
        bus = await EventBus.connect(settings, name="bench-purge")
        await bus.js.purge_stream(settings.nats_stream)  # the worker below starts from an empty stream
        await bus.close()

        conn = await asyncpg.connect(db_url)
        try:
            tenant_id, _, _ = await bootstrap(conn, "Bench", trial_minutes=1_000_000.0, platform_admin=False)
        finally:
            await conn.close()
        tenant = str(tenant_id)

        handled: dict[str, list[float]] = defaultdict(list)
        latencies: list[float] = []
        measuring: set[str] = set()

        def on_handled(name: str, event: events_pb2.Event) -> None:
            now = time.time()
            handled[name].append(time.perf_counter())
            if name == "worker_transcripts" and event.call_id in measuring:
                latencies.append((now - event.time.ToNanoseconds() / 1e9) * 1000)

        worker = Worker(settings, on_handled=on_handled)
        worker.start()
        await worker.started()
        publisher = EventPublisher(settings, "bench")
        try:
            # Latency at a steady rate: one call's turns, paced.
            log(f"e2e: {rate} events/s for {seconds:g} s ...")
            call = "c_rate"
            interval = 1.0 / rate
            warmup = rate  # the first second warms connections, caches and prepared statements: not measured
            start = time.perf_counter()
            for i in range(warmup + int(rate * seconds)):
                if i == warmup:
                    measuring.add(call)
                delay = start + i * interval - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                publisher.emit(tenant, call if i >= warmup else "c_warmup", transcript_turn=turn(i))
            sent = int(rate * seconds)
            await wait_until(lambda: len(latencies) >= sent, 60)
            measuring.clear()
            tenth = max(len(latencies) // 10, 1)
            log(
                "e2e ms by tenth of the run (median): "
                + ", ".join(
                    f"{percentile(latencies[i : i + tenth], 50):.1f}" for i in range(0, len(latencies), tenth)
                )
            )

            async def drain(name: str, emit: Any, n: int) -> float:
                handled[name].clear()
                for i in range(n):
                    emit(i)
                await wait_until(lambda: len(handled[name]) >= n, 180)
                marks = handled[name]
                return (len(marks) - 1) / (marks[-1] - marks[0]) if len(marks) > 1 else 0.0

            log(f"handled: {backlog} transcript turns ...")
            transcripts_eps = await drain(
                "worker_transcripts",
                lambda i: publisher.emit(tenant, f"c_t{i % 50}", transcript_turn=turn(i)),
                backlog,
            )
            log(f"handled: {backlog} usage minutes ...")
            inbound = common_pb2.CALL_DIRECTION_INBOUND
            usage_eps = await drain(
                "worker_usage",
                lambda i: publisher.emit(
                    tenant,
                    f"c_u{i % 200}",
                    usage_minute=events_pb2.UsageMinute(minute_count=i // 200 + 1, direction=inbound),
                ),
                backlog,
            )
            log(f"handled: {backlog // 2} webhook deliveries ...")
            receiver = Receiver()
            hook_port = await receiver.start()
            conn = await asyncpg.connect(db_url)
            try:
                await conn.execute(
                    """INSERT INTO webhooks (tenant_id, url, events, signing_secret)
                       VALUES ($1, $2, '{call.ended}', 'whsec_bench')""",
                    tenant_id,
                    f"http://127.0.0.1:{hook_port}/hook",
                )
            finally:
                await conn.close()
            n_hooks = backlog // 2
            started = time.perf_counter()
            for i in range(n_hooks):
                publisher.emit(tenant, f"c_w{i}", call_ended=events_pb2.CallEnded(end_reason="caller_hangup"))
            await wait_until(lambda: receiver.count >= n_hooks, 180)
            webhooks_eps = receiver.count / (time.perf_counter() - started)
        finally:
            await publisher.close()
            await worker.stop()
        return {
            "publish_eps": {"sync": round(sync_eps), "pipelined": round(pipelined_eps)},
            "e2e_ms": {
                "p50": round(percentile(latencies, 50), 2) if latencies else None,
                "p99": round(percentile(latencies, 99), 2) if latencies else None,
                "rate_eps": rate,
                "events": len(latencies),
            },
            "handled_eps": {
                "transcripts": round(transcripts_eps),
                "usage": round(usage_eps),
                "webhooks": round(webhooks_eps),
            },
            "worker_concurrency": concurrency,
            "machine": machine(),
        }
    finally:
        with contextlib.suppress(Exception):
            await admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await admin.close()
        nats.terminate()
        await nats.wait()


if __name__ == "__main__":
    # The services' event loop (services/shared/runner.py).
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        print(json.dumps(runner.run(main())))
