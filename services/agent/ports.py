"""The narrow interfaces the conversation engine is written against (DESIGN.md, "Ports and adapters").

Every provider (Deepgram, PocketSphinx, Claude, the offline policy, Chatterbox on Triton, espeak-ng,
Silero, ...) is an adapter behind one of these; fallback chains and circuit breakers are adapters that
wrap adapters, so the pipeline never knows which provider answered.
Audio crossing a port is PCM16 little-endian mono bytes at the rate the port states.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

# --- Voice activity ---------------------------------------------------------------------------------


class VadStream(Protocol):
    """Per-call VAD state. Feed 16 kHz PCM16; get one speech probability per analysed window."""

    window_ms: float

    async def probabilities(self, pcm16: bytes) -> list[float]:
        """Speech probabilities (0..1) of the complete windows now available, oldest first."""
        ...


class VoiceActivity(Protocol):
    name: str

    def new_stream(self) -> VadStream: ...


# --- End of turn ------------------------------------------------------------------------------------


class EndOfTurnModel(Protocol):
    """Judges from the audio whether the caller has finished their turn or only paused in it."""

    name: str

    async def complete_probability(self, pcm16: bytes) -> float:
        """Probability (0..1) that the turn in `pcm16` (16 kHz, the turn so far, newest last) is over."""
        ...


# --- Speech to text ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SttContext:
    """What a recogniser may be biased toward for one call (names, FAQ and intent phrases)."""

    language: str = "en-US"
    phrases: Sequence[str] = ()
    keywords: Sequence[str] = ()


@dataclass(frozen=True)
class Transcription:
    text: str
    is_final: bool
    confidence: float
    # Seconds since the start of the stream (the audio clock, not wall time).
    start_s: float = 0.0
    end_s: float = 0.0


class SttStream(Protocol):
    """One call's recognition stream. `push` 16 kHz PCM16; results arrive on `results()`."""

    async def push(self, pcm16: bytes) -> None: ...

    async def finalize(self) -> None:
        """The caller stopped speaking: emit the final transcript of the current utterance now."""
        ...

    def results(self) -> AsyncIterator[Transcription]: ...

    async def aclose(self) -> None: ...


class SpeechToText(Protocol):
    name: str
    sample_rate: int

    async def open(self, context: SttContext) -> SttStream: ...


# --- Language model ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ToolSpec:
    name: str
    description: str
    input_schema: Mapping[str, Any]


@dataclass(frozen=True)
class ToolUse:
    id: str
    name: str
    input: Mapping[str, Any]


@dataclass(frozen=True)
class ChatMessage:
    role: Literal["user", "assistant"]
    text: str = ""
    tool_uses: Sequence[ToolUse] = ()
    # For role "user": results of the assistant's previous tool uses, by tool-use id.
    tool_results: Mapping[str, str] = field(default_factory=dict)
    # For role "user": how sure the recogniser was of `text` (lowest of the turn's finals; 1.0 when typed
    # or keyed), so a model can ask again instead of acting on a mishearing.
    confidence: float = 1.0


@dataclass(frozen=True)
class LlmRequest:
    system: str
    messages: Sequence[ChatMessage]
    tools: Sequence[ToolSpec] = ()
    max_tokens: int = 1024
    temperature: float = 0.7
    # Text the reply must continue from (a fallback tier finishing a sentence a failed tier started);
    # only for models whose `supports_prefill` is true.
    prefill: str = ""


@dataclass(frozen=True)
class TextDelta:
    text: str


@dataclass(frozen=True)
class ToolCallRequested:
    tool_use: ToolUse


@dataclass(frozen=True)
class Completed:
    stop_reason: str  # "end_turn", "tool_use", "max_tokens"


LlmEvent = TextDelta | ToolCallRequested | Completed


class LanguageModel(Protocol):
    name: str

    def stream(self, request: LlmRequest) -> AsyncIterator[LlmEvent]:
        """Streams the reply; closing the iterator (barge-in) stops generation."""
        ...


# --- Text to speech ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class VoiceSelection:
    voice_id: str
    exaggeration: float | None = None
    cfg_weight: float | None = None


class TextToSpeech(Protocol):
    name: str
    sample_rate: int

    def synthesize(self, text: str, voice: VoiceSelection) -> AsyncIterator[bytes]:
        """PCM16 mono chunks at `sample_rate`, first chunk as early as possible. Closing the iterator
        cancels generation server-side."""
        ...


# --- Tools and knowledge ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ToolOutcome:
    status: Literal["ok", "error", "timeout", "invalid_input"]
    output: Mapping[str, Any]
    latency_s: float


class ToolRunner(Protocol):
    async def run(self, tool_use: ToolUse) -> ToolOutcome: ...


@dataclass(frozen=True)
class Snippet:
    text: str
    score: float


class KnowledgeBase(Protocol):
    async def search(self, query: str, limit: int = 3) -> list[Snippet]: ...


# --- Failures the degradation chains understand -------------------------------------------------------


class ProviderUnavailable(Exception):
    """A provider cannot serve this request now (outage, rate limit, stall, dropped socket, open circuit).

    Adapters raise it instead of their SDK's exceptions so that breakers and fallback chains
    (services/agent/resilience/) can move on to the next tier without knowing any SDK.
    """

    def __init__(self, provider: str, reason: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(f"{provider}: {reason}")
        self.provider = provider
        self.reason = reason
        self.retry_after_s = retry_after_s


class CannotContinue(Exception):
    """Every tier of a degradation chain failed: the caller has to be handed to a human (spec 12.3)."""

    def __init__(self, port: Literal["stt", "llm", "tts"], reason: str) -> None:
        super().__init__(f"{port} exhausted: {reason}")
        self.port = port
        self.reason = reason
