"""The bridge benchmark's peers, in their own process so their CPU is not the bridge's.

`python -m benchmarks.bridge.peers agent --port P`: a stand-in agent (AgentSessionService) that answers
every Converse with a steady tone, 20 ms PCM16 frames at 16 kHz paced by the clock, and reads what the
bridge sends.

`python -m benchmarks.bridge.peers callers --bridge HOST:PORT --number E164 --calls N --codec pcmu`
(or opus) `--hold S`: N phones (the platform's SIP UA + RtpPhone) that call the number, speak a tone
for S seconds and hang up; prints one JSON line {"placed": N, "answered": n}.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import struct
import sys
from collections.abc import AsyncIterator

from services.bridge.sip.sdp import Codec, build_sdp, parse_sdp
from services.bridge.sip.ua import InboundCall, OutboundCall, UserAgent
from services.shared.grpc_server import Context, GrpcServer, bind
from services.shared.settings import ServerSettings, load_settings
from services.softphone.rtp_phone import RtpPhone
from voice.v1 import agent_session_pb2 as pb
from voice.v1 import agent_session_pb2_grpc, media_pb2

RATE = 16000
FRAME = b"".join(struct.pack("<h", int(6000 * math.sin(2 * math.pi * 440 * i / RATE))) for i in range(320))


class ToneAgent(agent_session_pb2_grpc.AgentSessionServiceServicer):
    async def Converse(
        self, request_iterator: AsyncIterator[pb.ConverseRequest], context: Context
    ) -> AsyncIterator[pb.ConverseResponse]:
        done = asyncio.Event()

        async def drain() -> None:
            async for _ in request_iterator:
                pass
            done.set()

        reader = asyncio.create_task(drain())
        loop = asyncio.get_running_loop()
        tick, seq = loop.time(), 0
        try:
            yield pb.ConverseResponse(state=pb.AgentStateChange(state=pb.AGENT_STATE_SPEAKING))
            while not done.is_set():
                yield pb.ConverseResponse(
                    audio=media_pb2.AudioFrame(
                        sequence_number=seq,
                        timestamp=seq * 320,
                        sample_rate=RATE,
                        codec=media_pb2.AUDIO_CODEC_PCM16,
                        channels=1,
                        payload=FRAME,
                    )
                )
                seq += 1
                tick += 0.02
                await asyncio.sleep(max(0.0, tick - loop.time()))
        finally:
            reader.cancel()


async def run_agent(port: int) -> None:
    settings = load_settings()
    server = GrpcServer(
        "agent",
        ServerSettings(host="127.0.0.1", grpc_port=port, metrics_port=0),
        [bind(pb, agent_session_pb2_grpc, "AgentSessionService", ToneAgent())],
        serve_metrics_http=False,
        platform=settings,
    )
    await server.start()
    print("ready", flush=True)
    await asyncio.Event().wait()


async def _refuse(call: InboundCall) -> None:
    call.respond(486, "Busy Here")


async def run_callers(bridge: str, number: str, calls: int, codec: str, hold_s: float) -> None:
    host, _, port = bridge.partition(":")
    ua = UserAgent("127.0.0.1", _refuse)
    await ua.start()
    offer_codec = Codec(111, "opus", 48000, 2) if codec == "opus" else Codec(0, "pcmu", 8000)
    tone = b"".join(
        struct.pack("<h", int(4000 * math.sin(2 * math.pi * 300 * i / 8000))) for i in range(8000)
    )

    async def one(i: int) -> tuple[OutboundCall | None, RtpPhone]:
        await asyncio.sleep(i * 0.02)  # 50 call attempts per second
        phone = RtpPhone(codec)
        await phone.start()
        sdp = build_sdp("127.0.0.1", phone.port, [offer_codec], session_id=i + 1)
        call = await ua.dial(
            f"sip:{number}@{host}:{port}", f"sip:+1555000{i:04d}@127.0.0.1", sdp, peer=(host, int(port))
        )
        if call.final.result().status >= 300:
            return None, phone
        answer = parse_sdp(call.remote_sdp)
        phone.peer = (answer.address, answer.port)
        pcm = tone if codec == "pcmu" else _upsample(tone)
        phone.say(pcm * int(hold_s + 5))
        return call, phone

    placed = await asyncio.gather(*(one(i) for i in range(calls)))
    await asyncio.sleep(hold_s)
    answered = 0
    for call, phone in placed:
        if call is not None:
            answered += 1
            with contextlib.suppress(Exception):
                await call.hangup()
        await phone.close()
    await ua.close()
    print(json.dumps({"placed": calls, "answered": answered}), flush=True)


def _upsample(pcm8k: bytes) -> bytes:
    samples = struct.unpack(f"<{len(pcm8k) // 2}h", pcm8k)
    return struct.pack(f"<{len(samples) * 2}h", *(s for s in samples for _ in range(2)))


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bridge.peers")
    sub = parser.add_subparsers(dest="role", required=True)
    agent = sub.add_parser("agent")
    agent.add_argument("--port", type=int, required=True)
    callers = sub.add_parser("callers")
    callers.add_argument("--bridge", required=True)
    callers.add_argument("--number", required=True)
    callers.add_argument("--calls", type=int, required=True)
    callers.add_argument("--codec", choices=["pcmu", "opus"], default="pcmu")
    callers.add_argument("--hold", type=float, default=8.0)
    args = parser.parse_args(argv)
    if args.role == "agent":
        asyncio.run(run_agent(args.port))
    else:
        asyncio.run(run_callers(args.bridge, args.number, args.calls, args.codec, args.hold))


if __name__ == "__main__":
    main(sys.argv[1:])
