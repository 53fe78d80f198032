"""One call's conversation: caller audio in, agent voice and call control out.

The session owns a few cooperating tasks on the event loop:
- receive: decodes caller frames, runs VAD (endpointing, barge-in) and feeds STT while the caller speaks;
- transcripts: turns STT results into caller turns;
- reply: one at a time, LLM -> sentence chunker -> normalization -> TTS -> playout, with tool rounds;
- playout: paces the agent's audio out in real time;
- idle watch: "Are you still there?", maximum call duration.
Everything a reply starts (LLM stream, TTS streams, tool calls) is closed when the reply is cancelled, so
a barge-in or hang-up leaves nothing running behind it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message

from services.agent.events import CallEventSink, NullEventSink
from services.agent.metrics import AgentMetrics
from services.agent.pipeline.chunker import SentenceChunker
from services.agent.pipeline.endpointing import Endpointer, SpeechEnded, SpeechStarted
from services.agent.pipeline.errors import SessionError
from services.agent.pipeline.history import Conversation
from services.agent.pipeline.inbound import InboundAudio
from services.agent.pipeline.normalize import normalize_for_speech
from services.agent.pipeline.outbound import OutboundAudio
from services.agent.pipeline.playout import Playout, Segment
from services.agent.pipeline.turn_end import turn_end_policy
from services.agent.ports import (
    CannotContinue,
    Completed,
    EndOfTurnModel,
    KnowledgeBase,
    LanguageModel,
    LlmRequest,
    SpeechToText,
    SttStream,
    TextDelta,
    TextToSpeech,
    ToolCallRequested,
    ToolOutcome,
    ToolRunner,
    ToolUse,
    Transcription,
    VoiceActivity,
)
from services.agent.profile import AgentProfile
from voice.v1 import agent_session_pb2 as pb
from voice.v1 import events_pb2, media_pb2

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_TOOL_ROUNDS = 4
FRAME_MS = 20
PRE_ROLL_S = 0.3  # audio kept from before VAD confirmed speech, so STT hears the first syllable
TURN_AUDIO_S = 8.0  # the end-of-turn model looks at the last 8 s of the caller's turn
STT_FINAL_TIMEOUT_S = 1.5
BACKCHANNEL = frozenset(
    ["uh", "huh", "uh-huh", "mhm", "mm", "hmm", "yeah", "yep", "ok", "okay", "right", "sure"]
)
# One word that does interrupt the agent (any other single word while it talks is a backchannel).
INTERRUPTING = frozenset(
    ["stop", "wait", "no", "hold", "sorry", "pardon", "excuse", "hello", "hey", "actually", "what", "but"]
)
# Speech this long while the agent talks interrupts it whatever the recogniser has made of it so far.
SURE_SPEECH_S = 0.8
# Below this recognition confidence, a short utterance while the agent talks is not an interruption.
UNSURE_INTERRUPTION = 0.45
IDLE_PROMPT = "Are you still there?"
IDLE_GOODBYE = "It seems we got disconnected. Please call again anytime. Goodbye!"
MAX_DURATION_GOODBYE = "We have reached the maximum length for this call. Goodbye!"
REOFFER_PREFIX = "As I was saying, "
TOOL_FILLER = "Let me check that for you."
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


@dataclass
class TurnMarks:
    """Wall-clock (monotonic) marks of one turn, for the TurnLatency message and histograms."""

    turn_index: int
    end_of_speech: float | None = None
    finalize_called: float | None = None
    stt_final: float | None = None
    turn_end: float | None = None
    llm_request: float | None = None
    llm_first_token: float | None = None
    first_sentence: float | None = None
    tts_request: float | None = None
    tts_first_audio: float | None = None
    first_frame_sent: float | None = None
    reported: bool = False


@dataclass
class Reply:
    """A reply in progress: its task, its turn's marks, what it has said, what it defers to the end."""

    reply_id: int
    marks: TurnMarks | None
    caller_text: str
    caller_confidence: float = 1.0
    task: asyncio.Task[None] | None = None
    audible: bool = False
    played_sentences: list[str] = field(default_factory=list)
    round_text: str = ""
    round_message: object | None = None
    deferred: list[pb.ConverseResponse] = field(default_factory=list)
    spoken: list[str] = field(default_factory=list)  # every round's text, for the agent's transcript


@contextlib.asynccontextmanager
async def closing(stream: AsyncIterator[T]) -> AsyncIterator[AsyncIterator[T]]:
    """Closes a provider's stream however the block exits, so cancellation reaches the provider."""
    try:
        yield stream
    finally:
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            await aclose()


