"""Call bookkeeping: the events a call publishes (agent joined, turns, tool calls, usage minutes, the
transfer request), why it ended, and per-turn latency (the TurnLatency message and the histograms).

Nothing here decides anything about the conversation; the session and the reply generator report
to it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message

from services.agent.events import CallEventSink, NullEventSink
from services.agent.metrics import AgentMetrics
from services.agent.ports import ToolUse
from voice.v1 import agent_session_pb2 as pb
from voice.v1 import events_pb2


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


def duration(seconds: float) -> Duration:
    d = Duration()
    d.FromNanoseconds(int(max(seconds, 0.0) * 1e9))
    return d


class CallBookkeeping:
    def __init__(
        self,
        start: pb.SessionStart,
        metrics: AgentMetrics,
        events: CallEventSink | None,
        *,
        llm_name: str,
        voice_id: str,
    ) -> None:
        self.start = start
        self.tenant = start.tenant_id
        self.metrics = metrics
        self._events = events or NullEventSink()
        self._llm_name = llm_name
        self._voice_id = voice_id
        # Why the call ended, for call.ended: the first of the agent's transfer or hang-up, or the caller's.
        self.end_reason = ""
        self.started_at = time.monotonic()
        self._minutes_billed = 0

    @property
    def duration_s(self) -> float:
        return time.monotonic() - self.started_at

    def note_sent(self, message: pb.ConverseResponse) -> None:
        """Transfers and hang-ups sent to the caller side are also events, and say why the call ends."""
        kind = message.WhichOneof("event")
        if kind == "transfer":
            t = message.transfer
            self.end_reason = self.end_reason or "transferred"
            self.publish(
                call_transfer_requested=events_pb2.CallTransferRequested(
                    type=t.type, target=t.target, context=t.context, reason=t.reason
                )
            )
        elif kind == "end_call":
            self.end_reason = self.end_reason or message.end_call.reason[:100] or "agent_hangup"

    def publish(self, **payload: Message) -> None:
        self._events.emit(self.tenant, self.start.call_id, **payload)

    def publish_turn(
        self, speaker: int, text: str, confidence: float, turn_index: int, *, interrupted: bool = False
    ) -> None:
        turn = events_pb2.TranscriptTurnEvent(
            speaker=speaker,  # type: ignore[arg-type]
            text=text,
            turn_index=turn_index,
            confidence=confidence,
            interrupted=interrupted,
        )
        turn.timestamp.GetCurrentTime()
        self.publish(transcript_turn=turn)

    def publish_tool_call(self, use: ToolUse, status: str, output: dict[str, Any], latency_s: float) -> None:
        called = events_pb2.ToolCalled(tool_name=use.name, status=status)
        called.input.update(dict(use.input))
        called.output.update(output)
        called.latency.FromNanoseconds(int(latency_s * 1e9))
        self.publish(tool_called=called)

    def bill_minutes(self) -> None:
        """One usage.minute per started minute of the call (the first at call start)."""
        started = int((time.monotonic() - self.started_at) // 60) + 1
        while self._minutes_billed < started:
            self._minutes_billed += 1
            self.publish(
                usage_minute=events_pb2.UsageMinute(
                    minute_count=self._minutes_billed,
                    direction=self.start.direction,
                    agent_id=self.start.agent_id,
                )
            )

    def turn_latency(self, m: TurnMarks) -> pb.TurnLatency | None:
        """The turn's TurnLatency (None until it has an end of speech and a first frame sent); observes
        the latency histograms."""
        if m.end_of_speech is None or m.first_frame_sent is None:
            return None
        base = m.end_of_speech

        def since(t: float | None) -> Duration:
            return duration((t - base) if t is not None else 0.0)

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
            provider_time=duration(stt + llm + tts),
            endpointing=duration(waits),
        )
        # The marks are monotonic; the wall-clock end of speech lets the caller side line them up.
        latency.end_of_speech_time.FromNanoseconds(int((time.time() - (time.monotonic() - base)) * 1e9))
        tenant, metrics = self.tenant, self.metrics
        metrics.stt_latency.labels(tenant).observe(stt)
        if m.llm_first_token and m.llm_request:
            metrics.llm_latency.labels(tenant, self._llm_name).observe(m.llm_first_token - m.llm_request)
        metrics.tts_latency.labels(tenant, self._voice_id).observe(tts)
        metrics.e2e_latency.labels(tenant).observe(e2e)
        metrics.overhead.labels(tenant).observe(max(e2e - stt - llm - tts - waits, 0.0))
        return latency
