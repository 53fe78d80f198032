"""`make bench-agent`: the agent service's own cost per call, with providers of fixed, known latency.

The agent server runs in its own process with fixed-latency STT/LLM/TTS (benchmarks/agent/
fixed_providers.py) and the energy VAD; the softphone load generator runs in another process. Prints
one JSON object on stdout (progress on stderr):
  overhead_ms {p50, p99}      per-turn e2e minus provider time minus endpointing waits
  underruns                   playout underruns at the largest load level that ran
  calls_per_core              100 / cpu_percent_per_call (energy VAD)
  max_sessions_no_underrun    largest concurrent-call level with zero underruns and every call OK
  caller_e2e_ms {idle_p50, idle_p95, load_p50, load_p95, load_level}   measured by the softphone load
                              generator (its own processes): caller's end of speech (from its audio) to
                              the first agent audio frame received, per turn
  frame_gap_ms_p99            gaps between agent frames inside a reply, as received, at load_level
  late_frames_per_call_minute gaps over 40 ms per minute of call, at load_level
  rss_mb_per_call             agent RSS peak while holding load_level calls (the process' first load)
                              minus its RSS just before, per call
  loop_lag_ms_p99             agent event-loop lag p99 over the load_level run (its /metrics histogram)
  server_vs_caller_ms_p50     caller-measured minus TurnLatency.first_audio_frame_sent, per turn
  cpu_percent_per_call        {energy_vad, silero}: the reference level's figure, and a run of
                              --silero-level calls with Silero VAD and Triton TTS callers
  max_calls_no_degradation    largest level with caller p95 within 100 ms of idle and gap p99 < 40 ms
  rss_growth_mb_per_1000_sessions   server RSS growth per 1,000 sessions between the 2nd and 3rd of
                              three rounds of churn (the 1st round absorbs allocator warm-up)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import re
import socket
import statistics
import sys
import time
import urllib.request
from typing import Any

import psutil

from benchmarks.agent import caller_measured as cm
from services.launcher import wait_serving

LEVELS = (10, 25, 50, 100, 150)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def metric_sum(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? ([0-9.e+-]+)$", text, re.M))


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def load(target: str, *extra: str, caller: str = "tone") -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "benchmarks.agent.load",
        "--target",
        target,
        "--caller",
        caller,
        *extra,
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"load generator failed ({proc.returncode})")
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result


async def load_spread(
    target: str, calls: int, procs: int, *extra: str, caller: str = "tone"
) -> dict[str, Any]:
    """`calls` calls from `procs` load-generator processes at once (so the callers' own event loops are
    not what is measured), merged."""
    procs = max(1, min(procs, calls))
    shares = [calls // procs + (i < calls % procs) for i in range(procs)]
    parts = await asyncio.gather(
        *(
            load(target, "--calls", str(n), "--id-prefix", f"p{i}-", *extra, caller=caller)
            for i, n in enumerate(shares)
        )
    )
    merged: dict[str, Any] = {"errors": sorted({e for p in parts for e in p["errors"]})[:5]}
    for key, value in parts[0].items():
        if isinstance(value, (int, float)) and key != "errors":
            merged[key] = sum(p[key] for p in parts)
        elif isinstance(value, list) and key != "errors":
            merged[key] = [v for p in parts for v in p[key]]
    return merged


def metrics_text(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


async def caller_measured(
    target: str, metrics_port: int, proc: psutil.Process, level: int, procs: int, *, caller: str = "tone"
) -> dict[str, Any]:
    """Idle (one call) and loaded (`level` concurrent calls) as the callers hear it."""
    log("caller-measured: idle (1 call, 3 turns)")
    idle = await load(target, "--calls", "1", "--turns", "3", "--stagger", "0", caller=caller)
    log(f"caller-measured: {level} concurrent calls, 2 turns, from {procs} load processes")
    rss_before = proc.memory_info().rss / 2**20
    before = metrics_text(metrics_port)
    cpu_before = sum(proc.cpu_times()[:2])
    peak = rss_before
    task = asyncio.ensure_future(load_spread(target, level, procs, "--turns", "2", caller=caller))
    while not task.done():
        peak = max(peak, proc.memory_info().rss / 2**20)
        await asyncio.wait({task}, timeout=0.25)
    loaded = task.result()
    cpu = sum(proc.cpu_times()[:2]) - cpu_before
    after = metrics_text(metrics_port)
    gaps = loaded["frame_gaps_ms"]
    call_minutes = max(loaded["call_seconds"], 1e-9) / 60
    lag = cm.histogram_quantile(after, "agent_event_loop_lag_seconds", 0.99, before)
    return {
        "caller_e2e_ms": {
            "idle_p50": round(percentile(idle["caller_e2e_ms"], 0.5), 1),
            "idle_p95": round(percentile(idle["caller_e2e_ms"], 0.95), 1),
            "load_p50": round(percentile(loaded["caller_e2e_ms"], 0.5), 1),
            "load_p95": round(percentile(loaded["caller_e2e_ms"], 0.95), 1),
            "load_level": level,
        },
        "frame_gap_ms_p99": round(percentile(gaps, 0.99), 1),
        "late_frames_per_call_minute": round(sum(g > cm.LATE_GAP_MS for g in gaps) / call_minutes, 2),
        "rss_mb_per_call": round((peak - rss_before) / level, 2),
        "loop_lag_ms_p99": None if math.isnan(lag) else round(lag * 1000, 1),
        "server_vs_caller_ms_p50": round(percentile(loaded["server_vs_caller_ms"], 0.5), 1),
        "caller_measured_calls_ok": loaded["ok"],
        "caller_measured_turns": len(loaded["caller_e2e_ms"]),
        "cpu_percent_per_call_caller_level": round(100 * cpu / max(loaded["call_seconds"], 1e-9), 3),
    }


async def silero_cpu(level: int, procs: int) -> float | None:
    """Agent CPU per call in % of a core with Silero VAD (callers speak with the Triton TTS voice)."""
    port, metrics_port = free_port(), free_port()
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "benchmarks.agent.server", "--port", str(port),
        "--metrics-port", str(metrics_port), "--vad", "silero",
        env={**os.environ, "LOG_LEVEL": "WARNING"},
    )  # fmt: skip
    target = f"127.0.0.1:{port}"
    proc = psutil.Process(server.pid)
    try:
        await wait_serving(target, 60, server)
        log(f"silero: {level} calls, 2 turns, Triton TTS voices")
        cpu_before = sum(proc.cpu_times()[:2])
        result = await load_spread(target, level, procs, "--turns", "2", caller="tts")
        cpu = sum(proc.cpu_times()[:2]) - cpu_before
        if result["ok"] < level:
            log(f"silero: only {result['ok']} of {level} calls ok: {result['errors']}")
            return None
        return round(100 * cpu / max(float(result["call_seconds"]), 1e-9), 3)  # type: ignore[no-any-return]
    except Exception as exc:  # the key is optional (Triton may be down): say why
        log(f"silero run skipped: {exc}")
        return None
    finally:
        server.terminate()
        await server.wait()


async def offline_stack(level: int, procs: int) -> dict[str, Any]:
    """The caller-measured keys against the offline stack of `make demo` (callers speak with the Triton
    voice), in a fresh agent process."""
    port, metrics_port = free_port(), free_port()
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "benchmarks.agent.server", "--port", str(port),
        "--metrics-port", str(metrics_port), "--providers", "offline",
        env={**os.environ, "LOG_LEVEL": "WARNING"},
    )  # fmt: skip
    target = f"127.0.0.1:{port}"
    try:
        await wait_serving(target, 120, server)
        log(f"offline stack at {target}")
        return await caller_measured(
            target, metrics_port, psutil.Process(server.pid), level, procs, caller="tts"
        )
    finally:
        server.terminate()
        await server.wait()


async def main(
    levels: tuple[int, ...],
    churn: int,
    vad: str = "energy",
    *,
    caller_level: int = 25,
    load_procs: int = 2,
    silero_level: int = 10,
    offline_level: int = 0,
) -> dict[str, Any]:
    port, metrics_port = free_port(), free_port()
    server = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "benchmarks.agent.server",
        "--port",
        str(port),
        "--metrics-port",
        str(metrics_port),
        "--vad",
        vad,
        env={**os.environ, "LOG_LEVEL": "WARNING"},
    )
    target = f"127.0.0.1:{port}"
    proc = psutil.Process(server.pid)
    try:
        await wait_serving(target, 60, server)
        log(f"agent server (fixed-latency providers) at {target}, pid {server.pid}")

        # First, before any other load: RSS per call is then what holding `caller_level` calls costs
        # this process (its allocator has not been grown by earlier rounds).
        heard: dict[str, Any] = (
            await caller_measured(target, metrics_port, proc, caller_level, load_procs)
            if caller_level
            else {}
        )
        log("warm-up: 100 short sessions")
        await load(target, "--calls", "100", "--concurrency", "50", "--turns", "0")
        # Three rounds of churn: the first absorbs allocator warm-up, the trend is between the others.
        rss = [proc.memory_info().rss / 2**20]
        churned_ok = 0
        for round_ in range(1, 4):
            log(f"churn round {round_}/3: {churn} short sessions (greeting, hang up), 50 at a time")
            churned = await load(target, "--calls", str(churn), "--concurrency", "50", "--turns", "0")
            churned_ok += churned["ok"]
            rss.append(proc.memory_info().rss / 2**20)
        rss_growth = (rss[3] - rss[1]) / 2 * 1000 / churn

        per_level = []
        for n in levels:
            cpu_before = sum(proc.cpu_times()[:2])
            under_before = metric_sum(metrics_port, "playout_underruns_total")
            started = time.monotonic()
            # Silero only hears speech: with it, the callers speak with the Triton TTS voice.
            caller = "tts" if vad == "silero" else "tone"
            result = await load_spread(target, n, load_procs, "--turns", "2", caller=caller)
            wall = time.monotonic() - started
            cpu = sum(proc.cpu_times()[:2]) - cpu_before
            underruns = metric_sum(metrics_port, "playout_underruns_total") - under_before
            overheads = result["overhead_ms"]
            level = {
                "sessions": n,
                "ok": result["ok"],
                "underruns": int(underruns),
                "cpu_percent_per_call": round(100 * cpu / max(result["call_seconds"], 1e-9), 3),
                "overhead_ms_p50": round(percentile(overheads, 0.5), 2),
                "overhead_ms_p99": round(percentile(overheads, 0.99), 2),
                "turns": result["answered_turns"],
                "wall_s": round(wall, 1),
                "errors": result["errors"],
                "caller_e2e_ms_p95": round(percentile(result["caller_e2e_ms"], 0.95), 1),
                "frame_gap_ms_p99": round(percentile(result["frame_gaps_ms"], 0.99), 1),
            }
            per_level.append(level)
            log(json.dumps(level))
            if result["ok"] < n:
                break
    finally:
        server.terminate()
        await server.wait()

    clean = [lv for lv in per_level if lv["underruns"] == 0 and lv["ok"] == lv["sessions"]]
    reference = clean[-1] if clean else per_level[0]
    all_overheads = [lv["overhead_ms_p50"] for lv in clean]
    cpu_per_call = reference["cpu_percent_per_call"]
    silero = await silero_cpu(silero_level, load_procs) if silero_level and vad == "energy" else None
    offline = await offline_stack(offline_level, load_procs) if offline_level else None
    return {
        **heard,
        **({"offline_stack": offline} if offline else {}),
        "overhead_ms": {"p50": reference["overhead_ms_p50"], "p99": reference["overhead_ms_p99"]},
        "underruns": per_level[-1]["underruns"],
        "cpu_percent_per_call": {vad + "_vad": cpu_per_call, "silero": silero}
        if vad == "energy"
        else {"silero": cpu_per_call},
        "calls_per_core": round(100 / cpu_per_call, 1) if cpu_per_call else None,
        "max_sessions_no_underrun": clean[-1]["sessions"] if clean else 0,
        # Largest level (all calls ok) whose caller-measured p95 is within 100 ms of idle and whose
        # frame gaps p99 stay under 40 ms; levels stop at the largest one asked for.
        "max_calls_no_degradation": max(
            (
                lv["sessions"]
                for lv in per_level
                if heard
                and lv["ok"] == lv["sessions"]
                and lv["caller_e2e_ms_p95"] <= heard["caller_e2e_ms"]["idle_p95"] + 100
                and lv["frame_gap_ms_p99"] < cm.LATE_GAP_MS
            ),
            default=0,
        ),
        "rss_growth_mb_per_1000_sessions": round(rss_growth, 2),
        "churn_sessions_ok": churned_ok,
        "rss_mb_after_each_churn_round": [round(r, 1) for r in rss],
        "levels": per_level,
        "overhead_p50_across_clean_levels_ms": round(statistics.median(all_overheads), 2)
        if all_overheads
        else None,
        "vad": vad,
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
        },
    }


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--levels", default=",".join(map(str, LEVELS)))
    parser.add_argument("--churn", type=int, default=400)
    parser.add_argument(
        "--caller-level", type=int, default=25, help="concurrent calls of the caller-measured load (0: skip)"
    )
    parser.add_argument("--load-procs", type=int, default=2, help="load-generator processes")
    parser.add_argument(
        "--offline-level",
        type=int,
        default=0,
        help="also measure the offline stack of make demo at this many calls (key offline_stack; 0: skip)",
    )
    parser.add_argument("--silero-level", type=int, default=10, help="calls of the Silero CPU run (0: skip)")
    parser.add_argument(
        "--vad",
        choices=["energy", "silero"],
        default="energy",
        help="VAD in the agent server (silero: callers speak with the Triton TTS, `make tts` first)",
    )
    args = parser.parse_args()
    levels = tuple(int(x) for x in args.levels.split(","))
    result = main(
        levels,
        args.churn,
        args.vad,
        caller_level=args.caller_level,
        load_procs=args.load_procs,
        silero_level=args.silero_level,
        offline_level=args.offline_level,
    )
    print(json.dumps(asyncio.run(result)))


if __name__ == "__main__":
    cli()
