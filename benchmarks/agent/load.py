"""Load generator for the agent benchmark: many softphone calls from this process, one JSON line out.

python -m benchmarks.agent.load --target 127.0.0.1:50070 --calls 50 --turns 2
python -m benchmarks.agent.load --target 127.0.0.1:50070 --calls 1000 --concurrency 50 --turns 0
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time

import uvloop

from benchmarks.agent import caller_measured as cm
from benchmarks.agent.fixed_providers import ToneCaller
from services.agent.demo_agent import DEMO_AGENT_ID, DEMO_TENANT_ID
from services.agent.ports import TextToSpeech
from services.agent.providers.tts import TritonTextToSpeech
from services.shared.settings import load_settings
from services.softphone.caller import CallRecord, CallScript, ScriptedCaller


def overhead_ms(record: CallRecord) -> list[float]:
    out = []
    for lat in record.latencies:
        e2e = lat.first_audio_frame_sent.ToNanoseconds()
        out.append((e2e - lat.provider_time.ToNanoseconds() - lat.endpointing.ToNanoseconds()) / 1e6)
    return out


async def run(args: argparse.Namespace) -> dict[str, object]:
    # A tone is speech to the energy VAD; Silero is a speech model and needs a voice (the Triton TTS).
    voice: TextToSpeech = ToneCaller()
    if args.caller == "tts":
        voice = TritonTextToSpeech(load_settings().agent_service.tts)
    caller = ScriptedCaller(args.target, voice, tenant_id=DEMO_TENANT_ID, agent_id=DEMO_AGENT_ID)
    lines = ["What are your opening hours?" for _ in range(args.turns)]
    limit = asyncio.Semaphore(args.concurrency or args.calls)
    rng = random.Random(7)

    async def one(i: int) -> tuple[CallRecord, float]:
        # Calls arrive spread over `stagger` seconds, as they would on a real trunk.
        await asyncio.sleep(rng.uniform(0, args.stagger) if not args.concurrency else 0)
        async with limit:
            started = time.monotonic()
            record = await caller.call(
                CallScript(lines=lines, hangup_after_s=0.2), call_id=f"bench-{args.id_prefix}{i}"
            )
            return record, time.monotonic() - started

    results = await asyncio.gather(*(one(i) for i in range(args.calls)))
    records = [r for r, _ in results]
    return {
        "calls": len(records),
        "ok": sum(r.status == "OK" for r in records),
        "errors": sorted({r.status for r in records if r.status != "OK"})[:5],
        "call_seconds": sum(d for _, d in results),
        "overhead_ms": [o for r in records for o in overhead_ms(r)],
        "answered_turns": sum(len(r.latencies) for r in records),
        "frames_received": sum(r.frames_received for r in records),
        # Measured here, at the caller, from arrival times (benchmarks/agent/caller_measured.py).
        "caller_e2e_ms": [round(v, 2) for r in records for v in cm.caller_e2e_ms(r)],
        "frame_gaps_ms": [round(v, 2) for r in records for v in cm.frame_gaps_ms(r)],
        "server_vs_caller_ms": [round(v, 2) for r in records for v in cm.server_vs_caller_ms(r)],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--target", required=True)
    parser.add_argument("--calls", type=int, required=True)
    parser.add_argument("--turns", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=0, help="0 = all calls at once")
    parser.add_argument("--stagger", type=float, default=2.0)
    parser.add_argument(
        "--id-prefix", default="", help="call ids bench-<prefix><i> (unique across processes)"
    )
    parser.add_argument("--caller", choices=["tone", "tts"], default="tone", help="the caller's voice")
    print(json.dumps(uvloop.run(run(parser.parse_args()))), flush=True)


if __name__ == "__main__":
    main()
