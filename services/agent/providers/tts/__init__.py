"""TextToSpeech adapters: Chatterbox / espeak-ng served by the Triton model `tts` (tts_triton/)."""

from services.agent.providers.tts.triton import (
    SynthesisInfo,
    TritonTextToSpeech,
    TtsChunk,
    TtsError,
    TtsRequestError,
    TtsUnavailableError,
)

__all__ = [
    "SynthesisInfo",
    "TritonTextToSpeech",
    "TtsChunk",
    "TtsError",
    "TtsRequestError",
    "TtsUnavailableError",
]
