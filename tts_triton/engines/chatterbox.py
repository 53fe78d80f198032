"""Chatterbox (Resemble AI) on the GPU: Turbo (350M, renders paralinguistic tags, ignores exaggeration and
cfg_weight) and the original 0.5B model (honours exaggeration / cfg_weight, no tags).

`chatterbox-tts` pins torch 2.6 and numpy<2, so it lives in the optional `chatterbox` extra of the GPU
image and is imported lazily here. Weights come from a local directory (`weights_path`); nothing is ever
downloaded at run time. On CUDA the model runs under float16 autocast.

Streaming: the chatterbox-streaming fork's `generate_stream` is used when present (first audio after one
token chunk); the upstream package only has `generate`, so text is synthesised sentence by sentence and
each sentence's audio is sent as soon as it exists ("as early as the engine allows").
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from tts_triton.engines.base import (
    OUTPUT_SAMPLE_RATE,
    EngineRequest,
    EngineUnavailableError,
    SynthesisError,
)
from tts_triton.tags import TURBO_TAGS
from tts_triton.voices import VoiceRecord

log = logging.getLogger(__name__)

Variant = Literal["turbo", "original"]
_SENTENCE_RE = re.compile(r"(?<=[.!?])\s+")
# Audio is handed on in pieces of this length so a cancel is noticed within one piece.
_PIECE_SAMPLES = OUTPUT_SAMPLE_RATE // 25


def split_sentences(text: str) -> list[str]:
    return [s for s in (p.strip() for p in _SENTENCE_RE.split(text)) if s]


class ChatterboxEngine:
    def __init__(
        self,
        variant: Variant,
        weights_path: str,
        *,
        device: Literal["cuda", "cpu"] = "cuda",
        precision: Literal["float16", "float32"] = "float16",
    ) -> None:
        self.variant = variant
        self.name = "chatterbox-turbo" if variant == "turbo" else "chatterbox"
        self.honours_expressiveness = variant == "original"
        self.supported_tags: frozenset[str] = TURBO_TAGS if variant == "turbo" else frozenset()
        weights = Path(weights_path) if weights_path else None
        if weights is None or not weights.is_dir():
            raise EngineUnavailableError(
                f"{self.name}: no weights directory configured or found ({weights_path or 'unset'}); "
                "set CHATTERBOX_SERVICE__WEIGHTS_PATH (Turbo) or CHATTERBOX_SERVICE__ORIGINAL_WEIGHTS_PATH"
            )
        try:
            import torch  # noqa: PLC0415 - optional GPU dependency
        except ImportError:
            raise EngineUnavailableError(
                f"{self.name}: torch / chatterbox-tts not installed (pip install '.[chatterbox]')"
            ) from None
        if device == "cuda" and not torch.cuda.is_available():
            raise EngineUnavailableError(f"{self.name}: CUDA requested but no GPU is visible")
        try:
            if variant == "turbo":
                from chatterbox.tts_turbo import ChatterboxTurboTTS as model_cls  # noqa: PLC0415
            else:
                from chatterbox.tts import ChatterboxTTS as model_cls  # noqa: PLC0415
        except ImportError as exc:
            raise EngineUnavailableError(f"{self.name}: chatterbox-tts not importable ({exc})") from None
        self._torch: Any = torch
        self._device = device
        self._dtype = torch.float16 if precision == "float16" and device == "cuda" else torch.float32
        self._weights = weights
        log.info("loading %s from %s on %s (%s)", self.name, weights, device, precision)
        self._model: Any = model_cls.from_local(str(weights), device)
        if int(self._model.sr) != OUTPUT_SAMPLE_RATE:
            raise EngineUnavailableError(f"{self.name} produces {self._model.sr} Hz, expected 24000")
        self._default_conds = self._model.conds
        # `model.conds` is the model's current speaker; one synthesis at a time per instance.
        self._lock = threading.Lock()

    def _autocast(self) -> contextlib.AbstractContextManager[object]:
        if self._device == "cuda" and self._dtype == self._torch.float16:
            return self._torch.autocast(device_type="cuda", dtype=self._torch.float16)  # type: ignore[no-any-return]
        return contextlib.nullcontext()

    def prepare_voice(self, voice: VoiceRecord) -> object:
        """Speaker conditionals: from the voice's reference WAV, a clip shipped with the weights
        (`<weights>/voices/<id>.wav`) for built-in voices, or the model's own default voice."""
        reference = voice.reference_path
        if reference is None:
            shipped = self._weights / "voices" / f"{voice.id}.wav"
            reference = str(shipped) if shipped.is_file() else None
        if reference is None:
            if self._default_conds is None:
                raise SynthesisError(f"{self.name}: weights have no built-in voice (conds.pt)")
            return self._default_conds
        with self._lock, self._torch.inference_mode(), self._autocast():
            self._model.prepare_conditionals(reference, exaggeration=voice.exaggeration)
            conds = self._model.conds
            self._model.conds = self._default_conds
        return conds

    def _generate_kwargs(self, request: EngineRequest) -> dict[str, Any]:
        if self.variant == "turbo":
            return {}  # Turbo ignores exaggeration / cfg_weight (reported in SynthesisInfo)
        return {"exaggeration": request.exaggeration, "cfg_weight": request.cfg_weight}

    def _to_pcm(self, wav: Any) -> npt.NDArray[np.int16]:
        samples = wav.detach().float().reshape(-1).clamp(-1.0, 1.0).cpu().numpy()
        return np.asarray(samples * 32767.0).astype(np.int16)

    def stream(
        self, request: EngineRequest, prepared: object, should_stop: Callable[[], bool]
    ) -> Iterator[npt.NDArray[np.int16]]:
        text, _dropped = request.text.with_tags(self.supported_tags)
        kwargs = self._generate_kwargs(request)
        with self._lock:
            self._model.conds = prepared
            if request.seed is not None:
                self._torch.manual_seed(request.seed)
            try:
                if hasattr(self._model, "generate_stream"):
                    yield from self._stream_fork(text, kwargs, should_stop)
                else:
                    yield from self._stream_sentences(text, kwargs, should_stop)
            except (RuntimeError, ValueError) as exc:
                raise SynthesisError(f"{self.name} failed: {exc}") from exc
            finally:
                self._model.conds = self._default_conds

    def _stream_fork(
        self, text: str, kwargs: dict[str, Any], should_stop: Callable[[], bool]
    ) -> Iterator[npt.NDArray[np.int16]]:
        with self._torch.inference_mode(), self._autocast():
            for chunk, _metrics in self._model.generate_stream(text, **kwargs):
                if should_stop():
                    return
                yield self._to_pcm(chunk)

    def _stream_sentences(
        self, text: str, kwargs: dict[str, Any], should_stop: Callable[[], bool]
    ) -> Iterator[npt.NDArray[np.int16]]:
        for sentence in split_sentences(text):
            if should_stop():
                return
            with self._torch.inference_mode(), self._autocast():
                wav = self._model.generate(sentence, **kwargs)
            pcm = self._to_pcm(wav)
            for start in range(0, pcm.size, _PIECE_SAMPLES):
                if should_stop():
                    return
                yield pcm[start : start + _PIECE_SAMPLES]

    def close(self) -> None:
        self._model = None
        if self._device == "cuda":
            self._torch.cuda.empty_cache()