_KEEP_CAPITAL = frozenset(["I'm", "I've", "I'll", "I'd", "Doctor", "Dr", "Mr", "Mrs", "Ms", "Miss"])


def _continuing(sentence: str) -> str:
    """The sentence as it reads after "As I was saying, ": "we are open ..." ("I", titles keep capitals)."""
    first = sentence.split(" ", 1)[0]
    if first[:1].isupper() and first[1:].islower() and first.rstrip(".") not in _KEEP_CAPITAL:
        return first.lower() + sentence[len(first) :]
    return sentence


def _duration(seconds: float) -> Duration:
    d = Duration()
    d.FromNanoseconds(int(max(seconds, 0.0) * 1e9))
    return d


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
        self._send = emit
        self.tenant = start.tenant_id
        # Why the call ended, for call.ended: the first of the agent's transfer or hang-up, or the caller's.
        self.end_reason = ""
        self._events = events or NullEventSink()
        self._minutes_billed = 0
        self.inbound = InboundAudio(start.input_format)
        self.outbound = OutboundAudio(start.output_format, output_sample_rate)
        tt = profile.turn_taking
        self.turn_end = turn_end_policy(providers.turn, tt)
        self.endpointer = Endpointer(tt.vad_threshold, tt.min_speech_ms, self.turn_end.silence_ms)
        self._turn_audio = bytearray()  # the caller's speech in the current turn, for the turn model
        self.vad = providers.vad.new_stream()
        self.history = Conversation(profile.max_history_tokens, profile.summarize_after_turns)
        self.playout = Playout(output_sample_rate, FRAME_MS, self._send_frame, self._segment_done)
        self.state: int = pb.AGENT_STATE_UNSPECIFIED
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
        self._ended = asyncio.Event()
        self._started_at = time.monotonic()
        self._last_activity = time.monotonic()
        self._idle_prompts = 0
        self._turn_marks: TurnMarks | None = None
        self.underruns_reported = 0

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
            self._publish(
                agent_joined=events_pb2.AgentJoined(
                    agent_id=self.start.agent_id,
                    direction=self.start.direction,
                    from_number=self.start.caller_number,
                    to_number=self.start.called_number,
                )
            )
            self._bill_minutes()
            self._set_state(pb.AGENT_STATE_LISTENING)
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
                self.end_reason = self.end_reason or request.hangup.reason[:100] or "caller_hangup"
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

    def _check_barge_in(self) -> None:
        reply = self._reply
        speaking = self.playout.active or (reply is not None and reply.audible)
        if not speaking or reply is None:
            return
        heard = self.endpointer.voiced_duration()
        if heard * 1000 < self.profile.turn_taking.barge_in_min_speech_ms:
            return
        words = self._interim_words
        if words and all(w in BACKCHANNEL for w in words):
            return  # "uh-huh" while the agent talks is listening, not interrupting
        if len(words) < 3 and not any(w in INTERRUPTING for w in words) and heard < SURE_SPEECH_S:
            # Not yet evidence of an interruption: the offline recogniser often hears a backchannel as one
            # or two odd words ("are", "book you").
            # The final transcript decides if the caller stops here (_finish_turn).
            return
        self._barge_in()

    def _barge_in(self) -> None:
        reply = self._reply
        assert reply is not None
        report = self.playout.clear()
        heard = " ".join([*reply.played_sentences, report.heard_text]).strip()
        self._cancel_reply(restore_caller_text=False)
        self.metrics.barge_ins.labels(self.tenant).inc()
        log.info("barge-in", extra={"data": {"heard": heard, "unheard": report.unheard_text}})
        # Only what the caller heard of this round stays in the history.
        self.history.replace_or_add_agent(reply.round_message, heard)
        # A re-offer (if the interruption turns out to be noise) restarts the interrupted sentence.
        self._interrupted = (report.resume_text, time.monotonic()) if report.unheard_text else None
        self._emit(
            pb.ConverseResponse(
                clear_audio=pb.ClearAudio(
                    last_sequence_number=report.last_sequence_number, turn_index=self.turn_index
                )
            )
        )
        self._emit_agent_transcript(heard, interrupted=True)
        self._emit(pb.ConverseResponse(state=pb.AgentStateChange(state=pb.AGENT_STATE_LISTENING)))
        self.state = pb.AGENT_STATE_LISTENING

    def _on_dtmf(self, dtmf: pb.DtmfDigit) -> None:
        digit = dtmf.digit.strip()
        if len(digit) != 1 or digit.upper() not in "0123456789*#ABCD":
            raise SessionError(grpc.StatusCode.INVALID_ARGUMENT, f"invalid DTMF digit {dtmf.digit!r}")
        self._pending_text.append(digit)
        self._emit(
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
                    self._emit_caller_transcript(result, text)
                continue
            if text:
                # The turn this text opens, numbered as on the stream (the greeting is turn 0).
                self._publish_turn(pb.SPEAKER_CALLER, text, result.confidence, turn_index=self.turn_index + 1)
                self._pending_text.append(text)
                self._pending_confidence.append(result.confidence)
                self._interrupted = None  # real words: this was a real interruption, not noise
                self._emit_caller_transcript(result, text)
            self._final_arrived.set()

    def _emit_caller_transcript(self, result: Transcription, text: str) -> None:
        transcript = pb.Transcript(
            speaker=pb.SPEAKER_CALLER,
            text=text,
            is_final=result.is_final,
            confidence=result.confidence,
            turn_index=self.turn_index + 1,
        )
        if result.is_final:
            transcript.start_offset.CopyFrom(_duration(result.start_s))
            transcript.end_offset.CopyFrom(_duration(result.end_s))
        self._emit(pb.ConverseResponse(transcript=transcript))

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
        if text:
            decision = await self.turn_end.decide(bytes(self._turn_audio), text)
            if decision.model_ms is not None:
                log.debug(
                    "end of turn",
                    extra={"data": {"p_complete": decision.complete_probability, "ms": decision.model_ms}},
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
            if all(w in BACKCHANNEL for w in text.lower().split()):
                return  # "uh-huh" while the agent talks: it keeps talking
            words = text.lower().split()
            if len(words) == 1 and words[0] not in INTERRUPTING:
                return  # one word that is not a command: a backchannel the recogniser misheard
            if confidence < UNSURE_INTERRUPTION:
                # Short, and words the recogniser is unsure of ("mm-hm" heard as "him"): listening
                # noises, not an interruption; the agent's audio is never cleared for them.
                return
            self._barge_in()  # short but real words ("stop", "no"): an interruption after all
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
            self._start_reply(scripted=REOFFER_PREFIX + _continuing(unheard))

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
        if restore_caller_text and reply.caller_text:
            self.history.remove_last_caller(reply.caller_text)
            self._pending_text.insert(0, reply.caller_text)
            self._pending_confidence.insert(0, reply.caller_confidence)
            self.turn_index -= 1

    async def _run_reply(self, reply: Reply, scripted: str, end: str) -> None:
        try:
            self._set_state(pb.AGENT_STATE_THINKING)
            if scripted:
                await self._speak_round(reply, self._scripted(scripted))
                self.history.add_agent(scripted)
            else:
                await self._converse(reply)
            await self._drain(reply)
            if text := " ".join(t for t in reply.spoken if t):
                self._emit_agent_transcript(text)
            for message in reply.deferred:
                self._emit(message)
                if message.WhichOneof("event") == "end_call":
                    self._ended.set()
            if end:
                self._emit(pb.ConverseResponse(end_call=pb.EndCall(reason=end)))
                self._ended.set()
        except asyncio.CancelledError:
            raise
        except CannotContinue as exc:
            # No voice left (TTS and clips failed): the caller goes to a human.
            self.metrics.errors.labels("agent", f"{exc.port}_exhausted").inc()
            log.error("cannot continue the call: transferring", extra={"data": {"reason": str(exc)}})
            self._emit(self._handover(f"{exc.port}_unavailable"))
        except Exception:
            self.metrics.errors.labels("agent", "reply_failed").inc()
            log.exception("reply failed")
        finally:
            if self._reply is reply:
                self._reply = None
                self._last_activity = time.monotonic()
                if not self._ended.is_set():
                    self._set_state(pb.AGENT_STATE_LISTENING)

    @staticmethod
    async def _scripted(text: str) -> AsyncIterator[TextDelta | ToolCallRequested | Completed]:
        yield TextDelta(text)
        yield Completed("end_turn")

    async def _converse(self, reply: Reply) -> None:
        for _ in range(MAX_TOOL_ROUNDS):
            request = await self._build_request(reply.caller_text)
            if reply.marks is not None and reply.marks.llm_request is None:
                reply.marks.llm_request = time.monotonic()
            tool_uses = await self._speak_round(reply, self.providers.llm.stream(request))
            reply.round_message = self.history.add_agent(reply.round_text, tuple(tool_uses))
            if not tool_uses:
                return
            results = await self._run_tools(reply, tool_uses)
            self.history.add_tool_results(results)
            if reply.deferred:
                return  # transfer or hang-up: the conversation is handed over
        log.warning("tool rounds exhausted", extra={"data": {"max": MAX_TOOL_ROUNDS}})

    async def _build_request(self, caller_text: str) -> LlmRequest:
        agent = self.profile.agent
        system = [agent.system_prompt]
        if self.start.context:
            system.append(
                "Caller context: " + ", ".join(f"{k}={v}" for k, v in sorted(self.start.context.items()))
            )
        if self.providers.knowledge is not None and caller_text:
            snippets = await self.providers.knowledge.search(caller_text)
            if snippets:
                system.append("Relevant knowledge:\n" + "\n".join(s.text for s in snippets))
        if summary := self.history.summary_text():
            system.append(summary)
        return LlmRequest(
            system="\n\n".join(s for s in system if s),
            messages=tuple(self.history.messages),
            tools=self.profile.tools,
            max_tokens=self.profile.max_tokens,
            temperature=self.profile.temperature,
        )

    async def _speak_round(
        self, reply: Reply, events: AsyncIterator[TextDelta | ToolCallRequested | Completed]
    ) -> list[ToolUse]:
        """Streams one LLM round into speech: sentences go to TTS as soon as they are complete."""
        sentences: asyncio.Queue[str | None] = asyncio.Queue()
        speaker = asyncio.create_task(self._speak_sentences(reply, sentences), name="speaker")
        chunker = SentenceChunker()
        tool_uses: list[ToolUse] = []
        reply.round_text = ""
        reply.round_message = None
        reply.played_sentences = []
        try:
            async with closing(events) as stream:
                async for event in stream:
                    if isinstance(event, TextDelta):
                        marks = reply.marks
                        if marks is not None and marks.llm_first_token is None:
                            marks.llm_first_token = time.monotonic()
                        reply.round_text += event.text
                        for sentence in chunker.push(event.text):
                            if marks is not None and marks.first_sentence is None:
                                marks.first_sentence = time.monotonic()
                            sentences.put_nowait(sentence)
                    elif isinstance(event, ToolCallRequested):
                        tool_uses.append(event.tool_use)
            for sentence in chunker.flush():
                if reply.marks is not None and reply.marks.first_sentence is None:
                    reply.marks.first_sentence = time.monotonic()
                sentences.put_nowait(sentence)
            sentences.put_nowait(None)
            await speaker
        finally:
            speaker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await speaker
        reply.round_text = reply.round_text.strip()
        reply.spoken.append(reply.round_text)
        return tool_uses

    async def _speak_sentences(self, reply: Reply, sentences: asyncio.Queue[str | None]) -> None:
        tts = self.providers.tts
        while (sentence := await sentences.get()) is not None:
            segment = self.playout.begin(sentence, reply.reply_id)
            marks = reply.marks
            if marks is not None and marks.tts_request is None:
                marks.tts_request = time.monotonic()
            try:
                speech = tts.synthesize(normalize_for_speech(sentence), self.profile.voice)
                async with closing(speech) as audio:
                    async for pcm in audio:
                        if marks is not None and marks.tts_first_audio is None:
                            marks.tts_first_audio = time.monotonic()
                        if not reply.audible:
                            reply.audible = True
                            self._set_state(pb.AGENT_STATE_SPEAKING)
                        self.playout.append(segment, pcm)
            finally:
                self.playout.finish(segment)

    async def _drain(self, reply: Reply) -> None:
        """Waits until the caller has heard the whole reply."""
        await self.playout.wait_played(reply.reply_id)

    async def _run_tools(self, reply: Reply, tool_uses: list[ToolUse]) -> dict[str, str]:
        results: dict[str, str] = {}
        webhook_uses = []
        for use in tool_uses:
            if use.name == "transfer_call":
                results[use.id] = json.dumps({"status": "transferring"})
                reply.deferred.append(self._transfer_message(use))
                self._publish_tool_call(use, "ok", {"status": "transferring"}, 0.0)
            elif use.name == "end_call":
                results[use.id] = json.dumps({"status": "ending call"})
                reason = str(use.input.get("reason", "agent_hangup")) if use.input else "agent_hangup"
                reply.deferred.append(pb.ConverseResponse(end_call=pb.EndCall(reason=reason)))
                self._publish_tool_call(use, "ok", {"status": "ending call"}, 0.0)
            else:
                webhook_uses.append(use)
        if webhook_uses:
            runner = self.providers.tools
            if runner is None:
                for use in webhook_uses:
                    results[use.id] = json.dumps({"error": f"tool {use.name} is not available on this agent"})
            else:
                fillers = {t.name: t.filler for t in self.profile.agent.tools if t.filler}
                line = next((fillers[u.name] for u in webhook_uses if u.name in fillers), TOOL_FILLER)
                filler = asyncio.create_task(self._speak_round(reply, self._scripted(line)))
                outcomes: list[ToolOutcome] = await asyncio.gather(*(runner.run(u) for u in webhook_uses))
                await filler
                for use, outcome in zip(webhook_uses, outcomes, strict=True):
                    results[use.id] = json.dumps({"status": outcome.status, **outcome.output})
                    self._publish_tool_call(use, outcome.status, dict(outcome.output), outcome.latency_s)
        return results

    def _transfer_message(self, use: ToolUse) -> pb.ConverseResponse:
        kinds = {
            "blind": pb.TRANSFER_TYPE_BLIND,
            "warm": pb.TRANSFER_TYPE_WARM,
            "conference": pb.TRANSFER_TYPE_CONFERENCE,
        }
        args = dict(use.input)
        kind = kinds.get(str(args.get("type", "warm")), pb.TRANSFER_TYPE_WARM)
        context = str(args.get("context", ""))
        if kind == pb.TRANSFER_TYPE_WARM:
            # The person taking the call gets a briefing: the caller's words so far, most recent last.
            said = [m.text for m in self.history.messages if m.role == "user" and m.text][-3:]
            context = (context + " Caller said: " + " / ".join(said)).strip()
        return pb.ConverseResponse(
            transfer=pb.TransferRequest(
                type=kind,
                target=str(args.get("target", "")),
                context=context,
                reason=str(args.get("reason", "caller_request")),
            )
        )

    # --- output -------------------------------------------------------------------------------------

    async def _send_frame(self, pcm: bytes, sequence_number: int, timestamp: int, segment: Segment) -> None:
        self._emit(
            pb.ConverseResponse(
                audio=media_pb2.AudioFrame(
                    sequence_number=sequence_number,
                    timestamp=self.outbound.timestamp(timestamp),
                    sample_rate=self.outbound.rate,
                    codec=self.outbound.codec,
                    channels=1,
                    payload=self.outbound.encode(pcm),
                )
            )
        )
        reply = self._reply
        if reply is not None and reply.reply_id == segment.reply_id and reply.marks is not None:
            marks = reply.marks
            if marks.first_frame_sent is None:
                marks.first_frame_sent = time.monotonic()
                self._report_latency(marks)
        if self.playout.underruns > self.underruns_reported:
            self.metrics.underruns.labels(self.tenant).inc(self.playout.underruns - self.underruns_reported)
            self.underruns_reported = self.playout.underruns

    def _segment_done(self, segment: Segment) -> None:
        reply = self._reply
        if reply is not None and reply.reply_id == segment.reply_id:
            reply.played_sentences.append(segment.text)

    def _report_latency(self, m: TurnMarks) -> None:
        if m.end_of_speech is None or m.first_frame_sent is None:
            return
        base = m.end_of_speech

        def since(t: float | None) -> Duration:
            return _duration((t - base) if t is not None else 0.0)

        stt = (m.stt_final - m.finalize_called) if m.stt_final and m.finalize_called else 0.0
        llm = (m.first_sentence - m.llm_request) if m.first_sentence and m.llm_request else 0.0
        tts = (m.tts_first_audio - m.tts_request) if m.tts_first_audio and m.tts_request else 0.0
        waits = ((m.finalize_called or base) - base) + (
            (m.turn_end or base) - (m.stt_final or m.turn_end or base)
        )
        e2e = m.first_frame_sent - base
        latency = pb.TurnLatency(
            turn_index=m.turn_index,
            stt_final=since(m.stt_final),
            llm_first_token=since(m.llm_first_token),
            first_sentence_to_tts=since(m.tts_request),
            tts_first_audio=since(m.tts_first_audio),
            first_audio_frame_sent=since(m.first_frame_sent),
            provider_time=_duration(stt + llm + tts),
            endpointing=_duration(waits),
        )
        # The marks are monotonic; the wall-clock end of speech lets the caller side line them up.
        latency.end_of_speech_time.FromNanoseconds(int((time.time() - (time.monotonic() - base)) * 1e9))
        self._emit(pb.ConverseResponse(latency=latency))
        tenant = self.tenant
        self.metrics.stt_latency.labels(tenant).observe(stt)
        if m.llm_first_token and m.llm_request:
            self.metrics.llm_latency.labels(tenant, self.providers.llm.name).observe(
                m.llm_first_token - m.llm_request
            )
        self.metrics.tts_latency.labels(tenant, self.profile.voice.voice_id).observe(tts)
        self.metrics.e2e_latency.labels(tenant).observe(e2e)
        self.metrics.overhead.labels(tenant).observe(max(e2e - stt - llm - tts - waits, 0.0))

    def _set_state(self, state: int) -> None:
        if state != self.state:
            self.state = state
            self._emit(pb.ConverseResponse(state=pb.AgentStateChange(state=state)))  # type: ignore[arg-type]

    def _emit_agent_transcript(self, text: str, *, interrupted: bool = False) -> None:
        """What the agent said (or, interrupted, what the caller heard of it) as a final transcript."""
        self._publish_turn(pb.SPEAKER_AGENT, text, 1.0, interrupted=interrupted)
        self._emit(
            pb.ConverseResponse(
                transcript=pb.Transcript(
                    speaker=pb.SPEAKER_AGENT,
                    text=text,
                    is_final=True,
                    confidence=1.0,
                    turn_index=self.turn_index,
                    interrupted=interrupted,
                )
            )
        )

    # --- events on the bus ---------------------------------------------------------------------------

    @property
    def duration_s(self) -> float:
        return time.monotonic() - self._started_at

    def _emit(self, message: pb.ConverseResponse) -> None:
        """Everything sent to the caller side goes through here: transfers and hang-ups are also events."""
        kind = message.WhichOneof("event")
        if kind == "transfer":
            t = message.transfer
            self.end_reason = self.end_reason or "transferred"
            self._publish(
                call_transfer_requested=events_pb2.CallTransferRequested(
                    type=t.type, target=t.target, context=t.context, reason=t.reason
                )
            )
        elif kind == "end_call":
            self.end_reason = self.end_reason or message.end_call.reason[:100] or "agent_hangup"
        self._send(message)

    def _publish(self, **payload: Message) -> None:
        self._events.emit(self.tenant, self.start.call_id, **payload)

    def _publish_turn(
        self,
        speaker: int,
        text: str,
        confidence: float,
        *,
        interrupted: bool = False,
        turn_index: int | None = None,
    ) -> None:
        turn = events_pb2.TranscriptTurnEvent(
            speaker=speaker,  # type: ignore[arg-type]
            text=text,
            turn_index=self.turn_index if turn_index is None else turn_index,
            confidence=confidence,
            interrupted=interrupted,
        )
        turn.timestamp.GetCurrentTime()
        self._publish(transcript_turn=turn)

    def _publish_tool_call(self, use: ToolUse, status: str, output: dict[str, Any], latency_s: float) -> None:
        called = events_pb2.ToolCalled(tool_name=use.name, status=status)
        called.input.update(dict(use.input))
        called.output.update(output)
        called.latency.FromNanoseconds(int(latency_s * 1e9))
        self._publish(tool_called=called)

    def _bill_minutes(self) -> None:
        """One usage.minute per started minute of the call (the first at call start)."""
        started = int((time.monotonic() - self._started_at) // 60) + 1
        while self._minutes_billed < started:
            self._minutes_billed += 1
            self._publish(
                usage_minute=events_pb2.UsageMinute(
                    minute_count=self._minutes_billed,
                    direction=self.start.direction,
                    agent_id=self.start.agent_id,
                )
            )

    # --- idle and limits ----------------------------------------------------------------------------

    async def _watch_idle(self) -> None:
        """Prompts a silent caller, says goodbye after too many prompts or at the maximum duration.
        Never returns before the call ends: the session ends when any of its tasks finishes."""
        tt = self.profile.turn_taking
        while not self._ended.is_set():
            await asyncio.sleep(0.25)
            self._bill_minutes()
            now = time.monotonic()
            if now - self._started_at > tt.max_call_s and self._reply is None:
                self._start_reply(scripted=MAX_DURATION_GOODBYE, end="max_duration")
                break
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
