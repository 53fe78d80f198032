"""TTS degradation (spec 12.3): Chatterbox on Triton -> pre-recorded clips -> transfer to a human.

The clips are the agent's fixed lines (greeting sentences, the tool filler, the apology, "please hold")
as the primary voice last spoke them: recorded the first time they are synthesized, so they sound the
same as the rest of the call. A sentence with no clip, once every synthesizer is down, means the agent
cannot speak: CannotContinue, and the session hands the call over.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterable, Sequence

from services.agent.ports import CannotContinue, ProviderUnavailable, TextToSpeech, VoiceSelection
from services.agent.resilience.breaker import CircuitBreaker
from services.agent.resilience.telemetry import Telemetry

log = logging.getLogger(__name__)

CLIP_CHUNK_MS = 100


def clip_key(text: str, voice_id: str) -> tuple[str, str]:
    return " ".join(re.findall(r"[a-z0-9']+", text.lower())), voice_id


class ClipLibrary:
    """Pre-recorded clips, per (sentence, voice); the TextToSpeech port for the lines it holds."""

    name = "clips"

    def __init__(self, sample_rate: int, max_clips: int = 256) -> None:
        self.sample_rate = sample_rate
        self._max_clips = max_clips
        self._clips: OrderedDict[tuple[str, str], bytes] = OrderedDict()
        self._wanted: set[str] = set()

    def want(self, sentences: Iterable[str]) -> None:
        """Sentences worth recording when the primary synthesizer speaks them."""
        self._wanted.update(clip_key(s, "")[0] for s in sentences)

    def wants(self, text: str) -> bool:
        return clip_key(text, "")[0] in self._wanted

    def add(self, text: str, voice_id: str, pcm: bytes) -> None:
        key = clip_key(text, voice_id)
        self._clips[key] = pcm
        self._clips.move_to_end(key)
        while len(self._clips) > self._max_clips:
            self._clips.popitem(last=False)

    def has(self, text: str, voice_id: str) -> bool:
        return clip_key(text, voice_id) in self._clips

    async def synthesize(self, text: str, voice: VoiceSelection) -> AsyncIterator[bytes]:
        pcm = self._clips.get(clip_key(text, voice.voice_id))
        if pcm is None:
            raise ProviderUnavailable(self.name, "no clip for this sentence")
        step = self.sample_rate * CLIP_CHUNK_MS // 1000 * 2
        for start in range(0, len(pcm), step):
            yield pcm[start : start + step]


class GuardedTextToSpeech:
    """One synthesizer behind its breaker and a first-audio watchdog; its own errors (the classes in
    `unavailable`) become ProviderUnavailable."""

    def __init__(
        self,
        inner: TextToSpeech,
        breaker: CircuitBreaker,
        telemetry: Telemetry,
        *,
        unavailable: tuple[type[BaseException], ...],
        first_audio_s: float,
        next_audio_s: float,
    ) -> None:
        self.inner = inner
        self.name = inner.name
        self.sample_rate = inner.sample_rate
        self._breaker = breaker
        self._telemetry = telemetry
        self._unavailable = unavailable
        self._first_audio_s = first_audio_s
        self._next_audio_s = next_audio_s

    async def synthesize(self, text: str, voice: VoiceSelection) -> AsyncIterator[bytes]:
        if not self._breaker.allow():
            raise ProviderUnavailable(self.name, "circuit open")
        chunks = self.inner.synthesize(text, voice)
        try:
            timeout = self._first_audio_s
            while True:
                try:
                    pcm = await asyncio.wait_for(anext(chunks), timeout)
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    self._fail("stall", f"no audio within {timeout:.2f} s")
                    raise ProviderUnavailable(self.name, f"stalled for {timeout:.2f} s") from None
                except ProviderUnavailable as exc:
                    self._fail("unavailable", exc.reason)
                    raise
                except self._unavailable as exc:
                    self._fail("unavailable", str(exc))
                    raise ProviderUnavailable(self.name, str(exc)) from None
                timeout = self._next_audio_s
                yield pcm
            self._breaker.record_success()
        finally:
            self._breaker.release()
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                await aclose()

    def _fail(self, kind: str, detail: str) -> None:
        self._breaker.record_failure()
        self._telemetry.error(self.name, kind, detail)


class FallbackTextToSpeech:
    def __init__(self, tiers: Sequence[TextToSpeech], clips: ClipLibrary, telemetry: Telemetry) -> None:
        if not tiers:
            raise ValueError("a fallback chain needs at least one tier")
        self.tiers = tuple(tiers)
        self.clips = clips
        self.name = self.tiers[0].name
        self.sample_rate = self.tiers[0].sample_rate
        self._telemetry = telemetry

    async def synthesize(self, text: str, voice: VoiceSelection) -> AsyncIterator[bytes]:
        record = self.clips.wants(text) and not self.clips.has(text, voice.voice_id)
        for tier in self.tiers:
            audio = bytearray()
            spoke = False
            chunks = tier.synthesize(text, voice)
            try:
                async for pcm in chunks:
                    spoke = True
                    if record:
                        audio += pcm
                    yield pcm
                if record:
                    self.clips.add(text, voice.voice_id, bytes(audio))
                return
            except ProviderUnavailable as exc:
                self._telemetry.error(tier.name, "failover", exc.reason)
                if spoke:
                    # Half a sentence was heard; starting it again elsewhere would stutter. The next
                    # sentence goes to the chain again.
                    log.warning("TTS failed mid-sentence", extra={"data": {"tts": tier.name, "text": text}})
                    return
            finally:
                aclose = getattr(chunks, "aclose", None)
                if aclose is not None:
                    await aclose()
        if self.clips.has(text, voice.voice_id):
            async for pcm in self.clips.synthesize(text, voice):
                yield pcm
            return
        self._telemetry.error("clips", "failover", "no clip for this sentence")
        raise CannotContinue("tts", "no synthesizer and no pre-recorded clip for this sentence")
