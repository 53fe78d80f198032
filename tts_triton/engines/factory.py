"""Picks and builds the engine named by configuration."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

from services.shared.settings import ChatterboxServiceSettings
from tts_triton.engines.base import EngineUnavailableError, SpeechEngine

log = logging.getLogger(__name__)

ENGINE_NAMES = ("chatterbox-turbo", "chatterbox", "espeak-ng")


def resolve_engine_name(settings: ChatterboxServiceSettings) -> str:
    """`auto` means Chatterbox-Turbo where its weights, torch and a GPU exist, else espeak-ng."""
    if settings.model_name != "auto":
        return settings.model_name
    weights = settings.weights_path
    if not weights or not Path(weights).is_dir() or importlib.util.find_spec("chatterbox") is None:
        return "espeak-ng"
    import torch  # noqa: PLC0415 - only on the GPU image, where the chatterbox extra is installed

    return "chatterbox-turbo" if torch.cuda.is_available() else "espeak-ng"


def create_engine(name: str, settings: ChatterboxServiceSettings) -> SpeechEngine:
    """Builds engine `name`; raises EngineUnavailableError (with the reason) when it cannot run here."""
    if name == "espeak-ng":
        from tts_triton.engines.espeak import EspeakEngine  # noqa: PLC0415

        return EspeakEngine()
    if name in ("chatterbox-turbo", "chatterbox"):
        from tts_triton.engines.chatterbox import ChatterboxEngine  # noqa: PLC0415

        turbo = name == "chatterbox-turbo"
        return ChatterboxEngine(
            "turbo" if turbo else "original",
            settings.weights_path if turbo else settings.original_weights_path,
            device=settings.device,
            precision=settings.precision,
        )
    raise EngineUnavailableError(f"unknown engine {name!r}; expected one of {', '.join(ENGINE_NAMES)}")
