"""`make demo`: brings the platform up on this machine and shows what is running.

python -m services.demo            start, check, print, stop (exit status 0 when all is healthy)
python -m services.demo --up       start and leave the servers running (stop with --down)
python -m services.demo --down     stop servers left running by --up
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import grpc

from services.launcher import Platform, health_status, platform_servers, reflected_services, stop_detached
from services.shared.dependency_health import check_all
from services.shared.settings import Settings, SettingsError, load_settings
from voice.v1 import system_pb2, system_pb2_grpc


async def report(settings: Settings, platform: Platform) -> bool:
    ok = True
    print("\nBacking services (loopback):")
    for dep in await check_all(settings):
        ok &= dep.healthy
        mark = "ok  " if dep.healthy else "FAIL"
        print(f"  [{mark}] {dep.name:<9} {dep.detail}  ({dep.latency_ms:.1f} ms)")

    print("\nPlatform gRPC servers (grpc.health.v1 + reflection):")
    for spec in platform.specs:
        address = platform.address(spec.name)
        status = await health_status(address)
        ok &= status == "SERVING"
        services = [s for s in await reflected_services(address) if s.startswith("voice.")]
        print(
            f"  [{'ok  ' if status == 'SERVING' else 'FAIL'}] {spec.name:<8} {address:<16} {status:<8}"
            f" metrics :{spec.settings.metrics_port}  {', '.join(services) or '(health only)'}"
        )

    async with grpc.aio.insecure_channel(platform.address("control")) as channel:
        health = await system_pb2_grpc.SystemServiceStub(channel).CheckHealth(
            system_pb2.CheckHealthRequest(), timeout=10
        )
    ok &= health.status == "ok"
    print(
        f"\nControl plane SystemService.CheckHealth (GET /health): {health.status} (version {health.version})"
    )
    print("\nTry: grpcurl -plaintext", platform.address("agent"), "list")
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
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        return 2
    platform = Platform(platform_servers(settings))
    print("Starting control, agent, bridge and worker servers ...")
    await platform.start()
    try:
        ok = await report(settings, platform)
    finally:
        if args.up:
            print("\nServers left running (logs in .var/run/); stop them with: make down")
        else:
            await platform.stop()
    print("\nAll healthy." if ok else "\nSome components are unhealthy (see above).")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main(sys.argv[1:])))
