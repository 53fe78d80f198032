"""The TTS node's pieces without a server: tags, WAV validation, the voice registry and its LRU, the
espeak-ng engine and the chunker in-process."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

import audio_core
from services.shared.settings import ChatterboxServiceSettings
from tests.tts.conftest import reference_wav
from tts_triton import tags
from tts_triton.core import RequestError, SynthesisParams, TtsCore
from tts_triton.engines.chatterbox import split_sentences
from tts_triton.resample import StreamResampler
from tts_triton.voices import (
    PreparedVoiceCache,
    VoiceError,
    VoiceRecord,
    VoiceRegistry,
    validate_reference_wav,
)


def test_tags_parsed_once_and_dropped_cleanly() -> None:
    parsed = tags.parse("I'd be happy to help [chuckle]. [ Clear  Throat ] Let me check [foo].")
    assert parsed.tags == ["chuckle", "clear throat"]
    assert parsed.plain() == "I'd be happy to help . Let me check [foo]."
    kept, dropped = parsed.with_tags(tags.TURBO_TAGS)
    assert kept == "I'd be happy to help [chuckle] . [clear throat] Let me check [foo]."
    assert dropped == []
    assert parsed.with_tags(frozenset())[1] == ["chuckle", "clear throat"]


def test_reference_wav_validation() -> None:
    info = validate_reference_wav(reference_wav(6.0, 22050, 2))
    assert (info.sample_rate, info.channels) == (22050, 2)
    assert info.duration_seconds == pytest.approx(6.0)
    cases = {
        b"": "empty",
        b"RIFF\x00\x00\x00\x00WAVEjunk": "not a readable PCM WAV",
        reference_wav(4.0): "more than 5 s",
        reference_wav(6.0, 8000): "sample rate 8000 Hz",
        reference_wav(61.0): "limit is 60 s",
    }
    for data, message in cases.items():
        with pytest.raises(VoiceError, match=message) as err:
            validate_reference_wav(data)
        assert err.value.kind == "invalid_argument"
    # A header that promises more frames than the file holds is judged by what is there.
    truncated = reference_wav(6.0)[: 44 + 16000 * 2 * 3]
    with pytest.raises(VoiceError, match="more than 5 s"):
        validate_reference_wav(truncated)


def test_registry_round_trip_and_tenancy(tmp_path: Path) -> None:
    registry = VoiceRegistry(tmp_path)
    assert {v.id for v in registry.list()} >= {"default_female_1", "default_male_1"}
    voice = registry.register(name="Ann", reference_audio=reference_wav(), tenant_id="t1", exaggeration=0.7)
    assert voice.reference_duration_seconds == pytest.approx(6.0)
    assert registry.get(voice.id, "t1").exaggeration == 0.7
    with pytest.raises(VoiceError, match="unknown voice_id"):
        registry.get(voice.id)  # no tenant: built-in voices only, never every tenant's
    with pytest.raises(VoiceError, match="unknown voice_id") as err:
        registry.get(voice.id, "t2")
    assert err.value.kind == "not_found"
    assert voice.id not in {v.id for v in registry.list("t2")}
    with pytest.raises(VoiceError) as dup:
        registry.register(name="Ann", reference_audio=reference_wav(), voice_id=voice.id)
    assert dup.value.kind == "already_exists"
    for bad in ("../etc", "A B", ""):
        with pytest.raises(VoiceError):
            registry.get(bad)
    with pytest.raises(VoiceError, match="exaggeration"):
        registry.register(name="x", reference_audio=reference_wav(), exaggeration=3.0)
    assert "reference_path" not in voice.public()


def test_prepared_voice_lru() -> None:
    cache = PreparedVoiceCache(2)
    calls: list[str] = []

    def prepare(voice: VoiceRecord) -> object:
        calls.append(voice.id)
        return voice.id.upper()

    a, b, c = (VoiceRecord(i, i) for i in "abc")
    assert cache.get("e", a, prepare) == "A"
    cache.get("e", b, prepare)
    cache.get("e", a, prepare)  # hit: a becomes most recent
    cache.get("e", c, prepare)  # evicts b
    cache.get("e", a, prepare)
    cache.get("e", b, prepare)
    assert calls == ["a", "b", "c", "b"]
    assert len(cache) == 2


@pytest.mark.parametrize("backend", ["audio_core", "soxr"])
def test_resampler_keeps_duration_and_ignores_the_split(backend: str) -> None:
    tone = (np.sin(np.arange(22050) * 0.05) * 8000).astype(np.int16)

    def run(step: int) -> npt.NDArray[np.int16]:
        resampler = StreamResampler(22050, 24000, backend=backend)
        pieces = [resampler.process(tone[i : i + step]) for i in range(0, tone.size, step)]
        pieces.append(resampler.process(np.zeros(0, dtype=np.int16), last=True))
        return np.concatenate(pieces)

    one, other = run(441), run(1777)
    # audio_core's flush also returns the filter's delayed tail (its constant latency, < 3 ms).
    tail = round(audio_core.Resampler(22050, 24000).delay_output_samples) if backend == "audio_core" else 0
    assert one.size == pytest.approx(24000 + tail, abs=2)
    assert np.array_equal(one, other)


def test_sentence_split() -> None:
    assert split_sentences("Hi there. How are you? Fine!  ") == ["Hi there.", "How are you?", "Fine!"]


@pytest.fixture(scope="module")
def core(tmp_path_factory: pytest.TempPathFactory) -> TtsCore:
    settings = ChatterboxServiceSettings(
        model_name="espeak-ng", storage_path=str(tmp_path_factory.mktemp("v"))
    )
    return TtsCore(settings)


def test_core_chunks_exact_sizes_and_final_flag(core: TtsCore) -> None:
    chunks = list(
        core.synthesize(
            SynthesisParams("Hello there, how are you today?", chunk_duration_ms=40), lambda: False
        )
    )
    assert all(c.pcm.size == 960 for c in chunks[:-1])
    assert 0 < chunks[-1].pcm.size <= 960
    assert [c.final for c in chunks] == [False] * (len(chunks) - 1) + [True]
    audio = np.concatenate([c.pcm for c in chunks])
    assert np.abs(audio).max() > 1000  # speech, not silence
    again = np.concatenate(
        [
            c.pcm
            for c in core.synthesize(
                SynthesisParams("Hello there, how are you today?", chunk_duration_ms=500), lambda: False
            )
        ]
    )
    assert np.array_equal(audio, again)


def test_core_stops_when_asked(core: TtsCore) -> None:
    seen = 0

    def should_stop() -> bool:
        return seen >= 3

    for chunk in core.synthesize(SynthesisParams("Keep talking please. " * 100), should_stop):
        seen += 1
        assert not chunk.final
    assert seen == 3


@pytest.mark.parametrize(
    ("params", "kind", "message"),
    [
        (SynthesisParams(""), "invalid_argument", "text is empty"),
        (SynthesisParams("  [laugh]  "), "invalid_argument", "nothing espeak-ng can speak"),
        (SynthesisParams("x" * 10_000), "invalid_argument", "limit is 5000"),
        (SynthesisParams("hi", voice_id="nope"), "not_found", "unknown voice_id"),
        (SynthesisParams("hi", exaggeration=2.5), "invalid_argument", "exaggeration 2.5"),
        (SynthesisParams("hi", cfg_weight=-0.1), "invalid_argument", "cfg_weight"),
        (SynthesisParams("hi", chunk_duration_ms=5), "invalid_argument", "chunk_duration_ms"),
        (SynthesisParams("hi", engine="chatterbox-turbo"), "unavailable", "no weights"),
        (SynthesisParams("hi", engine="vall-e"), "invalid_argument", "unknown engine"),
    ],
)
def test_core_rejects_bad_requests(core: TtsCore, params: SynthesisParams, kind: str, message: str) -> None:
    with pytest.raises(RequestError, match=message) as err:
        core.prepare(params)
    assert err.value.kind == kind
