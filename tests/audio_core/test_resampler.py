"""Resampler quality, delay, streaming behaviour (Python side; Rust tests cover every pair in depth)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import audio_core as ac

PAIRS = [(a, b) for a in (8000, 16000, 24000, 48000) for b in (8000, 16000, 24000, 48000) if a != b]


def run_float(rs: ac.Resampler, x: np.ndarray) -> np.ndarray:
    data = rs.process_float(x.astype("<f4").tobytes()) + rs.flush_float()
    return np.frombuffer(data, dtype="<f4").astype(np.float64)


def fit(y: np.ndarray, f: float, rate: int, skip: int) -> tuple[float, float]:
    seg = y[skip:-skip]
    t = (np.arange(len(seg)) + skip) / rate
    basis = np.stack([np.sin(2 * np.pi * f * t), np.cos(2 * np.pi * f * t)], axis=1)
    coef, *_ = np.linalg.lstsq(basis, seg, rcond=None)
    resid = seg - basis @ coef
    return float(np.hypot(*coef)), float(np.sqrt(np.mean(resid**2)) * np.sqrt(2))


@pytest.mark.parametrize(("a", "b"), PAIRS)
def test_delay_at_most_3ms(a: int, b: int) -> None:
    assert ac.Resampler(a, b).delay_ms <= 3.0


@pytest.mark.parametrize(("a", "b"), PAIRS)
def test_passband_tones_flat_and_clean(a: int, b: int) -> None:
    rs = ac.Resampler(a, b)
    for frac in (0.05, 0.3, 0.6, 0.8):
        f = frac * min(a, b) / 2
        x = np.sin(2 * np.pi * f * np.arange(a // 4) / a)
        y = run_float(rs, x)
        amp, resid = fit(y, f, b, b // 50)
        assert abs(20 * np.log10(amp)) < 0.1, (a, b, f)
        assert 20 * np.log10(resid) < -80, (a, b, f)


@pytest.mark.parametrize(("a", "b"), [(48000, 16000), (48000, 8000), (24000, 16000), (16000, 8000)])
def test_stopband_sweep_attenuated_80db(a: int, b: int) -> None:
    rs = ac.Resampler(a, b)
    f0, f1, dur = rs.stopband_hz, a / 2 * 0.99, 1.0
    t = np.arange(int(a * dur)) / a
    x = np.sin(2 * np.pi * (f0 * t + (f1 - f0) * t * t / (2 * dur)))
    y = run_float(rs, x)[b // 50 : -b // 50]
    assert 20 * np.log10(np.sqrt(np.mean(y**2)) * np.sqrt(2)) < -80


def test_steady_output_and_exact_flush() -> None:
    rs = ac.Resampler(48000, 16000)
    chunk = (np.ones(960) * 1000).astype("<i2").tobytes()
    assert all(len(rs.process(chunk)) == 640 for _ in range(20))
    rs.reset()
    out = rs.process(b"\0\0" * 1001) + rs.flush()
    # The flush returns the delayed tail: the output covers input plus the filter's delay.
    delay_in = round(rs.delay_ms * 48)
    assert len(out) // 2 == -(-(1001 + delay_in) * 16000 // 48000)


def test_flush_returns_the_delayed_tail() -> None:
    # An impulse in the last millisecond of input comes out only through the flush.
    rs = ac.Resampler(48000, 16000)
    x = np.zeros(4800, dtype="<i2")
    x[-48] = 30000
    streamed = np.frombuffer(rs.process(x.tobytes()), dtype="<i2")
    tail = np.frombuffer(rs.flush(), dtype="<i2")
    assert np.abs(streamed).max() < 3000
    assert np.abs(tail).max() > 3000
    assert abs(len(tail) - rs.delay_output_samples) <= 2


@settings(max_examples=25, deadline=None)
@given(
    pair=st.sampled_from(PAIRS),
    cuts=st.lists(st.integers(min_value=0, max_value=500), min_size=1, max_size=10),
)
def test_chunk_independence(pair: tuple[int, int], cuts: list[int]) -> None:
    a, b = pair
    x = (np.random.default_rng(3).normal(0, 6000, 2500)).clip(-32768, 32767).astype("<i2")
    whole = ac.Resampler(a, b)
    ref = whole.process(x.tobytes()) + whole.flush()
    parts = ac.Resampler(a, b)
    out, at = b"", 0
    for c in cuts:
        out += parts.process(x[at : at + c].tobytes())
        at = min(at + c, len(x))
    for s in x[at : at + 50]:
        out += parts.process(s.tobytes())
    out += parts.process(x[at + 50 :].tobytes()) + parts.flush()
    assert out == ref


def test_ratio_adjust_and_errors() -> None:
    rs = ac.Resampler(16000, 48000)
    rs.set_ratio_adjust(1.001)
    with pytest.raises(ValueError, match="ratio"):
        rs.set_ratio_adjust(1.5)
    with pytest.raises(ValueError, match="unsupported"):
        ac.Resampler(11025, 16000)
    with pytest.raises(ValueError, match="odd length"):
        rs.process(b"\0")
