"""`make demo`'s phone call: a scripted caller dials the demo number over SIP/RTP (G.711) through the
bridge, like a phone on a SIP trunk would, and "reception", a second SIP phone on the trunk, takes the
call when the agent transfers it.

Both phones are the platform's own SIP user agent (services.bridge.sip) with an RtpPhone for media;
the caller speaks with the TTS node's voice. What it prints: the SIP dialogs, the call's transcript (from
the agent's transcript.turn events on the bus), the latency per turn as the caller measures it (end of its
speech -> first agent audio back), and a WAV of both sides.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import wave
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx
import nats
import numpy as np
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

import audio_core
from services.agent.ports import TextToSpeech, VoiceSelection
from services.bridge.sip.message import SipMessage
from services.bridge.sip.sdp import Codec, answer_direction, build_sdp, choose_codec, parse_sdp
from services.bridge.sip.ua import InboundCall, OutboundCall, UserAgent
from services.control.inventory import provision
from services.shared.settings import Settings
from services.softphone.rtp_phone import RATE, RtpPhone
from voice.v1 import events_pb2

DEMO_NUMBER = "+15550199"
CALLER_NUMBER = "+15550100"
PCMU = [Codec(0, "pcmu", 8000), Codec(101, "telephone-event", 8000, 1, "0-16")]
# The caller's phone offers wideband Opus first (HD voice, like a WebRTC or modern desk phone), G.711
# second; reception's desk phone speaks G.711 only, so the bridge relays between the two codecs.
CALLER_CODECS = [Codec(111, "opus", 48000, 2, "useinbandfec=1"), *PCMU]
SPEECH_DBFS = -40.0
QUIET_S = 1.2


@dataclass
class SipCallRecord:
    sip_log: list[str] = field(default_factory=list)
    reception_log: list[str] = field(default_factory=list)
    transcript: list[tuple[str, str]] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    transferred: bool = False
    reception_heard_caller: bool = False
    reception_heard_briefing: bool = False
    agent_turns: int = 0
    events: list[str] = field(default_factory=list)


async def ensure_demo_number(settings: Settings, gateway: str, api_key: str, agent_id: str) -> str:
    """The demo number, routed to the demo agent: provisioned in the platform's inventory as the operator
    does (services.control.inventory), then taken by the tenant through the REST API."""
    conn = await asyncpg.connect(settings.database_url)
    try:
        await provision(conn, [DEMO_NUMBER], "sip")
    finally:
        await conn.close()
    async with httpx.AsyncClient(base_url=gateway, headers={"X-API-Key": api_key}, timeout=10) as http:
        listed = (await http.get("/v1/numbers", params={"pageSize": 100})).json().get("numbers", [])
        mine = next((n for n in listed if n.get("e164") == DEMO_NUMBER), None)
        if mine is None:
            reply = await http.post(
                "/v1/numbers", json={"e164": DEMO_NUMBER, "agentId": agent_id, "provider": "sip"}
            )
            reply.raise_for_status()
        elif mine.get("agentId") != agent_id:
            reply = await http.patch(f"/v1/numbers/{mine['id']}", json={"agentId": agent_id})
            reply.raise_for_status()
    return DEMO_NUMBER


class _Reception:
    """The person the agent transfers to: a SIP phone on the trunk that answers and says hello."""

    def __init__(self, host: str, port: int, greeting: bytes, on_event: Callable[[str], None]) -> None:
        self.ua = UserAgent(host, self._answer)
        self.port = port
        self.greeting = greeting
        self.phone = RtpPhone()
        self.answered = asyncio.Event()
        self.connected = asyncio.Event()  # the caller's audio is relayed to reception
        self.call: InboundCall | None = None
        self.briefing_bytes = 0  # reception's received audio up to the end of the agent's briefing
        self._print = on_event

    async def start(self) -> None:
        await self.ua.start(self.port)
        await self.phone.start()

    async def close(self) -> None:
        await self.phone.close()
        await self.ua.close()

    async def _answer(self, call: InboundCall) -> None:
        self.call = call
        call.respond(180, "Ringing")
        await asyncio.sleep(0.5)
        offer = parse_sdp(call.invite.body)
        self.phone.peer = (offer.address, offer.port)
        call.respond(200, "OK", build_sdp("127.0.0.1", self.phone.port, PCMU[:1], session_id=2))
        if await call.wait_ack(5):
            self.answered.set()
            self._print("        reception: picks up")
            # A warm transfer: the bridge speaks the agent's briefing to reception first (the caller
            # on hold), then relays the caller; reception greets once the briefing is over.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.phone.first_packet.wait(), 15)
            await _agent_finished(self.phone, 30)
            heard = self.phone.audio()
            self.briefing_bytes = len(heard)
            if _loud(heard, self.phone.frame_bytes):
                seconds = len(heard) / 2 / self.phone.rate
                self._print(f"        reception: heard the agent's briefing ({seconds:.1f} s of audio)")
            self.connected.set()
            self.phone.say(self.greeting)


async def place_sip_call(
    settings: Settings,
    tts: TextToSpeech,
    lines: list[str],
    *,
    tenant_id: str,
    on_event: Callable[[str], None] = print,
    recording: Path | None = None,
) -> SipCallRecord:
    record = SipCallRecord()
    sip = settings.webrtc_bridge.sip
    bridge_addr = (sip.advertised_host or sip.host, sip.port)
    trunk_host, _, trunk_port = sip.trunk.partition(":")
    started = time.monotonic()

    def say(text: str) -> None:
        on_event(f"[{time.monotonic() - started:6.2f}s] {text}")

    phone = RtpPhone("opus")
    speech = [await _speech(tts, line, phone.rate) for line in lines]
    greeting = await _speech(tts, "Reception, this is Anna speaking.", RATE, voice="default_female_1")
    thanks = await _speech(tts, "Hi Anna, thanks.", phone.rate)
    reception = _Reception(trunk_host, int(trunk_port or 5070), greeting, say)
    events = await _EventTail.start(settings, tenant_id, record, say)
    caller_ua = UserAgent("127.0.0.1", _refuse)
    await reception.start()
    await caller_ua.start()
    await phone.start()
    try:
        offer = build_sdp("127.0.0.1", phone.port, CALLER_CODECS, session_id=1)
        say(f"caller: dials {DEMO_NUMBER} (SIP INVITE to the bridge at {bridge_addr[0]}:{bridge_addr[1]})")
        call = await caller_ua.dial(
            f"sip:{DEMO_NUMBER}@{bridge_addr[0]}:{bridge_addr[1]}",
            f"sip:{CALLER_NUMBER}@127.0.0.1:{caller_ua.port}",
            offer,
            peer=bridge_addr,
            ring_timeout=30,
        )
        final = call.final.result()
        if final.status >= 300:
            say(f"call failed: {final.status} {final.reason}")
            return record
        answer = parse_sdp(call.remote_sdp)
        phone.peer = (answer.address, answer.port)
        versions = iter(range(2, 1000))

        def on_reinvite(msg: SipMessage) -> bytes | None:
            # The bridge holds the caller (a=sendonly) while reception is briefed, then resumes it.
            offer = parse_sdp(msg.body)
            codec = choose_codec(offer, ("opus", "pcmu"))
            if codec is None:
                return None
            say("caller: put on hold" if offer.direction == "sendonly" else "caller: taken off hold")
            direction = answer_direction(offer.direction)
            return build_sdp(
                "127.0.0.1", phone.port, [codec], session_id=1, version=next(versions), direction=direction
            )

        call.on_reinvite = on_reinvite
        await _converse(
            phone,
            call=call,
            speech=speech,
            lines=lines,
            record=record,
            reception=reception,
            say=say,
            thanks=thanks,
        )
        await call.hangup("caller_hangup")
        say("caller: hangs up (BYE)")
        await asyncio.sleep(1.0)  # the bridge reports the end
        record.sip_log = call.log
        if reception.call is not None:
            record.reception_log = reception.call.log
        heard = reception.phone.audio()
        record.reception_heard_briefing = _loud(
            heard[: reception.briefing_bytes], reception.phone.frame_bytes
        )
        record.reception_heard_caller = _loud(heard[reception.briefing_bytes :], reception.phone.frame_bytes)
    finally:
        await events.close()
        await phone.close()
        await caller_ua.close()
        await reception.close()
    if recording is not None:
        _write_wav(recording, phone, reception.phone)
    return record


async def _refuse(call: InboundCall) -> None:
    call.respond(486, "Busy Here")  # the caller's phone takes no calls


async def _converse(
    phone: RtpPhone,
    *,
    call: OutboundCall,
    speech: list[bytes],
    lines: list[str],
    record: SipCallRecord,
    reception: _Reception,
    say: Callable[[str], None],
    thanks: bytes,
) -> None:
    await asyncio.wait_for(phone.first_packet.wait(), 20)
    await _agent_finished(phone, 30)  # the greeting
    for text, pcm in zip(lines, speech, strict=True):
        say(f"caller: {text}")
        phone.say(pcm)
        await phone.spoken()
        # The end of the caller's speech is its last voiced frame, not the end of the clip: the
        # synthesised line ends in silence that must not count as the agent's time.
        ended = asyncio.get_running_loop().time() - _trailing_silence_s(pcm, phone.frame_bytes, phone.rate)
        first = await _agent_starts(phone, ended, 30)
        if first is not None:
            record.latencies_ms.append((first - ended) * 1000)
        await _agent_finished(phone, 30)
        if call.ended.done():
            return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(reception.connected.wait(), 30)
    record.transferred = reception.connected.is_set()
    if record.transferred:
        await asyncio.sleep(3.0)  # reception's hello, relayed by the bridge
        say("caller: Hi Anna, thanks.")
        phone.say(thanks)
        await phone.spoken()
        await asyncio.sleep(0.5)


def _trailing_silence_s(pcm: bytes, frame: int, rate: int) -> float:
    """Seconds of quiet (below SPEECH_DBFS) at the end of `pcm`."""
    quiet = 0
    for end in range(len(pcm) - len(pcm) % frame, 0, -frame):
        if audio_core.rms_dbfs(pcm[end - frame : end]) > SPEECH_DBFS:
            break
        quiet += frame
    return quiet / 2 / rate


async def _agent_starts(phone: RtpPhone, since: float, within_s: float) -> float | None:
    """Arrival time of the first loud packet after `since`."""
    deadline = time.monotonic() + within_s
    frame = phone.frame_bytes
    while time.monotonic() < deadline:
        pcm = phone.audio()
        for i, arrived in enumerate(phone.arrivals):
            if arrived > since and audio_core.rms_dbfs(pcm[i * frame : (i + 1) * frame]) > SPEECH_DBFS:
                return arrived
        await asyncio.sleep(0.02)
    return None


async def _agent_finished(phone: RtpPhone, within_s: float) -> None:
    """Waits for speech from the far end, then QUIET_S of quiet."""
    frame = phone.frame_bytes
    start = len(phone.audio())
    deadline = time.monotonic() + within_s
    heard = False
    while time.monotonic() < deadline:
        pcm = phone.audio()[start:]
        tail = pcm[-int(QUIET_S * phone.rate) * 2 :]
        heard = heard or _loud(pcm, frame)
        quiet = all(
            audio_core.rms_dbfs(tail[i : i + frame]) < SPEECH_DBFS - 5 for i in range(0, len(tail), frame)
        )
        if heard and len(tail) >= int(QUIET_S * phone.rate) * 2 and quiet:
            return
        await asyncio.sleep(0.05)


def _loud(pcm: bytes, frame: int = 320) -> bool:
    return any(audio_core.rms_dbfs(pcm[i : i + frame]) > SPEECH_DBFS for i in range(0, len(pcm), frame))


async def _speech(tts: TextToSpeech, text: str, rate: int, voice: str = "default_male_1") -> bytes:
    resampler = audio_core.Resampler(tts.sample_rate, rate)
    pcm = bytearray()
    async with contextlib.aclosing(tts.synthesize(text, VoiceSelection(voice))) as chunks:  # type: ignore[type-var]
        async for chunk in chunks:
            pcm += resampler.process(chunk)
    return bytes(pcm + resampler.flush())


class _EventTail:
    """Follows the demo tenant's events on the bus (core NATS subscription: no state left behind)."""

    def __init__(self, nc: NatsClient, record: SipCallRecord) -> None:
        self.nc = nc
        self.record = record

    @classmethod
    async def start(
        cls, settings: Settings, tenant_id: str, record: SipCallRecord, say: Callable[[str], None]
    ) -> _EventTail:
        nc = await nats.connect(settings.nats_url, name="demo-softphone", connect_timeout=5)
        tail = cls(nc, record)
        seen: set[str] = set()

        async def on_message(msg: Msg) -> None:
            event = events_pb2.Event()
            try:
                event.ParseFromString(msg.data)
            except Exception:
                return
            if event.event_id in seen:
                return  # the same event from two publishers (bridge and agent both report call.ended)
            seen.add(event.event_id)
            record.events.append(event.type)
            case = event.WhichOneof("payload")
            if case == "transcript_turn":
                turn = event.transcript_turn
                who = "caller" if turn.speaker == 1 else "agent"
                record.transcript.append((who, turn.text))
                record.agent_turns += who == "agent"
                say(f"  {'heard' if who == 'caller' else 'agent'}: {turn.text}")
            elif case in (
                "call_ringing",
                "call_connected",
                "call_transfer_requested",
                "call_transferred",
                "call_ended",
            ):
                detail = ""
                if case == "call_ended":
                    detail = f" ({event.call_ended.end_reason})"
                elif case == "call_transferred":
                    detail = f" (to {event.call_transferred.transferred_to})"
                say(f"  event {event.type}{detail}")

        await nc.subscribe(f"voice.{tenant_id}.>", cb=on_message)
        return tail

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.nc.drain()


