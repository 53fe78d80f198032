"""The session's one way to the caller side (the bridge or a softphone): agent audio frames in the
negotiated format, state changes, transcripts, latency, transfers and hang-ups. Every message passes
the call's bookkeeping first, so a transfer or a hang-up is also an event and sets why the call ended.
"""

from __future__ import annotations

from collections.abc import Callable

from services.agent.metrics import AgentMetrics
from services.agent.pipeline.bookkeeping import CallBookkeeping, duration
from services.agent.pipeline.outbound import OutboundAudio
from services.agent.ports import Transcription
from voice.v1 import agent_session_pb2 as pb
from voice.v1 import media_pb2


class CallerLink:
    def __init__(
        self,
        send: Callable[[pb.ConverseResponse], None],
        books: CallBookkeeping,
        outbound: OutboundAudio,
        metrics: AgentMetrics,
    ) -> None:
        self._send = send
        self._books = books
        self.outbound = outbound
        self._metrics = metrics
        self.state: int = pb.AGENT_STATE_UNSPECIFIED
        self._underruns_reported = 0

    def emit(self, message: pb.ConverseResponse) -> None:
        self._books.note_sent(message)
        self._send(message)

    def set_state(self, state: int) -> None:
        if state != self.state:
            self.state = state
            self.emit(pb.ConverseResponse(state=pb.AgentStateChange(state=state)))  # type: ignore[arg-type]

    def audio(self, pcm: bytes, sequence_number: int, timestamp: int) -> None:
        self.emit(
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

    def count_underruns(self, underruns: int) -> None:
        if underruns > self._underruns_reported:
            self._metrics.underruns.labels(self._books.tenant).inc(underruns - self._underruns_reported)
            self._underruns_reported = underruns

    def caller_transcript(self, result: Transcription, text: str, turn_index: int) -> None:
        transcript = pb.Transcript(
            speaker=pb.SPEAKER_CALLER,
            text=text,
            is_final=result.is_final,
            confidence=result.confidence,
            turn_index=turn_index,
        )
        if result.is_final:
            transcript.start_offset.CopyFrom(duration(result.start_s))
            transcript.end_offset.CopyFrom(duration(result.end_s))
        self.emit(pb.ConverseResponse(transcript=transcript))

    def agent_transcript(self, text: str, turn_index: int, *, interrupted: bool = False) -> None:
        """What the agent said (or, interrupted, what the caller heard of it) as a final transcript."""
        self._books.publish_turn(pb.SPEAKER_AGENT, text, 1.0, turn_index, interrupted=interrupted)
        self.emit(
            pb.ConverseResponse(
                transcript=pb.Transcript(
                    speaker=pb.SPEAKER_AGENT,
                    text=text,
                    is_final=True,
                    confidence=1.0,
                    turn_index=turn_index,
                    interrupted=interrupted,
                )
            )
        )
