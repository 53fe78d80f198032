"""Chatterbox-Turbo on a GPU: loads the model from local weights and streams real speech.

Runs on the GPU node (deploy/tts/README.md) with CHATTERBOX_SERVICE__WEIGHTS_PATH pointing at the Turbo
weights; skips with the reason everywhere else. Timings are printed, never asserted.
"""

from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path

import numpy as np
import pytest

from services.shared.settings import ChatterboxServiceSettings
from tts_triton.core import SynthesisParams, TtsCore

pytestmark = pytest.mark.gpu


def skip_reason() -> str | None:
    if importlib.util.find_spec("torch") is None or importlib.util.find_spec("chatterbox") is None:
        return (
            "the chatterbox extra (torch, chatterbox-tts) is not installed; it belongs on the GPU node only"
        )
    import torch  # noqa: PLC0415

    if not torch.cuda.is_available():
        return "no CUDA GPU visible"
    weights = os.environ.get("CHATTERBOX_SERVICE__WEIGHTS_PATH", "")
    if not weights or not (Path(weights) / "t3_turbo_v1.safetensors").is_file():
        return (
            "CHATTERBOX_SERVICE__WEIGHTS_PATH does not point at Chatterbox-Turbo weights (never downloaded)"
        )
    return None


@pytest.fixture(scope="module")
def turbo(tmp_path_factory: pytest.TempPathFactory) -> TtsCore:
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    settings = ChatterboxServiceSettings(
        model_name="chatterbox-turbo",
        device="cuda",
        precision="float16",
        weights_path=os.environ["CHATTERBOX_SERVICE__WEIGHTS_PATH"],
        storage_path=str(tmp_path_factory.mktemp("voices")),
    )
    return TtsCore(settings)


def test_turbo_streams_real_speech_with_tags(turbo: TtsCore) -> None:
    text = "Thanks for calling [chuckle]. I can help you with that. Let me check your account."
    prepared = turbo.prepare(SynthesisParams(text, seed=7))
    assert prepared.info.engine == "chatterbox-turbo"
    assert prepared.info.honours_expressiveness is False
    assert prepared.info.dropped_tags == []  # Turbo renders its tags
    start = time.perf_counter()
    first_s = 0.0
    chunks = []
    for chunk in turbo.stream(prepared, lambda: False):
        first_s = first_s or time.perf_counter() - start
        chunks.append(chunk.pcm)
    total_s = time.perf_counter() - start
    audio = np.concatenate(chunks)
    seconds = audio.size / 24000
    rtf = total_s / seconds
    print(f"\nchatterbox-turbo: TTFA {first_s * 1000:.0f} ms, {seconds:.2f} s of audio, RTF {rtf:.3f}")
    assert seconds > 1.5
    rms = float(np.sqrt(np.mean(audio.astype(np.float64) ** 2)))
    assert rms > 300  # speech, not silence


def test_turbo_stops_when_cancelled(turbo: TtsCore) -> None:
    seen = 0

    def should_stop() -> bool:
        return seen >= 2

    for _chunk in turbo.synthesize(SynthesisParams("One. Two. Three. Four. Five. Six. Seven."), should_stop):
        seen += 1
    assert seen == 2