def _write_wav(path: Path, caller: RtpPhone, reception: RtpPhone) -> None:
    """Both sides of the caller's line on one timeline at 8 kHz: what the caller said and heard."""
    if not caller.arrivals:
        return
    rate, frame = caller.rate, caller.rate // 50
    t0 = min([caller.arrivals[0]] + [t for t, _ in caller.sent])
    end = max(caller.arrivals[-1], *(t for t, _ in caller.sent)) if caller.sent else caller.arrivals[-1]
    track = np.zeros(int((end - t0 + 1) * rate), dtype=np.int32)
    heard = np.frombuffer(caller.audio(), dtype="<i2")
    for i, arrived in enumerate(caller.arrivals[: len(heard) // frame]):
        start = int((arrived - t0) * rate)
        chunk = heard[i * frame : (i + 1) * frame]
        track[start : start + len(chunk)] += chunk[: max(0, len(track) - start)]
    for sent_at, pcm in caller.sent:
        start = int((sent_at - t0) * rate)
        chunk = np.frombuffer(pcm, dtype="<i2")
        track[start : start + len(chunk)] += chunk[: max(0, len(track) - start)]
    del reception
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(np.clip(track, -32768, 32767).astype("<i2").tobytes())


async def demo_call(
    settings: Settings,
    tts: TextToSpeech,
    lines: list[str],
    *,
    gateway: str,
    api_key: str,
    tenant_id: str,
    agent_id: str,
    recording: Path,
) -> bool:
    """`make demo`'s call: prints the story and returns whether it went as it should."""
    number = await ensure_demo_number(settings, gateway, api_key, agent_id)
    print(
        f"\nCalling Dr. Smith's clinic on {number} over SIP (Opus RTP) through the bridge; the caller says:"
    )
    for line in lines:
        print(f"  - {line}")
    print("Reception is a second SIP phone on the trunk; the agent transfers the caller to it.\n")
    record = await place_sip_call(settings, tts, lines, tenant_id=tenant_id, recording=recording)
    print("\nSIP dialog, caller side:")
    for line in record.sip_log:
        print(f"  {line}")
    print("SIP dialog, reception side (the bridge dials it for the transfer):")
    for line in record.reception_log:
        print(f"  {line}")
    if record.latencies_ms:
        print("\nLatency at the caller (end of its speech -> first agent audio back over RTP):")
        for i, ms in enumerate(record.latencies_ms, 1):
            print(f"  turn {i}: {ms:6.0f} ms")
    print(f"\nRecording of the caller's line (both sides): {recording}")
    ok = (
        record.agent_turns >= len(lines)
        and record.transferred
        and record.reception_heard_briefing
        and record.reception_heard_caller
    )
    if not ok:
        print(
            f"  [FAIL] agent turns {record.agent_turns} (want >= {len(lines)}), "
            f"transferred {record.transferred}, reception heard the briefing "
            f"{record.reception_heard_briefing} and the caller {record.reception_heard_caller}"
        )
    return ok
