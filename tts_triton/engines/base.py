"""The engine interface: text in, PCM16 mono 24 kHz out as an iterator of arbitrarily sized pieces.

Engines are synchronous: each runs in its own Triton model instance (a separate process) or, in the
in-process benchmark, on a worker thread. `should_stop` is polled between pieces so a cancelled request
(barge-in) stops generation within one piece.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from tts_triton.tags import ParsedText
from tts_triton.voices import VoiceRecord

OUTPUT_SAMPLE_RATE = 24000


class SynthesisError(RuntimeError):
    """The engine failed on a valid request (reported to the client as an internal error)."""


class EngineUnavailableError(RuntimeError):
    """The engine cannot run here (no GPU, no weights, package not installed); the message says which."""


@dataclass(frozen=True)
class EngineRequest:
    text: ParsedText
    voice: VoiceRecord
    exaggeration: float
    cfg_weight: float
    seed: int | None = None


class SpeechEngine(Protocol):
    # "chatterbox-turbo", "chatterbox", "espeak-ng"
    name: str
    # False when exaggeration / cfg_weight have no effect (reported in SynthesisInfo).
    honours_expressiveness: bool
    # Paralinguistic tags rendered as sounds; all others are dropped from the text.
    supported_tags: frozenset[str]

    def prepare_voice(self, voice: VoiceRecord) -> object:
        """Per-voice state worth caching (speaker embeddings for cloning); the registry's LRU keeps it."""
        ...

    def stream(
        self, request: EngineRequest, prepared: object, should_stop: Callable[[], bool]
    ) -> Iterator[npt.NDArray[np.int16]]:
        """Yields PCM16 mono at OUTPUT_SAMPLE_RATE, as early as the engine can."""
        ...

    def close(self) -> None: ...
