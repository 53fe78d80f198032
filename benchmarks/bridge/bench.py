"""`make bench-bridge`: what the bridge itself adds to a call, and what a call costs it.

The bridge (SIP UA, media loops, audio_core legs, Converse streams, Redis slots) runs in this process on
real PostgreSQL (a scratch schema) and Redis; a stand-in agent that answers with a steady tone and the
SIP phones that call (the platform's UA + RtpPhone, G.711 or Opus) run in two other processes, so the
CPU measured here is the bridge's alone. Prints one JSON object on stdout (progress on stderr):

  added_latency_ms {inbound_p50, inbound_p99, outbound_p50, outbound_p99}
      inbound: audio buffered in the jitter buffer + resampler when each frame goes to Converse
      (RTP packet in -> frame on Converse); outbound: how long each agent frame waits in the playout
      buffer for its 20 ms tick (Converse frame in -> RTP packet out), over all calls of all levels
  cpu_percent_per_call {pcmu, opus}: this process's CPU per concurrent call, % of one core, at the
      largest level without underruns
  max_calls_no_underrun: the largest G.711 level with no playout underrun (a 20 ms tick without the
      agent's next frame while it speaks); jitter-buffer underruns, which depend on how steadily the
      phones' process sends, are listed per level
  jitter_target_ms: the jitter buffer's target delay (the inbound budget is this + 10 ms)
  machine
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import socket
import subprocess
import sys
import time
import uuid
from typing import Any

import asyncpg
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from services.bridge.call import BridgeCall
from services.bridge.service import Bridge
from services.bridge.state import CallState
from services.control.migrate import migrate_url
from services.shared.grpc_channels import open_channel
from services.shared.settings import load_settings
from voice.v1 import agent_session_pb2_grpc

LEVELS = {"pcmu": (10, 25, 50), "opus": (10, 25)}
HOLD_S = 9.0
MEASURE_S = 5.0
NUMBER = "+15550188"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)


class NullEvents:
    """Events are not what is measured here (the publisher has its own benchmark)."""

    def emit(self, tenant_id: str, call_id: str, **payload: Any) -> None:
        return None

    def publish(self, event: Any) -> None:
        return None


def latency(results: list[dict[str, Any]]) -> dict[str, float]:
    """Percentiles over the calls of `results`, after each call's first second (start-up)."""
    probes_in = [v for r in results for c in r["live"] for v in c.probe_in_ms[50:]]
    probes_out = [v for r in results for c in r["live"] for v in c.probe_out_ms[50:]]
    return {
        "inbound_p50": percentile(probes_in, 0.5),
        "inbound_p99": percentile(probes_in, 0.99),
        "outbound_p50": percentile(probes_out, 0.5),
        "outbound_p99": percentile(probes_out, 0.99),
    }


async def seed(url: str) -> str:
    conn = await asyncpg.connect(url)
    try:
        tenant = await conn.fetchval(
            "INSERT INTO tenants (name, slug, max_concurrent_calls) VALUES ('bench', $1, 1000) RETURNING id",
            f"bench-{uuid.uuid4().hex[:8]}",
        )
        await conn.execute(
            "INSERT INTO credit_buckets (tenant_id, minutes_total, minutes_used) VALUES ($1, 100000, 0)",
            tenant,
        )
        agent = await conn.fetchval(
            "INSERT INTO agents (tenant_id, name, system_prompt) VALUES ($1, 'bench', 'x') RETURNING id",
            tenant,
        )
        await conn.execute(
            "INSERT INTO phone_numbers (tenant_id, agent_id, e164, provider) VALUES ($1, $2, $3, 'sip')",
            tenant,
            agent,
            NUMBER,
        )
    finally:
        await conn.close()
    return str(tenant)


