"""One call on the bridge: the phone leg (a SIP dialog and its RTP), the agent's Converse stream, the
state machine, the call's Redis state and slot, its events and its timeouts.

The media loop runs on the media clock: every 20 ms it takes one frame of the caller from the inbound
leg (jitter buffer, PLC, decode, resample to 16 kHz) and puts it on the Converse stream, and sends one
frame of the agent's voice (or silence) out as RTP. `ClearAudio` empties the agent's playout at the
next tick. Everything a call ends with, however it ends, goes through `end()` exactly once: the SIP
leg is hung up, the Converse stream closed, the slot released, the Redis state marked ended and
`call.ended` (or `call.failed` for an outbound call that never connected) published.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

import grpc
from google.protobuf.message import Message
from prometheus_client import Counter

import audio_core
from services.bridge.agent_pool import AgentAtCapacity, AgentPool
from services.bridge.media import PIPELINE_RATE, RtpSession
from services.bridge.sip.message import SipMessage
from services.bridge.sip.ua import OutboundCall, SipCall
from services.bridge.state import PUBLIC_STATUS, CallState, CallStateMachine, IllegalTransition
from services.bridge.store import CallStore
from services.shared.call_slots import CallSlots
from services.shared.events import call_event_id, new_event
from services.shared.recordings.writer import CallRecorder, RecordingWriter
from services.shared.settings import BridgeTimeoutSettings
from voice.v1 import agent_session_pb2 as pb
from voice.v1 import agent_session_pb2_grpc, common_pb2, events_pb2, media_pb2

log = logging.getLogger(__name__)

FRAME_S = 0.02
AGENT_RATE = PIPELINE_RATE  # what we ask the agent to speak at; the outbound leg resamples for the codec
AGENT_FRAME_BYTES = AGENT_RATE // 50 * 2
TO_AGENT_MAX_FRAMES = 50  # 1 s: beyond it the agent stream is stalled and old caller audio is dropped
END_PLAYOUT_MAX_S = 15.0
# A tick this late means the loop was starved; resynchronise instead of bursting frames.
RESYNC_AFTER_S = 0.2

_DIRECTION = {"inbound": common_pb2.CALL_DIRECTION_INBOUND, "outbound": common_pb2.CALL_DIRECTION_OUTBOUND}


class EventSink(Protocol):
    """services.shared.events_publisher.EventPublisher: never blocks the call."""

    def emit(self, tenant_id: str, call_id: str, **payload: Message) -> None: ...

    def publish(self, event: events_pb2.Event) -> None: ...


@dataclass
class CallInfo:
    call_id: str
    tenant_id: str
    agent_id: str
    direction: str  # inbound | outbound
    from_number: str
    to_number: str
    context: dict[str, str] = field(default_factory=dict)


@dataclass
class CallDeps:
    """What every call of one bridge process shares."""

    agent_stub: agent_session_pb2_grpc.AgentSessionServiceAsyncStub
    store: CallStore
    slots: CallSlots
    events: EventSink
    timeouts: BridgeTimeoutSettings
    illegal: Counter
    errors: Counter
    instance: str
    # (call, request, announce): announce = publish call.transfer_requested (not when the agent asked).
    transfer: Callable[[BridgeCall, pb.TransferRequest, bool], Awaitable[None]]
    # Records the phone calls whose agent asks for it (None: this process records nothing).
    recordings: RecordingWriter | None = None
    # Whether an agent records its calls: (tenant_id, agent_id) -> conversation.recording_enabled.
    records_calls: Callable[[str, str], Awaitable[bool]] | None = None
    # Record the bridge's own added latency per frame (benchmarks): inbound = audio waiting in the jitter
    # buffer and resampler when a frame goes to Converse; outbound = time an agent frame waits for its tick.
    probe: bool = False


class BridgeCall:
    def __init__(self, info: CallInfo, deps: CallDeps) -> None:
        self.info = info
        self.deps = deps
        self.sm = CallStateMachine(info.call_id, lambda a, b: deps.illegal.labels(a.value, b.value).inc())
        self.leg: SipCall | None = None
        self.media: RtpSession | None = None
        self.created = time.time()
        self.answered_at: datetime | None = None
        self.end_reason = ""
        self.ended = asyncio.Event()  # set when the end begins (loops stop)
        self.done = asyncio.Event()  # set when the end is complete (record, events, legs)
        self.transcript: list[tuple[str, str]] = []
        self.latencies: list[pb.TurnLatency] = []
        self.agent_state = pb.AGENT_STATE_UNSPECIFIED
        self.on_hold = False
        self.relay_to: RtpSession | None = None  # after a transfer: the target's media
        self.relay_leg: SipCall | None = None
        self.dialing: OutboundCall | None = None  # an outbound INVITE not answered yet
        self.merged: BridgeCall | None = None  # a call whose caller was merged into this one
        self.recorder: CallRecorder | None = None  # both sides as the phone hears them
        self.merged_into: BridgeCall | None = None
        # Our SDP for this leg with a given direction (set by the leg once the media is negotiated).
        self.offer_sdp: Callable[[str], bytes] | None = None
        self._playout = bytearray()
        self._to_agent: asyncio.Queue[pb.ConverseRequest | None] = asyncio.Queue()
        self._tasks: set[asyncio.Task[None]] = set()
        self._converse: grpc.aio.StreamStreamCall[pb.ConverseRequest, pb.ConverseResponse] | None = None
        self._seq = 0
        self._converse_task: asyncio.Task[None] | None = None
        self._stream_token: object | None = None  # the live Converse attempt's request stream
        self._recorded = False
        self.underruns = 0
        self.probe_in_ms: list[float] = []
        self.probe_out_ms: list[float] = []
        self._arrivals: collections.deque[float] = collections.deque()

    @property
    def call_id(self) -> str:
        return self.info.call_id

    @property
    def state(self) -> CallState:
        return self.sm.state

    def leg_proto(self) -> common_pb2.CallStatus.ValueType:
        status = PUBLIC_STATUS[self.state]
        if self.state == CallState.ENDED and self.end_reason.startswith("transferred"):
            status = "transferred"
        return getattr(common_pb2, f"CALL_STATUS_{status.upper()}")  # type: ignore[no-any-return]

    # ---- state

    async def move(self, wanted: CallState) -> bool:
        """Transition + Redis state; False (logged and counted) when the table refuses it."""
        try:
            self.sm.transition(wanted)
        except IllegalTransition:
            return False
        fields = {
            "state": wanted.value,
            "status": PUBLIC_STATUS[wanted],
            "tenant_id": self.info.tenant_id,
            "agent_id": self.info.agent_id,
            "direction": self.info.direction,
            "from_number": self.info.from_number,
            "to_number": self.info.to_number,
            "instance": self.deps.instance,
        }
        try:
            await self.deps.store.put(self.call_id, ended=wanted == CallState.ENDED, **fields)
        except Exception:  # Redis away must not break the call itself
            self.deps.errors.labels("bridge", "redis").inc()
            log.exception("call state not stored", extra={"data": {"call_id": self.call_id}})
        return True

    def emit(self, **payload: Message) -> None:
        self.deps.events.emit(self.info.tenant_id, self.call_id, **payload)

    async def ringing(self) -> None:
        wanted = CallState.RINGING if self.info.direction == "inbound" else CallState.DIALING
        if await self.move(wanted):
            self.emit(
                call_ringing=events_pb2.CallRinging(
                    from_number=self.info.from_number,
                    to_number=self.info.to_number,
                    direction=_DIRECTION[self.info.direction],
                    agent_id=self.info.agent_id,
                )
            )

    async def connected(self, leg: SipCall, media: RtpSession) -> None:
        """The phone answered (inbound: our 200 was ACKed; outbound: their 200). Starts the media
        loop and the agent session."""
        self.media = media
        if self.leg is None:
            self.watch(leg)
        if not await self.move(CallState.CONNECTED):
            await self.end("error")
            return
        self.answered_at = datetime.now(UTC)
        connected = events_pb2.CallConnected()
        connected.answer_time.FromDatetime(self.answered_at)
        self.emit(call_connected=connected)
        leg.on_info = self._on_sip_info
        await self._start_recording()
        media_loop = self._spawn(self._media_loop())
        self._converse_task = self._spawn(self._converse_loop())
        self._spawn(self._keep_alive())
        del media_loop

    async def _start_recording(self) -> None:
        deps = self.deps
        if deps.recordings is None or deps.records_calls is None:
            return
        try:
            wanted = await deps.records_calls(self.info.tenant_id, self.info.agent_id)
        except Exception:
            deps.errors.labels("bridge", "recording").inc()
            log.exception(
                "recording setting unavailable: call not recorded", extra={"data": {"call_id": self.call_id}}
            )
            return
        if wanted:
            self.recorder = deps.recordings.start(self.info.tenant_id, self.call_id, agent_rate=AGENT_RATE)

    def set_dialing(self, leg: OutboundCall) -> None:
        self.dialing = leg

    def watch(self, leg: SipCall) -> None:
        """Ends the call when the phone leg ends (BYE, CANCEL, ...), from ringing on."""
        self.leg = leg
        self._spawn(self._watch_leg(leg))

    def _spawn(self, coro: Awaitable[None]) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.deps.errors.labels("bridge", "call_task").inc()
            log.error(
                "call task failed", exc_info=task.exception(), extra={"data": {"call_id": self.call_id}}
            )
            self._spawn(self.end("error"))

    async def _watch_leg(self, leg: SipCall) -> None:
        reason = await asyncio.shield(leg.ended)
        if reason == "remote_hangup":
            reason = "caller_hangup" if self.info.direction == "inbound" else "callee_hangup"
        await self.end(reason)

    async def _keep_alive(self) -> None:
        """Refreshes the slot and the Redis state while the call lives; enforces the max duration."""
        every = self.deps.slots.refresh_every
        limit = self.deps.timeouts.max_call_duration_seconds
        started = time.monotonic()
        while not self.ended.is_set():
            left = limit - (time.monotonic() - started)
            if left <= 0:
                await self.end("max_duration")
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.ended.wait(), min(every, left))
            if self.ended.is_set():
                return
            try:
                await self.deps.slots.refresh(self.call_id)
                await self.deps.store.touch(self.call_id)
            except Exception:
                self.deps.errors.labels("bridge", "redis").inc()

    # ---- media

    async def _media_loop(self) -> None:
        media = self.media
        assert media is not None
        loop = asyncio.get_running_loop()
        idle_ms = self.deps.timeouts.idle_timeout_seconds * 1000
        next_tick = loop.time()
        started_ms = next_tick * 1000
        silence = b"\x00" * AGENT_FRAME_BYTES
        while not self.ended.is_set():
            now_ms = loop.time() * 1000
            caller = media.pop_frame(now_ms)
            relay = self.relay_to
            other = self.merged.media if self.merged is not None else None
            if self.merged_into is not None:
                pass  # the host call's loop carries this caller now
            elif relay is not None:  # transferred: caller <-> target, the agent is gone
                relay.send_frame(caller)
                media.send_frame(relay.pop_frame(now_ms))
            elif other is not None:  # conference: both callers and the agent hear each other
                guest = other.pop_frame(now_ms)
                self._to_agent_frame(audio_core.mix(caller, guest))
                agent = self._next_playout(silence)
                media.send_frame(audio_core.mix(agent, guest))
                other.send_frame(audio_core.mix(agent, caller))
            else:
                heard = silence[: len(caller)] if self.on_hold else caller
                self._to_agent_frame(heard)
                played = self._next_playout(silence)
                media.send_frame(played)
                if self.recorder is not None:
                    self.recorder.caller(heard, PIPELINE_RATE)
                    self.recorder.agent(played)
                if self.deps.probe and media.inbound is not None:
                    leg = media.inbound
                    self.probe_in_ms.append(leg.stats()["playout_delay_ms"] + leg.resampler_delay_ms)
            last = media.stats.last_rx_ms or started_ms
            if now_ms - last > idle_ms:
                await self.end("idle_timeout")
                return
            next_tick += FRAME_S
            delay = next_tick - loop.time()
            if delay < -RESYNC_AFTER_S:
                # The loop was starved: the frames due meanwhile are lost to the caller anyway (its
                # jitter buffer concealed them); dropping as much of the agent's audio keeps the
                # playout latency from growing by every stall.
                self._drop_playout(int(-delay / FRAME_S))
                next_tick = loop.time()
                delay = 0
            await asyncio.sleep(max(0.0, delay))

    def _drop_playout(self, frames: int) -> None:
        frames = min(frames, len(self._playout) // AGENT_FRAME_BYTES)
        del self._playout[: frames * AGENT_FRAME_BYTES]
        for _ in range(min(frames, len(self._arrivals))):
            self._arrivals.popleft()

    def _next_playout(self, silence: bytes) -> bytes:
        if self.on_hold:
            return silence
        if len(self._playout) >= AGENT_FRAME_BYTES:
            frame = bytes(self._playout[:AGENT_FRAME_BYTES])
            del self._playout[:AGENT_FRAME_BYTES]
            if self._arrivals:
                self.probe_out_ms.append((time.monotonic() - self._arrivals.popleft()) * 1000)
            return frame
        if self._playout and self.agent_state != pb.AGENT_STATE_SPEAKING:
            frame = bytes(self._playout).ljust(AGENT_FRAME_BYTES, b"\x00")
            self._playout.clear()
            return frame
        if self.agent_state == pb.AGENT_STATE_SPEAKING:
            self.underruns += 1  # the agent is speaking but its next frame is not here in time
        return silence

    def _to_agent_frame(self, pcm: bytes) -> None:
        if self._converse is None:
            return
        frame = media_pb2.AudioFrame(
            sequence_number=self._seq & 0xFFFFFFFF,
            timestamp=self._seq * (len(pcm) // 2),
            sample_rate=PIPELINE_RATE,
            codec=media_pb2.AUDIO_CODEC_PCM16,
            channels=1,
            payload=pcm,
        )
        self._seq += 1
        if self._to_agent.qsize() >= TO_AGENT_MAX_FRAMES:
            with contextlib.suppress(asyncio.QueueEmpty):
                self._to_agent.get_nowait()
            self.deps.errors.labels("bridge", "agent_stream_stalled").inc()
        self._to_agent.put_nowait(pb.ConverseRequest(audio=frame))

    def on_dtmf(self, digit: str, duration_ms: int) -> None:
        self._to_agent.put_nowait(pb.ConverseRequest(dtmf=pb.DtmfDigit(digit=digit, duration_ms=duration_ms)))

    def _on_sip_info(self, msg: SipMessage) -> None:
        """DTMF by SIP INFO (application/dtmf-relay: `Signal=5` / `Duration=160`)."""
        if "dtmf" not in msg.get("Content-Type").lower():
            return
        fields = dict(
            line.split("=", 1) for line in msg.body.decode("utf-8", "replace").splitlines() if "=" in line
        )
        digit = fields.get("Signal", "").strip()
        duration = fields.get("Duration", "0").strip()
        if len(digit) == 1 and digit in "0123456789*#ABCDabcd":
            self.on_dtmf(digit.upper(), int(duration) if duration.isdigit() else 0)

    # ---- agent

    async def _requests(self) -> AsyncIterator[pb.ConverseRequest]:
        fmt_in = media_pb2.AudioFormat(
            codec=media_pb2.AUDIO_CODEC_PCM16, sample_rate=PIPELINE_RATE, channels=1, frame_duration_ms=20
        )
        fmt_out = media_pb2.AudioFormat(
            codec=media_pb2.AUDIO_CODEC_PCM16, sample_rate=AGENT_RATE, channels=1, frame_duration_ms=20
        )
        inbound = self.info.direction == "inbound"
        yield pb.ConverseRequest(
            start=pb.SessionStart(
                call_id=self.call_id,
                tenant_id=self.info.tenant_id,
                agent_id=self.info.agent_id,
                caller_number=self.info.from_number if inbound else self.info.to_number,
                called_number=self.info.to_number if inbound else self.info.from_number,
                direction=_DIRECTION[self.info.direction],
                context=self.info.context,
                input_format=fmt_in,
                output_format=fmt_out,
            )
        )
        token = object()
        self._stream_token = token
        while True:
            request = await self._to_agent.get()
            if self._stream_token is not token:
                # A refused attempt's stream woke up after the next one started: the item is the live one's.
                self._to_agent.put_nowait(request)
                return
            if request is None:
                return
            yield request

    def _set_converse(self, call: grpc.aio.StreamStreamCall[pb.ConverseRequest, pb.ConverseResponse]) -> None:
        self._converse = call

    async def _converse_loop(self) -> None:
        # A pool spreads calls over the agent's processes and tries another connection when one refuses.
        pool = AgentPool.of(self.deps.agent_stub)
        try:
            admitted = await pool.converse(self._requests, self._set_converse)
            if admitted.first is not None:
                await self.move(CallState.CONVERSING)
                await self._on_response(admitted.first)
                async for response in admitted.responses:
                    await self._on_response(response)
        except AgentAtCapacity as exc:
            if self.ended.is_set():
                return
            log.warning(
                "no agent process took the call",
                extra={"data": {"call_id": self.call_id, "attempts": exc.attempts, "details": exc.details}},
            )
            self.deps.errors.labels("bridge", "agent_capacity").inc()
            if self.sm.can(CallState.ERROR):
                await self.move(CallState.ERROR)
            await self.end("agent_at_capacity")
            return
        except grpc.aio.AioRpcError as exc:
            if self.ended.is_set() or exc.code() == grpc.StatusCode.CANCELLED:
                return
            log.warning(
                "agent stream failed",
                extra={"data": {"call_id": self.call_id, "code": exc.code().name, "details": exc.details()}},
            )
            self.deps.errors.labels("bridge", "agent_stream").inc()
            if self.sm.can(CallState.ERROR):
                await self.move(CallState.ERROR)
            await self.end("agent_error")
            return
        # After a transfer or a merge the phone leg outlives the agent: its stream ending ends nothing.
        if self.relay_to is None and self.merged_into is None and not self.ended.is_set():
            await self.end("agent_hangup")

    async def _on_response(self, response: pb.ConverseResponse) -> None:
        kind = response.WhichOneof("event")
        if kind == "audio":
            audio = response.audio
            if audio.codec != media_pb2.AUDIO_CODEC_PCM16 or audio.sample_rate != AGENT_RATE:
                self.deps.errors.labels("bridge", "agent_audio_format").inc()
                return
            self._playout += audio.payload
            if self.deps.probe and len(audio.payload) == AGENT_FRAME_BYTES:
                self._arrivals.append(time.monotonic())
        elif kind == "clear_audio":
            self._playout.clear()
            self._arrivals.clear()
            if self.media is not None:
                self.media.clear()
        elif kind == "state":
            self.agent_state = response.state.state
        elif kind == "transcript":
            if response.transcript.is_final:
                who = "caller" if response.transcript.speaker == pb.SPEAKER_CALLER else "agent"
                self.transcript.append((who, response.transcript.text))
        elif kind == "latency":
            self.latencies.append(response.latency)
        elif kind == "end_call":
            self._spawn(self._end_after_playout(response.end_call.reason or "agent_hangup"))
        elif kind == "transfer":  # the agent has published call.transfer_requested itself
            self._spawn(self.deps.transfer(self, response.transfer, False))

    async def _end_after_playout(self, reason: str) -> None:
        # The agent's last words are still in the playout buffer: let them go out (bounded).
        deadline = time.monotonic() + END_PLAYOUT_MAX_S
        while self._playout and time.monotonic() < deadline and not self.ended.is_set():  # noqa: ASYNC110
            await asyncio.sleep(FRAME_S)
        await asyncio.sleep(0.1)  # the last packets leave the socket
        await self.end("agent_hangup" if reason in ("", "agent_hangup") else f"agent_hangup:{reason}"[:100])

    async def playout_drained(self, within_s: float) -> None:
        """Returns once the agent is not speaking and its audio has gone out (at most `within_s`)."""
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline and not self.ended.is_set():
            if not self._playout and self.agent_state != pb.AGENT_STATE_SPEAKING:
                return
            await asyncio.sleep(FRAME_S)

    def drop_agent(self, reason: str) -> None:
        """Closes the Converse stream (the agent leaves; the phone leg stays)."""
        self._to_agent.put_nowait(pb.ConverseRequest(hangup=pb.CallerHangup(reason=reason)))
        self._to_agent.put_nowait(None)

    async def merge(self, guest: BridgeCall) -> bool:
        """Joins `guest`'s caller into this call (a conference mixed here): its agent leaves and its
        record ends as "merged"; the guest's phone leg stays up until this call ends."""
        if guest is self or guest.media is None or self.media is None or self.merged is not None:
            return False
        if self.state != CallState.CONVERSING or guest.state not in (CallState.CONVERSING, CallState.ON_HOLD):
            return False
        guest.merged_into = self
        guest.drop_agent("merged")
        await guest.record_end("merged")
        self.merged = guest
        return True

    async def hold(self, on: bool) -> None:
        """Hold: the agent hears silence and the phone gets nothing; the phone is told by a re-INVITE
        (a=sendonly, back to sendrecv on resume) when the leg can send one."""
        if on:
            if not await self.move(CallState.ON_HOLD):
                return
            self.on_hold = True
        elif self.state == CallState.ON_HOLD and await self.move(CallState.CONVERSING):
            self.on_hold = False
        else:
            return
        await self.tell_phone_held(on)

    async def tell_phone_held(self, on: bool) -> None:
        """The hold re-INVITE alone (a=sendonly / back to sendrecv), without a state change: a warm
        transfer holds the caller while the target is briefed, in TRANSFERRING."""
        if self.leg is not None and self.offer_sdp is not None and not self.ended.is_set():
            try:
                await self.leg.ua.reinvite(self.leg, self.offer_sdp("sendonly" if on else "sendrecv"))
            except (TimeoutError, RuntimeError):
                log.warning("re-INVITE for hold not answered", extra={"data": {"call_id": self.call_id}})

    # ---- the end

    async def record_end(self, reason: str, *, failed: bool = False) -> None:
        """The call's record ends here: state ENDED, slot released, call.ended / call.failed. After a
        transfer to a person this happens while the relayed legs still talk."""
        self._recorded = True
        self.end_reason = reason
        never_connected = self.answered_at is None
        await self.move(CallState.ENDED)
        try:
            await self.deps.slots.release(self.call_id)
        except Exception:
            self.deps.errors.labels("bridge", "redis").inc()
            log.exception("slot not released (it expires)", extra={"data": {"call_id": self.call_id}})
        direction = _DIRECTION[self.info.direction]
        if never_connected and (failed or self.info.direction == "outbound"):
            self.emit(
                call_failed=events_pb2.CallFailed(
                    reason=reason,
                    direction=direction,
                    agent_id=self.info.agent_id,
                    from_number=self.info.from_number,
                    to_number=self.info.to_number,
                )
            )
            return
        ended = events_pb2.CallEnded(
            end_reason=reason,
            direction=direction,
            agent_id=self.info.agent_id,
            from_number=self.info.from_number,
            to_number=self.info.to_number,
        )
        if self.answered_at is not None:
            seconds = (datetime.now(UTC) - self.answered_at).total_seconds()
            ended.duration.FromMilliseconds(int(seconds * 1000))
        # The agent reports the end of its stream too: the same stable id makes it one stored event.
        event_id = call_event_id(self.info.tenant_id, self.call_id, "call.ended")
        self.deps.events.publish(
            new_event(
                self.info.tenant_id, self.call_id, self.deps.instance, event_id=event_id, call_ended=ended
            )
        )

    async def end(self, reason: str, *, failed: bool = False) -> None:
        """Ends the call, however it ends (idempotent)."""
        if self.ended.is_set():
            return
        self.ended.set()
        if not self._recorded:
            await self.record_end(reason, failed=failed)
        self.drop_agent(reason)
        if self.dialing is not None and not self.dialing.final.done():
            self._spawn(self.dialing.cancel())
        for leg in (self.leg, self.relay_leg):
            if leg is not None:
                with contextlib.suppress(Exception):
                    await leg.hangup(reason)
        if self.media is not None:
            self.media.close()
        if self.recorder is not None and self.deps.recordings is not None:
            self.deps.recordings.finish_later(self.recorder)  # stored off the call; never fails it
            self.recorder = None
        if self.relay_to is not None:
            self.relay_to.close()
        if self.merged is not None:
            await self.merged.end(reason)
        if self.merged_into is not None:
            self.merged_into.merged = None
        log.info(
            "call ended",
            extra={"data": {"call_id": self.call_id, "reason": reason, "underruns": self.underruns}},
        )
        current = asyncio.current_task()
        converse = self._converse_task
        if converse is not None and converse is not current and not converse.done():
            # Let the CallerHangup reach the agent before the stream is cancelled.
            with contextlib.suppress(TimeoutError, asyncio.CancelledError, Exception):
                await asyncio.wait_for(asyncio.shield(converse), 1.0)
        for task in list(self._tasks):
            if task is not current:
                task.cancel()
        if self._converse is not None:
            self._converse.cancel()
        self.done.set()
