"""Provider adapters with fixed, known latency, so the benchmark isolates the platform's own cost.

They implement the same ports as the real providers; only their timing and output are synthetic:
STT answers `stt_ms` after the caller stops, the LLM's first token comes `llm_ms` after the request,
TTS's first chunk `tts_ms` after the request (then faster than real time, like a GPU TTS).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass

import numpy as np

from services.agent.ports import (
    Completed,
    LlmEvent,
    LlmRequest,
    SttContext,
    TextDelta,
    Transcription,
    VoiceSelection,
)

ANSWER = "We are open Monday to Friday from eight to six. On Saturday we open from nine until one."
CALLER_TEXT = "what are your opening hours"


@dataclass(frozen=True)
class Latencies:
    stt_ms: float = 100.0
    llm_ms: float = 250.0
    tts_ms: float = 120.0


class FixedSttStream:
    def __init__(self, latency_s: float) -> None:
        self._latency_s = latency_s
        self._results: asyncio.Queue[Transcription | None] = asyncio.Queue()
        self._heard = 0

    async def push(self, pcm16: bytes) -> None:
        self._heard += len(pcm16)

    async def finalize(self) -> None:
        if self._heard:
            self._heard = 0
            await asyncio.sleep(self._latency_s)
            await self._results.put(Transcription(CALLER_TEXT, True, 0.95))

    async def results(self) -> AsyncIterator[Transcription]:
        while (item := await self._results.get()) is not None:
            yield item

    async def aclose(self) -> None:
        await self._results.put(None)


class FixedStt:
    name = "fixed-stt"
    sample_rate = 16000

    def __init__(self, latency_ms: float) -> None:
        self._latency_s = latency_ms / 1000

    async def open(self, context: SttContext) -> FixedSttStream:
        return FixedSttStream(self._latency_s)


class FixedLlm:
    name = "fixed-llm"

    def __init__(self, latency_ms: float) -> None:
        self._latency_s = latency_ms / 1000

    async def stream(self, request: LlmRequest) -> AsyncIterator[LlmEvent]:
        await asyncio.sleep(self._latency_s)
        for i, word in enumerate(ANSWER.split(" ")):
            yield TextDelta(word if i == 0 else " " + word)
        yield Completed("end_turn")


class FixedTts:
    """60 ms of a soft tone per word, delivered in 100 ms chunks right after the fixed latency."""

    name = "fixed-tts"
    sample_rate = 24000

    def __init__(self, latency_ms: float) -> None:
        self._latency_s = latency_ms / 1000
        t = np.arange(self.sample_rate // 10) / self.sample_rate
        self._chunk = (np.sin(2 * math.pi * 220 * t) * 3000).astype("<i2").tobytes()

    async def synthesize(self, text: str, voice: VoiceSelection) -> AsyncIterator[bytes]:
        await asyncio.sleep(self._latency_s)
        chunks = max(1, round(len(text.split()) * 0.6))
        for _ in range(chunks):
            yield self._chunk
            await asyncio.sleep(0)


class ToneCaller:
    """The caller's "voice" for load generation: a modulated tone the energy VAD hears as speech."""

    name = "tone-caller"
    sample_rate = 24000

    async def synthesize(self, text: str, voice: VoiceSelection) -> AsyncIterator[bytes]:
        seconds = 0.3 + 0.08 * len(text.split())
        t = np.arange(int(self.sample_rate * seconds)) / self.sample_rate
        wave = np.sin(2 * math.pi * 180 * t) * (0.6 + 0.4 * np.sin(2 * math.pi * 3 * t)) * 8000
        yield wave.astype("<i2").tobytes()
