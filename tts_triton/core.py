"""What the Triton model does, without Triton: validate a request, pick engine and voice, stream the
engine's audio re-cut into chunks of `chunk_duration_ms`, the last one flagged final.

Kept free of `triton_python_backend_utils` so the benchmark can run the identical path in-process.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

from services.shared.settings import ChatterboxServiceSettings
from tts_triton import tags
from tts_triton.engines import (
    ENGINE_NAMES,
    EngineRequest,
    EngineUnavailableError,
    SpeechEngine,
    create_engine,
)
from tts_triton.engines.base import OUTPUT_SAMPLE_RATE
from tts_triton.engines.factory import resolve_engine_name
from tts_triton.voices import PreparedVoiceCache, VoiceError, VoiceRegistry, check_expressiveness

log = logging.getLogger(__name__)

ErrorKind = Literal["invalid_argument", "not_found", "unavailable"]
CHUNK_MS_RANGE = (20, 1000)


class RequestError(ValueError):
    """A request the server refuses; `kind` maps to Triton / gRPC / HTTP status codes."""

    def __init__(self, kind: ErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind: ErrorKind = kind


@dataclass(frozen=True)
class SynthesisParams:
    text: str
    voice_id: str = ""
    tenant_id: str = ""
    exaggeration: float | None = None
    cfg_weight: float | None = None
    seed: int | None = None
    chunk_duration_ms: int | None = None
    # Empty: the model's configured engine.
    engine: str = ""


@dataclass(frozen=True)
class SynthesisInfo:
    engine: str
    sample_rate: int
    honours_expressiveness: bool
    dropped_tags: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Chunk:
    pcm: npt.NDArray[np.int16]
    final: bool


@dataclass(frozen=True)
class PreparedSynthesis:
    engine: SpeechEngine
    request: EngineRequest
    voice_state: object
    chunk_samples: int
    info: SynthesisInfo


class TtsCore:
    """One per Triton model instance (one process)."""

    def __init__(self, settings: ChatterboxServiceSettings, *, default_voice_id: str = "default_female_1"):
        self.settings = settings
        self.default_engine = resolve_engine_name(settings)
        self.default_voice_id = default_voice_id
        self.voices = VoiceRegistry(
            settings.storage_path,
            default_exaggeration=settings.default_exaggeration,
            default_cfg_weight=settings.default_cfg_weight,
        )
        self.cache = PreparedVoiceCache(settings.cache_size)
        self._engines: dict[str, SpeechEngine] = {}
        self._unavailable: dict[str, str] = {}
        # Load the default engine now: a node that cannot run its configured engine must not turn ready.
        self.engine(self.default_engine)

    def engine(self, name: str) -> SpeechEngine:
        if name not in ENGINE_NAMES:
            raise RequestError("invalid_argument", f"unknown engine {name!r}; expected one of {ENGINE_NAMES}")
        if name in self._engines:
            return self._engines[name]
        if name in self._unavailable:
            raise RequestError("unavailable", self._unavailable[name])
        try:
            engine = create_engine(name, self.settings)
        except EngineUnavailableError as exc:
            if name == self.default_engine:
                raise
            # Remembered so every request for it does not retry a multi-second load.
            self._unavailable[name] = str(exc)
            raise RequestError("unavailable", str(exc)) from None
        self._engines[name] = engine
        return engine

    def prepare(self, params: SynthesisParams) -> PreparedSynthesis:
        """Validates everything up front, so bad input fails before any audio is sent."""
        text = params.text
        if len(text) > self.settings.max_text_chars:
            raise RequestError(
                "invalid_argument",
                f"text is {len(text)} characters; the limit is {self.settings.max_text_chars}",
            )
        parsed = tags.parse(text)
        if not parsed.plain() and not parsed.tags:
            raise RequestError("invalid_argument", "text is empty")
        chunk_ms = params.chunk_duration_ms or self.settings.chunk_duration_ms
        lo, hi = CHUNK_MS_RANGE
        if not lo <= chunk_ms <= hi:
            raise RequestError("invalid_argument", f"chunk_duration_ms {chunk_ms} is outside {lo}..{hi}")
        try:
            voice = self.voices.get(params.voice_id or self.default_voice_id, params.tenant_id)
            exaggeration = voice.exaggeration if params.exaggeration is None else params.exaggeration
            cfg_weight = voice.cfg_weight if params.cfg_weight is None else params.cfg_weight
            check_expressiveness(exaggeration, cfg_weight)
        except VoiceError as exc:
            raise RequestError(
                "not_found" if exc.kind == "not_found" else "invalid_argument", str(exc)
            ) from None
        engine = self.engine(params.engine or self.default_engine)
        if not parsed.plain() and not (set(parsed.tags) & engine.supported_tags):
            raise RequestError("invalid_argument", f"text has nothing {engine.name} can speak")
        _, dropped = parsed.with_tags(engine.supported_tags)
        voice_state = self.cache.get(engine.name, voice, engine.prepare_voice)
        return PreparedSynthesis(
            engine=engine,
            request=EngineRequest(parsed, voice, exaggeration, cfg_weight, params.seed),
            voice_state=voice_state,
            chunk_samples=OUTPUT_SAMPLE_RATE * chunk_ms // 1000,
            info=SynthesisInfo(engine.name, OUTPUT_SAMPLE_RATE, engine.honours_expressiveness, dropped),
        )

    def stream(self, prepared: PreparedSynthesis, should_stop: Callable[[], bool]) -> Iterator[Chunk]:
        """Chunks of exactly `chunk_samples` (the last may be shorter); the last has `final` set.

        One chunk is held back until the next exists, so the final flag rides on real audio. When
        `should_stop` turns true the generator ends without a final chunk.
        """
        size = prepared.chunk_samples
        buffer = np.zeros(0, dtype=np.int16)
        pending: npt.NDArray[np.int16] | None = None
        for piece in prepared.engine.stream(prepared.request, prepared.voice_state, should_stop):
            buffer = np.concatenate([buffer, piece]) if buffer.size else piece
            while buffer.size >= size:
                if pending is not None:
                    yield Chunk(pending, final=False)
                pending, buffer = buffer[:size], buffer[size:]
            if should_stop():
                return
        if should_stop():
            return
        if pending is not None and buffer.size:
            yield Chunk(pending, final=False)
            pending = buffer
        elif pending is None:
            pending = buffer
        yield Chunk(np.ascontiguousarray(pending, dtype=np.int16), final=True)

    def synthesize(self, params: SynthesisParams, should_stop: Callable[[], bool]) -> Iterator[Chunk]:
        return self.stream(self.prepare(params), should_stop)

    def close(self) -> None:
        for engine in self._engines.values():
            engine.close()
        self._engines.clear()
