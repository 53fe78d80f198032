"""`make bench-tts`: time to first audio (TTFA) and real-time factor (RTF) of the TTS node at concurrency
1, 4 and 16, through the real tritonserver (the agent's gRPC streaming client) and with the same engine
called in-process (TtsCore on threads, no Triton). The difference at concurrency 1 is the Triton hop.

Prints one JSON object on stdout: ttfa_ms {triton, inprocess} x {c1, c4, c16} (p50), hop_overhead_ms_p50,
rtf {c1, c4, c16} (p50, through Triton), engine, machine. Progress goes to stderr. Never run as a test.

GPU node (deploy/tts/README.md): with Triton started on the GPU config and the weights, run
  CHATTERBOX_SERVICE__WEIGHTS_PATH=/models/chatterbox-turbo \
    python -m benchmarks.tts.bench --engine chatterbox-turbo
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from services.agent.providers.tts import TritonTextToSpeech
from services.shared.settings import ChatterboxServiceSettings, TtsClientSettings, load_settings
from tts_triton.core import SynthesisParams, TtsCore

SHORT = "Thanks for calling. How can I help you today?"
LEVELS = (1, 4, 16)
# Requests per concurrency level (enough for a stable median, small enough for a laptop).
REQUESTS = {1: 40, 4: 48, 16: 64}
SAMPLE_RATE = 24000


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def p50(values: list[float]) -> float:
    return round(statistics.median(values), 2)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    gpu = ""
    try:
        import torch  # noqa: PLC0415 - only on the GPU node

        if torch.cuda.is_available():
            gpu = f", GPU {torch.cuda.get_device_name(0)}"
    except ImportError:
        pass
    return f"{cpu}, {os.cpu_count()} cores{gpu or ', no GPU'}; tritonserver 2.51 (nvidia-pytriton 0.7.0)"


async def triton_once(client: TritonTextToSpeech, text: str) -> tuple[float, float]:
    """(TTFA ms, RTF) of one streamed utterance through Triton."""
    start = time.perf_counter()
    first = 0.0
    samples = 0
    async for chunk in client.stream(text):
        if not first:
            first = time.perf_counter() - start
        samples += chunk.samples
    total = time.perf_counter() - start
    return first * 1000, total / (samples / SAMPLE_RATE)


def inprocess_once(core: TtsCore, text: str, engine: str) -> tuple[float, float]:
    start = time.perf_counter()
    first = 0.0
    samples = 0
    for chunk in core.synthesize(SynthesisParams(text, engine=engine), lambda: False):
        if not first:
            first = time.perf_counter() - start
        samples += chunk.pcm.size
    total = time.perf_counter() - start
    return first * 1000, total / (samples / SAMPLE_RATE)


async def run_level(
    concurrency: int, total: int, once: Callable[[], Coroutine[Any, Any, tuple[float, float]]]
) -> list[tuple[float, float]]:
    """`total` requests with `concurrency` in flight at any time."""
    results: list[tuple[float, float]] = []
    remaining = total

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            results.append(await once())

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--engine", default="espeak-ng", help="espeak-ng | chatterbox-turbo | chatterbox")
    parser.add_argument("--text", default=SHORT)
    args = parser.parse_args()
    settings = load_settings()
    client = TritonTextToSpeech(
        TtsClientSettings(triton_url=settings.chatterbox_service.triton_url, request_timeout_seconds=120),
        engine=args.engine,
    )
    if not await client.ready():
        raise SystemExit(f"Triton model not ready at {client.settings.triton_url}; run `make tts` first")
    node: ChatterboxServiceSettings = settings.chatterbox_service.model_copy(
        update={"model_name": args.engine}
    )
    core = TtsCore(node)
    result: dict[str, Any] = {"ttfa_ms": {"triton": {}, "inprocess": {}}, "rtf": {}}
    log(f"warming up ({args.engine})")
    for _ in range(5):
        await triton_once(client, args.text)
        inprocess_once(core, args.text, args.engine)
    loop = asyncio.get_running_loop()
    for c in LEVELS:
        n = REQUESTS[c]
        log(f"triton    c={c:<2} {n} requests")
        triton = await run_level(c, n, lambda: triton_once(client, args.text))
        log(f"inprocess c={c:<2} {n} requests")
        with ThreadPoolExecutor(max_workers=c) as pool:

            async def local(pool: ThreadPoolExecutor = pool) -> tuple[float, float]:
                return await loop.run_in_executor(pool, inprocess_once, core, args.text, args.engine)

            inproc = await run_level(c, n, local)
        result["ttfa_ms"]["triton"][f"c{c}"] = p50([t for t, _ in triton])
        result["ttfa_ms"]["inprocess"][f"c{c}"] = p50([t for t, _ in inproc])
        result["rtf"][f"c{c}"] = round(statistics.median(r for _, r in triton), 4)
        ttfa = result["ttfa_ms"]
        log(f"  p50 ttfa triton {ttfa['triton'][f'c{c}']} ms, in-process {ttfa['inprocess'][f'c{c}']} ms")
    result["hop_overhead_ms_p50"] = round(
        result["ttfa_ms"]["triton"]["c1"] - result["ttfa_ms"]["inprocess"]["c1"], 2
    )
    result["engine"] = args.engine
    result["machine"] = machine()
    core.close()
    await client.close()
    print(json.dumps(result))


if __name__ == "__main__":
    asyncio.run(main())
