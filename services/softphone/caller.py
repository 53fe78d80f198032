"""A scripted caller over one Converse stream.

The caller's lines are spoken by the platform's own TTS (a different voice from the agent's) and
resampled to 16 kHz with audio_core; the stream carries 20 ms PCM16 frames paced by the clock, silence
included, exactly what the bridge sends for a real call.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import grpc

import audio_core
from services.agent.ports import TextToSpeech, VoiceSelection
from services.shared.grpc_channels import open_channel
from services.shared.service_identity import with_identity
from services.shared.settings import Settings, load_settings
from voice.v1 import agent_session_pb2 as pb
from voice.v1 import agent_session_pb2_grpc, common_pb2, media_pb2

CALLER_RATE = 16000
FRAME_MS = 20
FRAME_BYTES = CALLER_RATE * FRAME_MS // 1000 * 2
SILENCE = b"\x00" * FRAME_BYTES


@dataclass
class CallScript:
    lines: list[str]
    # Talk over the agent: start each line this many seconds after the agent starts answering.
    barge_in_after_s: float | None = None
    # Pause inside a line wherever it contains " | " (a caller reading out a number in groups).
    group_pause_s: float = 0.7
    # How long to wait for the agent to finish answering before the next line (or hanging up).
    reply_timeout_s: float = 30.0
    caller_voice: str = "default_male_1"
    hangup_after_s: float = 1.0
    # What the agent should send back (PCM16 at the TTS rate when unset), like a bridge would ask.
    output_format: media_pb2.AudioFormat | None = None
    # A line equal to one of these keys is sent as this 16 kHz PCM16 audio instead of speech (a noise
    # burst, a cough): sounds that are not words.
    sounds: dict[str, bytes] = field(default_factory=dict)


@dataclass
class CallRecord:
    """What happened on the call, as the caller side saw it."""

    call_id: str
    transcript: list[tuple[float, str, str, bool]] = field(default_factory=list)  # t, who, text, interrupted
    latencies: list[pb.TurnLatency] = field(default_factory=list)
    events: list[tuple[float, str]] = field(default_factory=list)
    caller_audio: list[tuple[float, bytes]] = field(default_factory=list)  # (t, 16 kHz PCM)
    agent_audio: list[tuple[float, bytes]] = field(default_factory=list)  # (t, PCM at agent_rate)
    agent_rate: int = 24000
    clear_audio: int = 0
    transfer: pb.TransferRequest | None = None
    end_call: pb.EndCall | None = None
    frames_received: int = 0
    status: str = "OK"


class ScriptedCaller:
    def __init__(
        self,
        target: str,
        tts: TextToSpeech,
        *,
        tenant_id: str,
        agent_id: str,
        on_event: Callable[[str], None] | None = None,
        settings: Settings | None = None,
        metadata: tuple[tuple[str, str], ...] = (),
    ) -> None:
        self.target = target
        # Channel settings and call metadata. By default the softphone plays the bridge's part (it hands
        # the agent a call's audio), so it presents the bridge's certificate; with `metadata` carrying
        # a tenant's API key and settings of another identity, it calls as that tenant instead.
        self.settings = settings
        self.metadata = metadata
        self.tts = tts
        self.tenant_id = tenant_id
        self.agent_id = agent_id
        self._print = on_event or (lambda _line: None)

    async def speech(self, text: str, voice: str) -> bytes:
        """The caller's line as 16 kHz PCM16 (TTS at its own rate, resampled by audio_core)."""
        resampler = audio_core.Resampler(self.tts.sample_rate, CALLER_RATE)
        pcm = bytearray()
        async with contextlib.aclosing(self.tts.synthesize(text, VoiceSelection(voice))) as chunks:  # type: ignore[type-var]
            async for chunk in chunks:
                pcm += resampler.process(chunk)
        pcm += resampler.flush()
        return bytes(pcm)

    async def call(self, script: CallScript, call_id: str | None = None) -> CallRecord:
        record = CallRecord(call_id or f"call_{uuid.uuid4().hex[:12]}")
        # Everything the caller will say, synthesized up front so speaking is never late.
        lines = [
            [script.sounds[line]]
            if line in script.sounds
            else [await self.speech(part.strip(), script.caller_voice) for part in line.split("|")]
            for line in script.lines
        ]
        outbox: asyncio.Queue[bytes] = asyncio.Queue()
        hangup = asyncio.Event()
        state_changes: asyncio.Queue[int] = asyncio.Queue()
        started = time.monotonic()

        def now() -> float:
            return time.monotonic() - started

        async def requests() -> AsyncIterator[pb.ConverseRequest]:
            yield pb.ConverseRequest(
                start=pb.SessionStart(
                    call_id=record.call_id,
                    tenant_id=self.tenant_id,
                    agent_id=self.agent_id,
                    caller_number="+15550100",
                    called_number="+15550199",
                    direction=common_pb2.CALL_DIRECTION_INBOUND,
                    input_format=media_pb2.AudioFormat(
                        codec=media_pb2.AUDIO_CODEC_PCM16,
                        sample_rate=CALLER_RATE,
                        channels=1,
                        frame_duration_ms=FRAME_MS,
                    ),
                    output_format=script.output_format,
                )
            )
            seq, next_due = 0, time.monotonic()
            pending = bytearray()
            while not hangup.is_set():
                while len(pending) < FRAME_BYTES and not outbox.empty():
                    pending += outbox.get_nowait()
                frame = bytes(pending[:FRAME_BYTES]).ljust(FRAME_BYTES, b"\x00") if pending else SILENCE
                del pending[:FRAME_BYTES]
                if frame is not SILENCE:
                    record.caller_audio.append((now(), frame))
                yield pb.ConverseRequest(
                    audio=media_pb2.AudioFrame(
                        sequence_number=seq,
                        timestamp=seq * (FRAME_BYTES // 2),
                        sample_rate=CALLER_RATE,
                        codec=media_pb2.AUDIO_CODEC_PCM16,
                        channels=1,
                        payload=frame,
                    )
                )
                seq += 1
                next_due += FRAME_MS / 1000
                await asyncio.sleep(max(0.0, next_due - time.monotonic()))
            yield pb.ConverseRequest(hangup=pb.CallerHangup(reason="caller_hangup"))

        async def say(parts: list[bytes]) -> None:
            for i, pcm in enumerate(parts):
                if i:
                    await outbox.put(b"\x00" * int(CALLER_RATE * script.group_pause_s) * 2)
                await outbox.put(pcm)

        async def wait_state(state: int, within_s: float) -> bool:
            deadline = time.monotonic() + within_s
            while (left := deadline - time.monotonic()) > 0:
                try:
                    if await asyncio.wait_for(state_changes.get(), left) == state:
                        return True
                except TimeoutError:
                    return False
            return False

        async def drive() -> None:
            # The agent greets first: wait until it has finished speaking.
            if await wait_state(pb.AGENT_STATE_SPEAKING, script.reply_timeout_s):
                await wait_state(pb.AGENT_STATE_LISTENING, script.reply_timeout_s)
            for index, parts in enumerate(lines):
                if record.end_call or record.transfer:
                    break
                self._print(f"[{now():6.2f}s] caller: {script.lines[index].replace('|', ' ')}")
                await say(parts)
                spoke = await wait_state(pb.AGENT_STATE_SPEAKING, script.reply_timeout_s)
                if spoke and script.barge_in_after_s is not None and index + 1 < len(lines):
                    await asyncio.sleep(script.barge_in_after_s)
                    continue  # talk over the agent with the next line
                if spoke:
                    await wait_state(pb.AGENT_STATE_LISTENING, script.reply_timeout_s)
            await asyncio.sleep(script.hangup_after_s)
            hangup.set()

        settings = self.settings or with_identity(load_settings(), "bridge")
        async with open_channel(settings, self.target) as channel:
            stub = agent_session_pb2_grpc.AgentSessionServiceStub(channel)
            stream = stub.Converse(requests(), metadata=self.metadata or None)
            driver = asyncio.create_task(drive())
            try:
                async for response in stream:
                    self._on_response(response, record, now(), state_changes)
                    if record.end_call is not None:
                        hangup.set()
            except grpc.aio.AioRpcError as exc:
                record.status = f"{exc.code().name}: {exc.details()}"
            finally:
                hangup.set()
                driver.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await driver
        return record

    def _on_response(
        self, response: pb.ConverseResponse, record: CallRecord, t: float, states: asyncio.Queue[int]
    ) -> None:
        kind = response.WhichOneof("event")
        if kind == "audio":
            record.frames_received += 1
            record.agent_rate = response.audio.sample_rate
            record.agent_audio.append((t, response.audio.payload))
        elif kind == "transcript":
            tr = response.transcript
            if tr.is_final:
                who = "caller" if tr.speaker == pb.SPEAKER_CALLER else "agent"
                record.transcript.append((t, who, tr.text, tr.interrupted))
                note = " (interrupted)" if tr.interrupted else ""
                self._print(f"[{t:6.2f}s] {'heard' if who == 'caller' else 'agent'}: {tr.text}{note}")
        elif kind == "state":
            states.put_nowait(response.state.state)
            record.events.append((t, pb.AgentState.Name(response.state.state)))
        elif kind == "clear_audio":
            record.clear_audio += 1
            record.events.append((t, "clear_audio"))
            self._print(f"[{t:6.2f}s] -- barge-in: agent stops talking (ClearAudio)")
        elif kind == "latency":
            record.latencies.append(response.latency)
        elif kind == "transfer":
            record.transfer = response.transfer
            self._print(
                f"[{t:6.2f}s] -- transfer ({pb.TransferType.Name(response.transfer.type)}) to "
                f"{response.transfer.target}: {response.transfer.context}"
            )
        elif kind == "end_call":
            record.end_call = response.end_call
            self._print(f"[{t:6.2f}s] -- agent ends the call ({response.end_call.reason})")
