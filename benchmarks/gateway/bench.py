"""`make bench-gateway`: GET /v1/agents/{id} through the REST gateway (vegeta, constant rate) vs the same
GetAgent RPC straight to the control plane (ghz), on this machine; prints one JSON object.

Each server runs as its own process (control plane, gateway with GATEWAY_WORKERS uvicorn workers on
one listening socket) against a fresh PostgreSQL schema that is dropped afterwards. The gateway's
overhead is its p99 minus ghz's p99 at the same rate (GATEWAY_RPS). `mtls_overhead_ms_p99` is
GetAgent's p99 on the control plane with mutual TLS (as every internal client uses it; ghz presents the
gateway's certificate) minus its p99 on a second, plaintext control plane on the same database, at
GHZ_RPS, in the same run.
`cpu_ms_per_request`: CPU time (user + system, from /proc) of the gateway's processes during the
GATEWAY_RPS run divided by the requests answered (target 0.5 ms). `max_rps_p99_under_20ms`: the highest
rate of the steps STEP_RATES (STEP_SECONDS each) the gateway answered, all 200, with p99 under 20 ms.
Knobs: GATEWAY_RPS (500), GHZ_RPS (1000), BENCH_SECONDS (10), GATEWAY_WORKERS (1),
STEP_RATES (250,500,750,1000,1250,1500,2000,3000), STEP_SECONDS (5).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import secrets
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from services.control.auth import InternalAuth, Permission, Principal
from services.control.bootstrap import bootstrap
from services.control.migrate import migrate_url
from services.shared.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]


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


async def wait_http(url: str, deadline: float) -> None:
    async with httpx.AsyncClient() as client:
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(url)).status_code < 500:
                    return
            await asyncio.sleep(0.2)
    raise TimeoutError(f"{url} did not answer")


def process_tree(root: int) -> list[int]:
    """`root` and its descendants (uvicorn's workers), from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of `pids` so far (utime and stime of /proc/<pid>/stat)."""
    ticks = 0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def max_rps_under(
    tools: Path, url: str, key: str, rates: list[int], seconds: int, *, p99_ms: float
) -> tuple[float, list[dict[str, Any]]]:
    """Steps up the rate until the gateway misses p99 < `p99_ms`, answers non-200s or falls behind;
    the best rate it held and every step."""
    best, steps = 0.0, []
    for rate in rates:
        try:
            step: dict[str, Any] = {"rate": rate, **run_vegeta(tools, url, key, rate, seconds)}
        except RuntimeError as exc:
            steps.append({"rate": rate, "error": str(exc)[:200]})
            break
        steps.append(step)
        # Vegeta's throughput counts answered requests per second: under 95 % of the asked rate, the
        # gateway (or this machine) did not keep up.
        if step["p99_ms"] >= p99_ms or step["rps"] < 0.95 * rate:
            break
        best = step["rps"]
    return best, steps


def run_vegeta(tools: Path, url: str, key: str, rps: int, seconds: int) -> dict[str, float]:
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as targets:
        targets.write(f"GET {url}\nX-API-Key: {key}\n")
    attack = subprocess.run(
        [
            str(tools / "vegeta"),
            "attack",
            f"-targets={targets.name}",
            f"-rate={rps}",
            f"-duration={seconds}s",
            "-timeout=5s",
            "-max-workers=256",
        ],
        check=True,
        capture_output=True,
    )
    report = subprocess.run(
        [str(tools / "vegeta"), "report", "-type=json"], input=attack.stdout, check=True, capture_output=True
    )
    data = json.loads(report.stdout)
    lat = data["latencies"]
    codes = data.get("status_codes", {})
    if set(codes) != {"200"}:
        raise RuntimeError(f"gateway answered non-200s during the run: {codes}")
    return {
        "rps": round(data["throughput"], 1),
        "requests": data["requests"],
        "p50_ms": round(lat["50th"] / 1e6, 3),
        "p99_ms": round(lat["99th"] / 1e6, 3),
    }


def run_ghz(  # noqa: PLR0917
    tools: Path,
    target: str,
    agent_id: str,
    metadata: dict[str, str],
    rps: int,
    seconds: int,
    transport: list[str],
) -> dict[str, float]:
    out = subprocess.run(
        [
            str(tools / "ghz"),
            *transport,
            "--call",
            "voice.v1.AgentService/GetAgent",
            # Compile the contract locally: ghz's reflection client trips over the googleapis imports.
            "--proto",
            "voice/v1/agents.proto",
            "--import-paths",
            f"{ROOT / 'proto'},{ROOT / 'third_party/googleapis'}",
            "-d",
            json.dumps({"id": agent_id}),
            "--metadata",
            json.dumps(metadata),
            "--rps",
            str(rps),
            "-z",
            f"{seconds}s",
            "-c",
            "50",
            "--connections",
            "4",
            "--format",
            "json",
            target,
        ],
        check=False,
        capture_output=True,
    )
    if out.returncode != 0:
        raise RuntimeError(f"ghz failed: {out.stderr.decode()[-2000:]} {out.stdout.decode()[-2000:]}")
    data = json.loads(out.stdout)
    dist = {d["percentage"]: d["latency"] for d in data["latencyDistribution"]}
    errors = sum((data.get("errorDistribution") or {}).values())
    # ghz cancels the calls in flight when its duration ends ("use of closed network connection"); they
    # are reported, not treated as a failed run.
    return {
        "rps": round(data["rps"], 1),
        "p50_ms": round(dist[50] / 1e6, 3),
        "p99_ms": round(dist[99] / 1e6, 3),
        "errors": errors,
    }


def install_tools() -> str:
    return subprocess.run(
        ["bash", str(ROOT / "benchmarks/gateway/install_tools.sh")],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


async def main() -> int:
    gateway_rps = int(os.environ.get("GATEWAY_RPS", "500"))
    ghz_rps = int(os.environ.get("GHZ_RPS", "1000"))
    seconds = int(os.environ.get("BENCH_SECONDS", "10"))
    workers = int(os.environ.get("GATEWAY_WORKERS", "1"))
    step_rates = [
        int(r) for r in os.environ.get("STEP_RATES", "250,500,750,1000,1250,1500,2000,3000").split(",")
    ]
    step_seconds = int(os.environ.get("STEP_SECONDS", "5"))
    tools = Path(await asyncio.to_thread(install_tools))
    base = load_settings()
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(base.database_url)
    await admin.execute(f'CREATE SCHEMA "{schema}"')
    url = base.database_url + ("&" if "?" in base.database_url else "?") + f"search_path={schema}"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        await migrate_url(url)
        conn = await asyncpg.connect(url)
        tenant_id, _, key = await bootstrap(conn, "Bench", trial_minutes=60.0, platform_admin=False)
        await conn.close()
        control_port, gateway_port, plain_port = free_port(), free_port(), free_port()
        internal, jwt_secret = secrets.token_hex(32), secrets.token_hex(32)
        env = {
            **os.environ,
            "DATABASE_URL": url,
            "INTERNAL_AUTH_SECRET": internal,
            "JWT_SECRET": jwt_secret,
            "CONTROL__GRPC_PORT": str(control_port),
            "CONTROL__METRICS_PORT": "0",
            "API_GATEWAY__PORT": str(gateway_port),
            "API_GATEWAY__WORKERS": str(workers),
            "API_GATEWAY__CONTROL_TARGET": f"127.0.0.1:{control_port}",
            "API_GATEWAY__RATE_LIMITING__DEFAULT_LIMIT": "100000000",
            "API_GATEWAY__RATE_LIMITING__BURST_LIMIT": "100000",
            "LOG_LEVEL": "WARNING",
            "ENVIRONMENT": os.environ.get("ENVIRONMENT") or "development",
        }
        plain_env = {
            **env,
            "INTERNAL_TLS__MODE": "plaintext",
            "CONTROL__GRPC_PORT": str(plain_port),
            "ENVIRONMENT": "development",
        }
        for module, module_env in (
            ("services.control", env),
            ("gateway", env),
            ("services.control", plain_env),
        ):
            procs.append(subprocess.Popen([sys.executable, "-m", module], env=module_env, cwd=ROOT))  # noqa: ASYNC220
        gw = f"http://127.0.0.1:{gateway_port}"
        await wait_http(f"{gw}/health", time.monotonic() + 30)
        async with httpx.AsyncClient(base_url=gw) as client:
            created = await client.post(
                "/v1/agents", json={"name": "Bench agent", "systemPrompt": "Hi"}, headers={"X-API-Key": key}
            )
            created.raise_for_status()
            agent_id = created.json()["agent"]["id"]
            for _ in range(200):  # warm up connections and caches
                (await client.get(f"/v1/agents/{agent_id}", headers={"X-API-Key": key})).raise_for_status()
        metadata = dict(
            InternalAuth(internal.encode()).metadata(Principal(str(tenant_id), "bench", Permission.READ))
        )
        target = f"127.0.0.1:{control_port}"
        # ghz talks to the control plane as the gateway does: mutual TLS with the gateway's certificate.
        pki = Path(base.internal_tls.pki_dir)
        tls = [
            "--cacert",
            str(pki / "ca.crt"),
            "--cert",
            str(pki / "gateway.crt"),
            "--key",
            str(pki / "gateway.key"),
        ]
        gateway_pids = process_tree(procs[1].pid)
        cpu_before = cpu_seconds(gateway_pids)
        gateway = await asyncio.to_thread(
            run_vegeta, tools, f"{gw}/v1/agents/{agent_id}", key, gateway_rps, seconds
        )
        cpu_ms_per_request = (cpu_seconds(gateway_pids) - cpu_before) * 1000 / max(1, gateway["requests"])
        max_rps, steps = await asyncio.to_thread(
            max_rps_under, tools, f"{gw}/v1/agents/{agent_id}", key, step_rates, step_seconds, p99_ms=20.0
        )
        grpc_same_rate = await asyncio.to_thread(
            run_ghz, tools, target, agent_id, metadata, gateway_rps, seconds, tls
        )
        grpc_ghz = await asyncio.to_thread(run_ghz, tools, target, agent_id, metadata, ghz_rps, seconds, tls)
        plain = f"127.0.0.1:{plain_port}"
        grpc_plaintext = await asyncio.to_thread(
            run_ghz, tools, plain, agent_id, metadata, ghz_rps, seconds, ["--insecure"]
        )
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        await admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await admin.close()
    result: dict[str, Any] = {
        "gateway": gateway,
        "grpc_ghz": grpc_ghz,
        "grpc_ghz_at_gateway_rate": grpc_same_rate,
        "grpc_ghz_plaintext": grpc_plaintext,
        "gateway_overhead_ms_p99": round(gateway["p99_ms"] - grpc_same_rate["p99_ms"], 3),
        "mtls_overhead_ms_p99": round(grpc_ghz["p99_ms"] - grpc_plaintext["p99_ms"], 3),
        "cpu_ms_per_request": round(cpu_ms_per_request, 3),
        "max_rps_p99_under_20ms": max_rps,
        "rate_steps": steps,
        "rates": {"gateway_rps": gateway_rps, "ghz_rps": ghz_rps, "seconds": seconds, "workers": workers},
        "targets": {
            "cpu_ms_per_request_max": 0.5,
            "gateway_overhead_ms_p99_max": 5.0,
            "grpc_ghz_p99_ms_max": 10.0,
            "mtls_overhead_ms_p99_max": 1.0,
        },
        "machine": machine(),
    }
    print(json.dumps(result, indent=2))
    out = ROOT / ".var/bench"
    out.mkdir(parents=True, exist_ok=True)
    (out / "gateway.json").write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
