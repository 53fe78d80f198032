"""Speech engines behind one interface; the Triton model and the in-process benchmark both use them."""

from tts_triton.engines.base import (
    EngineRequest,
    EngineUnavailableError,
    SpeechEngine,
    SynthesisError,
)
from tts_triton.engines.factory import ENGINE_NAMES, create_engine

__all__ = [
    "ENGINE_NAMES",
    "EngineRequest",
    "EngineUnavailableError",
    "SpeechEngine",
    "SynthesisError",
    "create_engine",
]
