"""When has the caller finished their turn? Two policies behind one interface.

- `FixedGrace` (the fallback): after the VAD's silence, wait a fixed grace period, longer when the words
  so far end like an unfinished number or spelling.
- `ModelTurnEnd`: after a short silence (200 ms) an audio end-of-turn model (Smart Turn) and the STT's
  final decide together. A turn that the model hears as complete and whose words do not end like an
  unfinished number, spelling or list is answered at once; otherwise the engine keeps listening for up
  to `unfinished_grace_ms`, so a caller reading digits with pauses of up to ~1.2 s is not cut off.
  If the model fails, the decision falls back to the fixed grace.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Protocol

from services.agent.pipeline.endpointing import sounds_unfinished
from services.agent.ports import EndOfTurnModel
from services.agent.profile import TurnTaking

log = logging.getLogger(__name__)

MODEL_SILENCE_MS = 200
COMPLETE_THRESHOLD = 0.5


@dataclass(frozen=True)
class TurnEndDecision:
    wait_s: float  # keep listening this long for more speech before answering
    complete_probability: float | None = None  # the model's, when it was asked
    model_ms: float | None = None


class TurnEndPolicy(Protocol):
    silence_ms: int

    async def decide(self, turn_audio: bytes, text: str) -> TurnEndDecision: ...


class FixedGrace:
    def __init__(self, turn_taking: TurnTaking) -> None:
        self._tt = turn_taking
        self.silence_ms = turn_taking.min_silence_ms

    async def decide(self, turn_audio: bytes, text: str) -> TurnEndDecision:
        tt = self._tt
        grace_ms = tt.unfinished_grace_ms if sounds_unfinished(text) else tt.grace_ms
        return TurnEndDecision(grace_ms / 1000)


class ModelTurnEnd:
    def __init__(self, model: EndOfTurnModel, turn_taking: TurnTaking) -> None:
        self._model = model
        self._tt = turn_taking
        self._fallback = FixedGrace(turn_taking)
        self.silence_ms = min(turn_taking.min_silence_ms, MODEL_SILENCE_MS)

    async def decide(self, turn_audio: bytes, text: str) -> TurnEndDecision:
        started = time.perf_counter()
        try:
            probability = await self._model.complete_probability(turn_audio)
        except Exception:
            log.exception("end-of-turn model failed: fixed grace for this turn")
            return await self._fallback.decide(turn_audio, text)
        model_ms = (time.perf_counter() - started) * 1000
        complete = probability >= COMPLETE_THRESHOLD and not sounds_unfinished(text)
        wait_s = 0.0 if complete else self._tt.unfinished_grace_ms / 1000
        return TurnEndDecision(wait_s, probability, model_ms)


def turn_end_policy(model: EndOfTurnModel | None, turn_taking: TurnTaking) -> TurnEndPolicy:
    return ModelTurnEnd(model, turn_taking) if model is not None else FixedGrace(turn_taking)
