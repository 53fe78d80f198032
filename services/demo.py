"""`make demo`: brings the platform up on this machine and shows what is running.

python -m services.demo            start, check, print, stop (exit status 0 when all is healthy)
python -m services.demo --up       start and leave the servers running (stop with --down)
python -m services.demo --down     stop servers left running by --up
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from services.agent.providers.tts import TritonTextToSpeech
from services.demo_seed import seed_demo_agent
from services.demo_summary import CallSummary
from services.launcher import (
    Platform,
    health_status,
    http_status,
    platform_servers,
    reflected_services,
    stop_detached,
)
from services.shared.dependency_health import check_all
from services.shared.settings import Settings, SettingsError, load_settings
from services.softphone.caller import CallScript, ScriptedCaller
from services.softphone.report import latency_table, write_wav
from services.softphone.sip_call import demo_call

DEMO_LINES = [
    "Hi, what are your opening hours on Saturday?",
    "I would like to book an appointment with Doctor Smith.",
    "Can I speak to someone at reception please?",
]
RECORDING = Path("demo-call.wav")


async def start_tts() -> None:
    """The real Triton server with the offline espeak-ng engine (idempotent; first run fetches it)."""
    print("Starting the TTS node (NVIDIA Triton, CPU, espeak-ng engine) ...")
    proc = await asyncio.create_subprocess_exec("bash", "scripts/tts.sh", "triton-up")
    if await proc.wait() != 0:
        raise RuntimeError("scripts/tts.sh triton-up failed (see its output above)")


async def place_call(
    settings: Settings, platform: Platform, tenant_id: str, agent_id: str, api_key: str
) -> bool:
    print("\nCalling Dr. Smith's clinic (the demo agent) with the softphone; the caller says:")
    for line in DEMO_LINES:
        print(f"  - {line}")
    print()
    tts = TritonTextToSpeech(settings.agent_service.tts)
    try:
        caller = ScriptedCaller(
            platform.address("agent"),
            tts,
            tenant_id=tenant_id,
            agent_id=agent_id,
            on_event=print,
            # Calls as the tenant: its API key on Converse (client certificate, counted call slot).
            settings=settings,
            metadata=(("x-api-key", api_key),),
        )
        record = await caller.call(CallScript(lines=DEMO_LINES))
    finally:
        await tts.close()
    print(f"\nCall {record.call_id}: {record.status}. 'heard' lines are what the agent's speech recognition")
    print("understood (PocketSphinx, offline); 'agent' lines are what it said back.")
    if record.latencies:
        print("\nPer-turn latency (ms):")
        print(latency_table(record.latencies))
    seconds = write_wav(record, RECORDING)
    print(f"\nRecording of both sides: {RECORDING} ({seconds:.1f} s)")
    answered = sum(1 for _, who, _, _ in record.transcript if who == "agent")
    return record.status == "OK" and answered >= len(DEMO_LINES) and record.transfer is not None


async def report(settings: Settings, platform: Platform) -> bool:
    ok = True
    print("\nBacking services (loopback):")
    for dep in await check_all(settings):
        ok &= dep.healthy
        mark = "ok  " if dep.healthy else "FAIL"
        print(f"  [{mark}] {dep.name:<9} {dep.detail}  ({dep.latency_ms:.1f} ms)")

    print("\nPlatform servers (gRPC: grpc.health.v1 + reflection; gateway: GET /health):")
    for spec in platform.specs:
        address = platform.address(spec.name)
        if spec.kind == "http":
            code = await asyncio.to_thread(http_status, f"http://{address}/health")
            ok &= code == 200
            print(
                f"  [{'ok  ' if code == 200 else 'FAIL'}] {spec.name:<8} {address:<16} HTTP {code} "
                f" REST API; OpenAPI http://{address}/openapi.json, docs http://{address}/docs"
            )
            continue
        status = await health_status(address)
        ok &= status == "SERVING"
        services = [s for s in await reflected_services(address) if s.startswith("voice.")]
        print(
            f"  [{'ok  ' if status == 'SERVING' else 'FAIL'}] {spec.name:<8} {address:<16} {status:<8}"
            f" metrics :{spec.metrics_port}  {', '.join(services) or '(health only)'}"
        )
    # Internal gRPC is mutual TLS: grpcurl presents the local CA's `client` certificate.
    pki = settings.internal_tls.pki_dir
    print(f"\nTry: grpcurl -cacert {pki}/ca.crt -cert {pki}/client.crt -key {pki}/client.key", end=" ")
    print(platform.address("agent"), "list")
    return ok


async def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.demo", description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--up", action="store_true", help="leave the servers running")
    mode.add_argument("--down", action="store_true", help="stop servers left running by --up")
    args = parser.parse_args(argv)
    if args.down:
        stopped = stop_detached()
        print("stopped:", ", ".join(stopped) if stopped else "nothing was running")
        return 0
    # The demo is a development deployment on this machine, said explicitly (its servers inherit it).
    os.environ.setdefault("ENVIRONMENT", "development")
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        return 2
    await start_tts()
    # One gateway worker is plenty for a demo on a small machine.
    platform = Platform(platform_servers(settings), env={"API_GATEWAY__WORKERS": "1"})
    print("Starting the control, agent, bridge and worker servers and the REST gateway ...")
    await platform.start()
    try:
        ok = await report(settings, platform)
        if not args.up:
            gateway = f"http://{platform.address('gateway')}"
            seeded = await seed_demo_agent(settings, gateway)
            verb = "created" if seeded.created else "updated"
            print(f"\nDemo agent {verb} through the REST gateway (PUT/POST {gateway}/v1/agents):")
            print(f"  tenant {seeded.tenant_id}, agent {seeded.agent_id}; the agent service reads it from")
            print("  the control plane (GetAgent) when the call starts.")
            summary = await CallSummary.begin(settings, gateway)
            # A phone call over SIP/RTP through the bridge (place_call above is the same talk on Converse).
            tts = TritonTextToSpeech(settings.agent_service.tts)
            try:
                ok &= await demo_call(
                    settings,
                    tts,
                    DEMO_LINES,
                    gateway=gateway,
                    api_key=seeded.api_key,
                    tenant_id=seeded.tenant_id,
                    agent_id=seeded.agent_id,
                    recording=RECORDING,
                )
            finally:
                await tts.close()
            ok &= await summary.show()
    finally:
        if args.up:
            print("\nServers left running (logs in .var/run/); stop them with: make down")
        else:
            await platform.stop()
    print("\nDemo complete." if ok else "\nSomething went wrong (see above).")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main(sys.argv[1:])))
