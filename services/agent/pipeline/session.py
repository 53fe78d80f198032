"""One call's conversation: caller audio in, agent voice and call control out.

The session is the turn-taking part and wires the others, each with one job:
- turn-taking (here): decodes caller frames, runs VAD (endpointing, barge-in via interruptions.py),
  feeds STT while the caller speaks, turns STT results into caller turns, decides when a turn has ended
  (turn_end.py: Smart Turn + the STT final, or the fixed grace), idle prompts and the maximum duration;
- reply generation (replies.py): one reply at a time, LLM -> sentences -> TTS -> playout, tool rounds;
- playout (playout.py): paces the agent's audio out in real time; caller_link.py sends it and every
  other message to the caller side;
- call bookkeeping (bookkeeping.py): events, usage minutes, why the call ended, per-turn latency.
Everything a reply starts (LLM stream, TTS streams, tool calls) is closed when the reply is cancelled, so
a barge-in or hang-up leaves nothing running behind it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import grpc

from services.agent.events import CallEventSink
from services.agent.metrics import AgentMetrics
from services.agent.pipeline.bookkeeping import CallBookkeeping, TurnMarks
from services.agent.pipeline.caller_link import CallerLink
from services.agent.pipeline.endpointing import Endpointer, SpeechEnded, SpeechStarted
from services.agent.pipeline.errors import SessionError
from services.agent.pipeline.history import Conversation
from services.agent.pipeline.inbound import InboundAudio
from services.agent.pipeline.interruptions import final_interrupts, interrupts_while_speaking, reoffer
from services.agent.pipeline.outbound import OutboundAudio
from services.agent.pipeline.pausing import BargeInPause
from services.agent.pipeline.playout import Playout, Segment
from services.agent.pipeline.replies import Reply, ReplyGenerator
from services.agent.pipeline.replies import scripted as scripted_reply
from services.agent.pipeline.turn_end import turn_end_policy
from services.agent.ports import (
    CannotContinue,
    EndOfTurnModel,
    KnowledgeBase,
    LanguageModel,
    SpeechToText,
    SttStream,
    TextToSpeech,
    ToolRunner,
    VoiceActivity,
)
from services.agent.profile import AgentProfile
from services.shared.recordings.writer import CallRecorder
from voice.v1 import agent_session_pb2 as pb
from voice.v1 import events_pb2

log = logging.getLogger(__name__)

FRAME_MS = 20
PRE_ROLL_S = 0.3  # audio kept from before VAD confirmed speech, so STT hears the first syllable
TURN_AUDIO_S = 8.0  # the end-of-turn model looks at the last 8 s of the caller's turn
STT_FINAL_TIMEOUT_S = 1.5
IDLE_PROMPT = "Are you still there?"
IDLE_GOODBYE = "It seems we got disconnected. Please call again anytime. Goodbye!"
MAX_DURATION_GOODBYE = "We have reached the maximum length for this call. Goodbye!"
# Last resorts of the degradation chains (spec 12.3): no recogniser left, or no voice left.
TROUBLE_HEARING = "I'm having trouble hearing you. Please hold for an agent."


@dataclass(frozen=True)
class Providers:
    vad: VoiceActivity
    stt: SpeechToText
    llm: LanguageModel
    tts: TextToSpeech
    knowledge: KnowledgeBase | None = None
    tools: ToolRunner | None = None
    # The audio end-of-turn model (Smart Turn); None: the fixed grace decides.
    turn: EndOfTurnModel | None = None


class CallSession:
    def __init__(
        self,
        *,
        start: pb.SessionStart,
        profile: AgentProfile,
        providers: Providers,
        metrics: AgentMetrics,
        emit: Callable[[pb.ConverseResponse], None],
        output_sample_rate: int,
        events: CallEventSink | None = None,
    ) -> None:
        self.start = start
        self.profile = profile
        self.providers = providers
        self.metrics = metrics
        self.tenant = start.tenant_id
        self.books = CallBookkeeping(
            start, metrics, events, llm_name=providers.llm.name, voice_id=profile.voice.voice_id
        )
        self.inbound = InboundAudio(start.input_format)
        outbound = OutboundAudio(start.output_format, output_sample_rate)
        self.link = CallerLink(emit, self.books, outbound, metrics)
        tt = profile.turn_taking
        self.turn_end = turn_end_policy(providers.turn, tt)
        self.endpointer = Endpointer(tt.vad_threshold, tt.min_speech_ms, self.turn_end.silence_ms)
        self._turn_audio = bytearray()  # the caller's speech in the current turn, for the turn model
        self.vad = providers.vad.new_stream()
        self.history = Conversation(profile.max_history_tokens, profile.summarize_after_turns)
        self.playout = Playout(output_sample_rate, FRAME_MS, self._send_frame, self._segment_done)
        self.replies = ReplyGenerator(
            start=start,
            profile=profile,
            llm=providers.llm,
            tts=providers.tts,
            knowledge=providers.knowledge,
            tools=providers.tools,
            history=self.history,
            playout=self.playout,
            books=self.books,
            on_audible=lambda: self.link.set_state(pb.AGENT_STATE_SPEAKING),
        )
        self.stt: SttStream | None = None
        self.turn_index = 0
        self._audio_time = 0.0  # seconds of caller audio received (the VAD clock)
        self._pre_roll = bytearray()
        self._pending_text: list[str] = []
        self._pending_confidence: list[float] = []  # of the recognised finals in _pending_text
        self._interim_words: list[str] = []
        self._final_arrived = asyncio.Event()
        self._turn_finisher: asyncio.Task[None] | None = None
        self._reply: Reply | None = None
        self._next_reply_id = 0
        self._interrupted: tuple[str, float] | None = None  # unheard text, when
        self.pause = BargeInPause(self.playout, self.endpointer, tt.barge_in_pause_ms)
        self._ended = asyncio.Event()
        self._last_activity = time.monotonic()
        self._idle_prompts = 0
        # Both sides of the call when the agent records it (set by the server; see recordings/writer.py).
        self.recorder: CallRecorder | None = None

    # --- lifecycle ----------------------------------------------------------------------------------

    async def run(self, requests: AsyncIterator[pb.ConverseRequest]) -> None:
        self.stt = await self.providers.stt.open(self.profile.stt_context)
        background = [
            asyncio.create_task(self.playout.run(), name="playout"),
            asyncio.create_task(self._read_transcripts(), name="transcripts"),
            asyncio.create_task(self._watch_idle(), name="idle"),
        ]
        receiver = asyncio.create_task(self._receive(requests), name="receive")
        ended = asyncio.create_task(self._ended.wait(), name="ended")
        try:
            self.books.publish(
                agent_joined=events_pb2.AgentJoined(
                    agent_id=self.start.agent_id,
                    direction=self.start.direction,
                    from_number=self.start.caller_number,
                    to_number=self.start.called_number,
                )
            )
            self.books.bill_minutes()
            self.link.set_state(pb.AGENT_STATE_LISTENING)
            greeting = self.profile.agent.greeting
            if self.profile.greeting_enabled and greeting:
                self._start_reply(scripted=greeting)
            done, _ = await asyncio.wait({receiver, ended, *background}, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
        finally:
            tasks = [receiver, ended, *background]
            if self._reply is not None and self._reply.task is not None:
                tasks.append(self._reply.task)
            if self._turn_finisher is not None:
                tasks.append(self._turn_finisher)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.stt.aclose()

    async def _receive(self, requests: AsyncIterator[pb.ConverseRequest]) -> None:
        async for request in requests:
            kind = request.WhichOneof("event")
            if kind == "audio":
                await self._on_audio(self.inbound.decode(request.audio))
            elif kind == "dtmf":
                self._on_dtmf(request.dtmf)
            elif kind == "hangup":
                log.info("caller hung up", extra={"data": {"reason": request.hangup.reason}})
                books = self.books
                books.end_reason = books.end_reason or request.hangup.reason[:100] or "caller_hangup"
                return
            elif kind == "start":
                raise SessionError(grpc.StatusCode.FAILED_PRECONDITION, "Start was already received")
            else:
                raise SessionError(grpc.StatusCode.INVALID_ARGUMENT, "empty ConverseRequest (no event set)")

    # --- caller audio -------------------------------------------------------------------------------

    async def _on_audio(self, pcm: bytes) -> None:
        assert self.stt is not None
        window_s = self.vad.window_ms / 1000
        self._audio_time += len(pcm) / 2 / 16000
        if self.recorder is not None:
            self.recorder.caller(pcm)
        probabilities = await self.vad.probabilities(pcm)
        # The windows returned end at the newest audio; place them on the audio clock accordingly.
        first_start = self._audio_time - len(probabilities) * window_s
        was_speaking = self.endpointer.in_speech
        for i, probability in enumerate(probabilities):
            event = self.endpointer.update(probability, first_start + i * window_s, window_s)
            if isinstance(event, SpeechStarted):
                await self._on_speech_started(bytes(self._pre_roll))
                self._pre_roll.clear()
            elif isinstance(event, SpeechEnded):
                self._on_speech_ended(event)
            reply = self._reply
            audible = reply is not None and reply.audible and self.playout.active
            self.pause.check(audible, first_start + (i + 1) * window_s)
        if self.pause.blip_over():
            self._resume("noise")
        if self.endpointer.in_speech or was_speaking:
            await self.stt.push(pcm)
            self._keep_turn_audio(pcm)
            self._check_barge_in()
        else:
            self._pre_roll += pcm
            excess = len(self._pre_roll) - int(PRE_ROLL_S * 16000) * 2
            if excess > 0:
                del self._pre_roll[:excess]

    async def _on_speech_started(self, pre_roll: bytes) -> None:
        assert self.stt is not None
        self._last_activity = time.monotonic()
        self._interim_words = []
        self.pause.speech_started()  # now STT or the voiced duration confirm the interruption or not
        if self._turn_finisher is not None:
            self._turn_finisher.cancel()  # the caller goes on with the same turn
            self._turn_finisher = None
        reply = self._reply
        if reply is not None and not reply.audible and reply.marks is not None:
            # The caller kept talking after we decided their turn was over: take the reply back.
            self._cancel_reply(restore_caller_text=True)
        if pre_roll:
            await self.stt.push(pre_roll)
            self._keep_turn_audio(pre_roll)

    def _keep_turn_audio(self, pcm: bytes) -> None:
        self._turn_audio += pcm
        excess = len(self._turn_audio) - int(TURN_AUDIO_S * 16000) * 2
        if excess > 0:
            del self._turn_audio[:excess]

    def _on_speech_ended(self, event: SpeechEnded) -> None:
        assert self.stt is not None
        now = time.monotonic()
        self._last_activity = now
        lag = self._audio_time - (event.at)
        marks = TurnMarks(self.turn_index + 1, end_of_speech=now - max(lag, 0.0))
        self._turn_finisher = asyncio.create_task(self._finish_turn(marks), name="finish-turn")

    def _resume(self, why: str) -> None:
        """The interruption was false (noise, a backchannel): the paused reply goes on where it stopped."""
        if self.pause.resume(why):
            self.metrics.false_interruptions.labels(self.tenant).inc()

    def _check_barge_in(self) -> None:
        reply = self._reply
        speaking = self.playout.active or (reply is not None and reply.audible)
        if not speaking or reply is None:
            return
        heard = self.endpointer.voiced_duration()
        min_ms = self.profile.turn_taking.barge_in_min_speech_ms
        if not interrupts_while_speaking(self._interim_words, heard, min_ms):
            return
        self._barge_in()

    def _barge_in(self) -> None:
        reply = self._reply
        assert reply is not None
        report = self.playout.clear()
        self.pause.cleared()
        heard = " ".join([*reply.played_sentences, report.heard_text]).strip()
        self._cancel_reply(restore_caller_text=False)
        self.metrics.barge_ins.labels(self.tenant).inc()
        log.info("barge-in", extra={"data": {"heard": heard, "unheard": report.unheard_text}})
        # Only what the caller heard of this round stays in the history.
        self.history.replace_or_add_agent(reply.round_message, heard)
        # A re-offer (if the interruption turns out to be noise) restarts the interrupted sentence.
        self._interrupted = (report.resume_text, time.monotonic()) if report.unheard_text else None
        self.link.emit(
            pb.ConverseResponse(
                clear_audio=pb.ClearAudio(
                    last_sequence_number=report.last_sequence_number, turn_index=self.turn_index
                )
            )
        )
        self.link.agent_transcript(heard, self.turn_index, interrupted=True)
        self.link.emit(pb.ConverseResponse(state=pb.AgentStateChange(state=pb.AGENT_STATE_LISTENING)))
        self.link.state = pb.AGENT_STATE_LISTENING

    def _on_dtmf(self, dtmf: pb.DtmfDigit) -> None:
        digit = dtmf.digit.strip()
        if len(digit) != 1 or digit.upper() not in "0123456789*#ABCD":
            raise SessionError(grpc.StatusCode.INVALID_ARGUMENT, f"invalid DTMF digit {dtmf.digit!r}")
        self._pending_text.append(digit)
        self.link.emit(
            pb.ConverseResponse(
                transcript=pb.Transcript(
                    speaker=pb.SPEAKER_CALLER,
                    text=digit,
                    is_final=True,
                    confidence=1.0,
                    turn_index=self.turn_index + 1,
                )
            )
        )
        if not self.endpointer.in_speech:
            if self._turn_finisher is not None:
                self._turn_finisher.cancel()
            marks = TurnMarks(self.turn_index + 1, end_of_speech=time.monotonic())
            self._turn_finisher = asyncio.create_task(self._finish_turn(marks, dtmf=True), name="finish-turn")

    # --- caller turns -------------------------------------------------------------------------------

    async def _read_transcripts(self) -> None:
        try:
            await self._read_transcript_results()
        except CannotContinue as exc:
            # Every recogniser failed: say so and hand the caller to a human. The session stays up
            # (the bridge ends it once the transfer is done).
            log.error("speech recognition exhausted: transferring", extra={"data": {"reason": exc.reason}})
            self._cancel_reply(restore_caller_text=False)
            self._start_reply(scripted=TROUBLE_HEARING)
            assert self._reply is not None
            self._reply.deferred.append(self._handover("stt_unavailable"))
            await self._ended.wait()

    def _handover(self, reason: str) -> pb.ConverseResponse:
        targets = self.profile.agent.transfer_targets
        return pb.ConverseResponse(
            transfer=pb.TransferRequest(
                type=pb.TRANSFER_TYPE_BLIND,
                target=targets[0].target if targets else "",
                context=f"The AI agent could not continue ({reason}).",
                reason=reason,
            )
        )

    async def _read_transcript_results(self) -> None:
        assert self.stt is not None
        async for result in self.stt.results():
            text = result.text.strip()
            if not result.is_final:
                self._interim_words = text.lower().split()
                if text:
                    self.link.caller_transcript(result, text, self.turn_index + 1)
                continue
            if text:
                # The turn this text opens, numbered as on the stream (the greeting is turn 0).
                self.books.publish_turn(pb.SPEAKER_CALLER, text, result.confidence, self.turn_index + 1)
                self._pending_text.append(text)
                self._pending_confidence.append(result.confidence)
                self._interrupted = None  # real words: this was a real interruption, not noise
                self.link.caller_transcript(result, text, self.turn_index + 1)
            self._final_arrived.set()

    async def _finish_turn(self, marks: TurnMarks, *, dtmf: bool = False) -> None:
        """After the caller stops: get the final transcript, wait the grace period, then answer."""
        assert self.stt is not None
        if not dtmf:
            self._final_arrived.clear()
            marks.finalize_called = time.monotonic()
            await self.stt.finalize()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._final_arrived.wait(), STT_FINAL_TIMEOUT_S)
            marks.stt_final = time.monotonic()
        text = " ".join(self._pending_text).strip()
        if self.pause.active and self._reply is not None:
            confidence = min(self._pending_confidence, default=1.0)
            if not text or not final_interrupts(text, confidence):
                # No words, or a backchannel: the agent goes on at once, its audio never cleared.
                self._pending_text, self._pending_confidence = [], []
                self._turn_audio.clear()
                self._turn_finisher = None
                self._resume("backchannel" if text else "no words")
                return
        if text:
            decision = await self.turn_end.decide(bytes(self._turn_audio), text)
            if decision.model_ms is not None:
                log.debug(
                    "end of turn",
                    extra={
                        "data": {
                            "p_complete": decision.complete_probability,
                            "ms": decision.model_ms,
                            "wait_s": decision.wait_s,
                        }
                    },
                )
            await asyncio.sleep(decision.wait_s)
        else:
            await asyncio.sleep(self.profile.turn_taking.grace_ms / 1000)
        self._turn_finisher = None
        text = " ".join(self._pending_text).strip()
        if not text:
            await self._maybe_reoffer()
            return
        confidence = min(self._pending_confidence, default=1.0)  # DTMF alone is certain
        self._pending_text, self._pending_confidence = [], []
        self._turn_audio.clear()
        marks.turn_end = time.monotonic()
        if self._reply is not None:
            if not final_interrupts(text, confidence):
                return  # a backchannel: the agent keeps talking, its audio is never cleared
            self._barge_in()
        self._start_reply(caller_text=text, marks=marks, confidence=confidence)

    async def _maybe_reoffer(self) -> None:
        if self._interrupted is None:
            return
        unheard, since = self._interrupted
        wait = self.profile.turn_taking.false_interruption_ms / 1000 - (time.monotonic() - since)
        if wait > 0:
            await asyncio.sleep(wait)
        if self._interrupted is not None and not self._pending_text and self._reply is None:
            self._interrupted = None
            log.info("interruption had no words: re-offering the reply")
            self._start_reply(scripted=reoffer(unheard))

    # --- replies ------------------------------------------------------------------------------------

    def _start_reply(
        self,
        *,
        caller_text: str = "",
        scripted: str = "",
        marks: TurnMarks | None = None,
        end: str = "",
        confidence: float = 1.0,
    ) -> None:
        self._next_reply_id += 1
        reply = Reply(self._next_reply_id, marks, caller_text, confidence)
        if caller_text:
            self.turn_index += 1
            self.history.add_caller(caller_text, confidence)
        self._reply = reply
        reply.task = asyncio.create_task(
            self._run_reply(reply, scripted, end), name=f"reply-{reply.reply_id}"
        )

    def _cancel_reply(self, *, restore_caller_text: bool) -> None:
        reply = self._reply
        if reply is None:
            return
        self._reply = None
        if reply.task is not None:
            reply.task.cancel()
        if self.pause.active:
            # Its paused audio was never sent (no ClearAudio needed), and must not play after a resume.
            self.playout.clear()
            self.pause.cleared()
        if restore_caller_text and reply.caller_text:
            self.history.remove_last_caller(reply.caller_text)
            self._pending_text.insert(0, reply.caller_text)
            self._pending_confidence.insert(0, reply.caller_confidence)
            self.turn_index -= 1

    async def _run_reply(self, reply: Reply, scripted: str, end: str) -> None:
        try:
            self.link.set_state(pb.AGENT_STATE_THINKING)
            if scripted:
                await self.replies.speak_round(reply, scripted_reply(scripted))
                self.history.add_agent(scripted)
            else:
                await self.replies.converse(reply)
            await self._drain(reply)
            if text := " ".join(t for t in reply.spoken if t):
                self.link.agent_transcript(text, self.turn_index)
            for message in reply.deferred:
                self.link.emit(message)
                if message.WhichOneof("event") == "end_call":
                    self._ended.set()
            if end:
                self.link.emit(pb.ConverseResponse(end_call=pb.EndCall(reason=end)))
                self._ended.set()
        except asyncio.CancelledError:
            raise
        except CannotContinue as exc:
            # No voice left (TTS and clips failed): the caller goes to a human.
            self.metrics.errors.labels("agent", f"{exc.port}_exhausted").inc()
            log.error("cannot continue the call: transferring", extra={"data": {"reason": str(exc)}})
            self.link.emit(self._handover(f"{exc.port}_unavailable"))
        except Exception:
            self.metrics.errors.labels("agent", "reply_failed").inc()
            log.exception("reply failed")
        finally:
            if self._reply is reply:
                self._reply = None
                self._last_activity = time.monotonic()
                if not self._ended.is_set():
                    self.link.set_state(pb.AGENT_STATE_LISTENING)

    async def _drain(self, reply: Reply) -> None:
        """Waits until the caller has heard the whole reply."""
        await self.playout.wait_played(reply.reply_id)

    # --- output -------------------------------------------------------------------------------------

    async def _send_frame(self, pcm: bytes, sequence_number: int, timestamp: int, segment: Segment) -> None:
        self.link.audio(pcm, sequence_number, timestamp)
        if self.recorder is not None:
            self.recorder.agent(pcm)
        reply = self._reply
        if reply is not None and reply.reply_id == segment.reply_id and reply.marks is not None:
            marks = reply.marks
            if marks.first_frame_sent is None:
                marks.first_frame_sent = time.monotonic()
                if (latency := self.books.turn_latency(marks)) is not None:
                    self.link.emit(pb.ConverseResponse(latency=latency))
        self.link.count_underruns(self.playout.underruns)

    def _segment_done(self, segment: Segment) -> None:
        reply = self._reply
        if reply is not None and reply.reply_id == segment.reply_id:
            reply.played_sentences.append(segment.text)

    # --- events on the bus ---------------------------------------------------------------------------

    @property
    def duration_s(self) -> float:
        return self.books.duration_s

    @property
    def end_reason(self) -> str:
        """Why the call ended (call.ended): the first of the agent's transfer or hang-up, or the caller's."""
        return self.books.end_reason

    # --- idle and limits ----------------------------------------------------------------------------

    async def _watch_idle(self) -> None:
        """Prompts a silent caller, says goodbye after too many prompts or at the maximum duration.
        Never returns before the call ends: the session ends when any of its tasks finishes."""
        tt = self.profile.turn_taking
        while not self._ended.is_set():
            await asyncio.sleep(0.25)
            self.books.bill_minutes()
            now = time.monotonic()
            if self.books.duration_s > tt.max_call_s and self._reply is None:
                self._start_reply(scripted=MAX_DURATION_GOODBYE, end="max_duration")
                break
            paused = self.pause.since
            quiet = not self.endpointer.in_speech and self._turn_finisher is None
            if paused is not None and quiet and now - paused > tt.false_interruption_ms / 1000:
                self._resume("no speech")  # nothing confirmed the interruption in time
            busy = self._reply is not None or self.endpointer.in_speech or self._turn_finisher is not None
            if busy or now - self._last_activity < tt.idle_prompt_s:
                continue
            self._last_activity = now
            if self._idle_prompts >= tt.max_idle_prompts:
                self._start_reply(scripted=IDLE_GOODBYE, end="caller_idle")
                break
            self._idle_prompts += 1
            self._start_reply(scripted=IDLE_PROMPT)
        await self._ended.wait()
