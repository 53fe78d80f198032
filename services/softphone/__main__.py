"""voice call: a scripted phone call to an agent.

python -m services.softphone call --say "What are your opening hours?" --say "Goodbye" --out call.wav
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import uvloop

from services.agent.demo_agent import DEMO_AGENT_ID, DEMO_TENANT_ID
from services.agent.providers.tts import TritonTextToSpeech
from services.shared.settings import SettingsError, load_settings
from services.softphone.caller import CallScript, ScriptedCaller
from services.softphone.report import caller_e2e_ms, latency_table, write_wav


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="voice", description="Softphone for the Voice by aiConnected agent service"
    )
    sub = p.add_subparsers(dest="command", required=True)
    call = sub.add_parser("call", help="place a scripted call to an agent")
    call.add_argument(
        "--say",
        action="append",
        default=[],
        metavar="TEXT",
        help='a caller line (repeatable); " | " inside a line = a pause (reading a number)',
    )
    call.add_argument("--agent", default=DEMO_AGENT_ID, help="agent id (default: the demo agent)")
    call.add_argument("--tenant", default=DEMO_TENANT_ID, help="tenant id")
    call.add_argument("--target", default=None, help="agent service host:port (default from settings)")
    call.add_argument(
        "--barge-in",
        type=float,
        default=None,
        metavar="SECONDS",
        help="talk over the agent: say the next line this many seconds into its answer",
    )
    call.add_argument("--out", type=Path, default=None, help="write both sides of the call to this WAV")
    call.add_argument("--voice", default="default_male_1", help="TTS voice of the caller")
    return p


async def run_call(args: argparse.Namespace) -> int:
    settings = load_settings()
    target = args.target or f"{settings.agent_service.host}:{settings.agent_service.grpc_port}"
    tts = TritonTextToSpeech(settings.agent_service.tts)
    try:
        caller = ScriptedCaller(target, tts, tenant_id=args.tenant, agent_id=args.agent, on_event=print)
        script = CallScript(lines=args.say, barge_in_after_s=args.barge_in, caller_voice=args.voice)
        print(f"Calling agent {args.agent} at {target} ...")
        record = await caller.call(script)
    finally:
        await tts.close()
    print(f"\nCall {record.call_id} ended: {record.status}; {record.frames_received} agent frames received")
    if record.latencies:
        print("\nPer-turn latency (ms):")
        print(latency_table(record.latencies, caller_e2e_ms(record)))
    if args.out:
        seconds = write_wav(record, args.out)
        print(f"\nRecording: {args.out} ({seconds:.1f} s, caller and agent mixed)")
    return 0 if record.status == "OK" else 1


def main() -> None:
    args = parser().parse_args()
    try:
        code = uvloop.run(run_call(args))
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        code = 2
    raise SystemExit(code)


if __name__ == "__main__":
    main()
