"""Silero batched across calls: the same probabilities as one window at a time, one model run for the
windows that calls ask for together, and digital silence never run."""

from __future__ import annotations

import asyncio

import numpy as np

from services.agent.providers.vad.silero import CONTEXT, WINDOW, SileroVad


def voice_like(seed: int, windows: int) -> bytes:
    """Harmonics with a wobbling pitch plus noise: something the model has an opinion about."""
    rng = np.random.default_rng(seed)
    t = np.arange(windows * WINDOW) / 16000
    pitch = 120 + 40 * np.sin(2 * np.pi * 3 * t) + 20 * seed
    phase = 2 * np.pi * np.cumsum(pitch) / 16000
    signal = sum(np.sin(k * phase) / k for k in range(1, 8)) * 0.2 + rng.normal(0, 0.01, t.size)
    return (np.clip(signal, -1, 1) * 32767).astype("<i2").tobytes()


def reference(model: SileroVad, pcm16: bytes) -> list[float]:
    samples = np.frombuffer(pcm16, dtype="<i2").astype(np.float32) / 32768.0
    state = np.zeros((2, 1, 128), dtype=np.float32)
    context = np.zeros(CONTEXT, dtype=np.float32)
    probs = []
    for start in range(0, len(samples) - WINDOW + 1, WINDOW):
        chunk = samples[start : start + WINDOW]
        prob, state = model.infer(np.concatenate([context, chunk])[np.newaxis, :], state)
        context = chunk[-CONTEXT:]
        probs.append(prob)
    return probs


async def test_batched_equals_one_at_a_time_and_batches() -> None:
    model = SileroVad(batch_wait_ms=5)
    audio = [voice_like(seed, 12) for seed in range(6)]
    streams = [model.new_stream() for _ in audio]

    async def feed(stream_index: int) -> list[float]:
        stream, pcm = streams[stream_index], audio[stream_index]
        probs: list[float] = []
        for start in range(0, len(pcm), 640):  # 20 ms frames, as the bridge sends them
            probs += await stream.probabilities(pcm[start : start + 640])
        return probs

    batched = await asyncio.gather(*(feed(i) for i in range(len(audio))))
    for pcm, probs in zip(audio, batched, strict=True):
        expected = reference(model, pcm)
        assert len(probs) == len(expected) == 12
        assert np.allclose(probs, expected, atol=1e-4)
    assert max(max(p) for p in batched) > 0.1  # the comparison is not between two rows of zeros
    # 6 calls x 12 windows went through in far fewer runs than windows.
    assert model.windows == 72 and model.runs < 72 / 2


async def test_digital_silence_is_not_run() -> None:
    model = SileroVad(batch_wait_ms=1)
    stream = model.new_stream()
    assert await stream.probabilities(b"\x00\x00" * WINDOW * 3) == [0.0, 0.0, 0.0]
    assert model.runs == 0
