"""`make demo-cloud`: the demo call with the cloud configuration, against the local protocol peers.

The agent service runs with `stt.provider=deepgram` and `llm.provider=anthropic` (the real deepgram-sdk and
anthropic clients), pointed at the Deepgram live-transcription peer and the Anthropic Messages peer on
loopback; TTS is the real Triton node. The peers are scripted: Deepgram "hears" the demo lines, Claude
answers like the demo agent would (and asks for a warm transfer to reception). The softphone places the
call and prints the same transcript and latency table as `make demo`.

python -m tests.peers.demo [--say LINE ...]
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

from services.agent.demo_agent import DEMO_AGENT_ID, DEMO_TENANT_ID
from services.agent.providers.factory import ProviderFactory, ProviderSecrets
from services.agent.providers.tts import TritonTextToSpeech
from services.agent.server import build_server
from services.shared.settings import OutboundHttpSettings, load_settings
from services.softphone.caller import CallScript, ScriptedCaller
from services.softphone.report import latency_table, write_wav
from tests.peers.anthropic_peer import AnthropicPeer, Reply
from tests.peers.deepgram_peer import DeepgramPeer

REPO = Path(__file__).resolve().parents[2]
LINES = [
    "Hi, what are your opening hours on Saturday?",
    "I would like to book an appointment with Doctor Smith.",
    "Can I speak to someone at reception please?",
]
RECORDING = REPO / ".var" / "demo-cloud-call.wav"  # under .var/: never committed


def claude(body: dict[str, Any]) -> Reply:
    """What the scripted model answers, from the caller's last words."""
    last = body["messages"][-1]
    said = " ".join(b.get("text", "") for b in last["content"] if b["type"] == "text").lower()
    if any(b["type"] == "tool_result" for b in last["content"]):
        return Reply(text="Please hold.")
    if "hours" in said or "open" in said:
        return Reply(text="On Saturday we are open from 9 AM to 1 PM. Is there anything else?")
    if "appointment" in said or "book" in said:
        return Reply(text="Doctor Smith can see you tomorrow at 10:30 AM. Shall I book that for you?")
    if "reception" in said or "someone" in said:
        return Reply(
            text="Of course, I'm transferring you to reception now.",
            tool_uses=[
                (
                    "transfer_call",
                    {
                        "target": "ext:100",
                        "type": "warm",
                        "context": "Caller asked for reception.",
                        "reason": "caller_request",
                    },
                )
            ],
        )
    return Reply(text="Sorry, could you say that again?")


async def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.peers.demo", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--say", action="append", default=None, metavar="TEXT", help="a caller line (repeatable)"
    )
    args = parser.parse_args(argv)
    lines: list[str] = args.say or LINES
    print("Starting the TTS node (NVIDIA Triton, CPU, espeak-ng engine) ...")
    result = await asyncio.to_thread(
        subprocess.run, ["bash", "scripts/tts.sh", "triton-up"], cwd=REPO, check=False
    )
    if result.returncode != 0:
        return 1
    deepgram, anthropic = DeepgramPeer(), AnthropicPeer()
    deepgram.utterances.extend(lines)  # what the Deepgram peer "hears", in order
    anthropic.default = claude
    await deepgram.start()
    await anthropic.server.start()
    print(f"Deepgram live-transcription peer: {deepgram.url}/v1/listen")
    print(f"Anthropic Messages peer:          {anthropic.url}/v1/messages")
    settings = load_settings()
    section = settings.agent_service
    section = section.model_copy(
        update={
            "grpc_port": 0,
            "metrics_port": 0,
            "stt": section.stt.model_copy(update={"provider": "deepgram", "deepgram_url": deepgram.url}),
            "llm": section.llm.model_copy(
                update={"provider": "anthropic", "anthropic_base_url": anthropic.url}
            ),
        }
    )
    keys = ProviderSecrets(deepgram.api_key, anthropic.api_key, b"demo-tool-secret")
    server = build_server(
        settings.model_copy(update={"agent_service": section}),
        providers=ProviderFactory.from_settings(
            section, keys, outbound=OutboundHttpSettings(allowed_networks=["127.0.0.0/8"])
        ),
    )
    await server.start()
    tts = TritonTextToSpeech(section.tts)
    try:
        print(
            f"\nCalling the demo agent at {server.address} (STT: Deepgram nova-2, LLM: Claude Sonnet);"
            " the caller says:"
        )
        for line in lines:
            print(f"  - {line}")
        print()
        caller = ScriptedCaller(
            server.address, tts, tenant_id=DEMO_TENANT_ID, agent_id=DEMO_AGENT_ID, on_event=print
        )
        record = await caller.call(CallScript(lines=lines))
    finally:
        await tts.close()
        await server.stop(grace=1)
        await anthropic.server.stop()
        await deepgram.stop()
    print(
        f"\nCall {record.call_id}: {record.status}. 'heard' lines come from the Deepgram peer, 'agent' lines"
    )
    print("from the Claude peer through the real SDKs; the voice is the real Triton TTS.")
    print(f"Deepgram sockets: {len(deepgram.connections)}; Claude requests: {len(anthropic.requests)}")
    if record.latencies:
        print("\nPer-turn latency (ms):")
        print(latency_table(record.latencies))
    RECORDING.parent.mkdir(parents=True, exist_ok=True)
    seconds = write_wav(record, RECORDING)
    print(f"\nRecording of both sides: {RECORDING} ({seconds:.1f} s)")
    answered = sum(1 for _, who, _, _ in record.transcript if who == "agent")
    ok = record.status == "OK" and answered >= len(lines)
    print("\nDemo complete." if ok else "\nSomething went wrong (see above).")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main(sys.argv[1:])))