async def level(bridge: Bridge, calls: int, codec: str) -> dict[str, Any]:
    before = set(bridge.calls)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "benchmarks.bridge.peers",
        "callers",
        "--bridge",
        f"127.0.0.1:{bridge.ua.port}",
        "--number",
        NUMBER,
        "--calls",
        str(calls),
        "--codec",
        codec,
        "--hold",
        str(HOLD_S),
        stdout=subprocess.PIPE,
    )

    def mine() -> list[BridgeCall]:
        return [c for cid, c in bridge.calls.items() if cid not in before]

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if sum(c.state == CallState.CONVERSING for c in mine()) >= calls:
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(1.0)  # jitter buffers and playout settle
    live = mine()

    def counts() -> tuple[int, int]:
        out = sum(c.underruns for c in live)
        inbound = sum(c.media.stats.kinds.get("underrun", 0) if c.media else 0 for c in live)
        return out, inbound

    out0, in0 = counts()
    cpu0, wall0 = time.process_time(), time.monotonic()
    await asyncio.sleep(MEASURE_S)
    cpu = (time.process_time() - cpu0) / (time.monotonic() - wall0) * 100
    out1, in1 = counts()
    # The bridge's own underruns: a tick with no agent audio while the agent speaks. Jitter-buffer
    # underruns depend on how steadily the phones send (another process on the same cores).
    underruns, inbound_underruns = out1 - out0, in1 - in0
    stdout, _ = await proc.communicate()
    result = json.loads(stdout.decode().strip().splitlines()[-1])
    connected = sum(c.answered_at is not None for c in live)
    log(
        f"  {codec} x{calls}: connected {connected}, cpu {cpu:.1f} %, playout underruns {underruns}, "
        f"jitter-buffer underruns {inbound_underruns}, callers {result}"
    )
    return {
        "calls": calls,
        "connected": connected,
        "cpu_percent": round(cpu, 1),
        "underruns": underruns,
        "inbound_underruns": inbound_underruns,
        "live": live,
    }


async def main() -> dict[str, Any]:
    base = load_settings()
    admin = await asyncpg.connect(base.database_url)
    schema = f"bench_bridge_{uuid.uuid4().hex[:8]}"
    await admin.execute(f'CREATE SCHEMA "{schema}"')
    url = base.database_url + ("&" if "?" in base.database_url else "?") + f"search_path={schema}"
    agent_port = free_port()
    agent = subprocess.Popen(  # noqa: ASYNC220 - started once, before anything is measured
        [sys.executable, "-m", "benchmarks.bridge.peers", "agent", "--port", str(agent_port)],
        stdout=subprocess.PIPE,
    )
    pool = redis = channel = None
    bridge: Bridge | None = None
    try:
        await migrate_url(url)
        await seed(url)
        assert agent.stdout is not None
        await asyncio.to_thread(agent.stdout.readline)  # "ready"
        sip = base.webrtc_bridge.sip.model_copy(update={"port": 0})
        settings = base.model_copy(
            update={"database_url": url, "webrtc_bridge": base.webrtc_bridge.model_copy(update={"sip": sip})}
        )
        pool = await asyncpg.create_pool(url, min_size=1, max_size=4)
        redis = aioredis.Redis.from_url(base.redis_url)
        channel = open_channel(settings, f"127.0.0.1:{agent_port}", identity="bridge")
        bridge = Bridge(
            settings,
            redis=redis,
            pool=pool,
            agent_stub=agent_session_pb2_grpc.AgentSessionServiceStub(channel),
            events=NullEvents(),
            registry=CollectorRegistry(),
            instance="bench",
        )
        bridge.deps.probe = True
        await bridge.start()
        results: dict[str, list[dict[str, Any]]] = {}
        for codec, levels in LEVELS.items():
            results[codec] = []
            for n in levels:
                results[codec].append(await level(bridge, n, codec))
                await asyncio.sleep(1.0)
        # The headline latency is at the first (lightest) G.711 level: the bridge's own addition, not
        # the queueing of a saturated machine (each level's numbers are in "levels").
        for rs in results.values():
            for r in rs:
                r["latency_ms"] = latency([r])
        headline = latency(results["pcmu"][:1])

        def per_call(codec: str) -> float:
            clean = [r for r in results[codec] if r["underruns"] == 0 and r["connected"] == r["calls"]]
            best = clean[-1] if clean else results[codec][0]
            return round(float(best["cpu_percent"]) / max(1, int(best["connected"])), 3)

        clean_pcmu = [
            r["calls"] for r in results["pcmu"] if r["underruns"] == 0 and r["connected"] == r["calls"]
        ]
        return {
            "added_latency_ms": headline,
            "cpu_percent_per_call": {"pcmu": per_call("pcmu"), "opus": per_call("opus")},
            "max_calls_no_underrun": max(clean_pcmu, default=0),
            "jitter_target_ms": settings.webrtc_bridge.sip.jitter_initial_delay_ms,
            "levels": {
                codec: [{k: v for k, v in r.items() if k != "live"} for r in rs]
                for codec, rs in results.items()
            },
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_implementation()} "
            f"{platform.python_version()}",
        }
    finally:
        if bridge is not None:
            await bridge.close()
        if channel is not None:
            await channel.close()
        if redis is not None:
            await redis.aclose()
        if pool is not None:
            await pool.close()
        agent.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            agent.wait(5)
        await admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await admin.close()


if __name__ == "__main__":
    os.environ.setdefault("ENVIRONMENT", "development")
    log("bench-bridge: bridge in this process; stand-in agent and SIP phones in two others")
    print(json.dumps(asyncio.run(main())))
