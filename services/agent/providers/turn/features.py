"""Whisper-style log-mel features (80 mels x 800 frames for 8 s at 16 kHz), numpy only.

The math of `transformers.WhisperFeatureExtractor` (Apache-2.0), as also vendored by pipecat for Smart
Turn v3: normalized waveform, periodic Hann window of 400 samples, hop 160, Slaney mel filterbank,
log10 clamped to 8 below the maximum, scaled to about [-1, 1]. Reimplemented here so that neither
transformers nor the pipecat framework is imported.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from numpy.typing import NDArray

SAMPLE_RATE = 16000
WINDOW_S = 8
N_FFT = 400
HOP = 160
N_MELS = 80


def _hz_to_mel(freq: NDArray[np.float64]) -> NDArray[np.float64]:
    mels = 3.0 * freq / 200.0
    log_region = freq >= 1000.0
    mels[log_region] = 15.0 + np.log(freq[log_region] / 1000.0) * (27.0 / np.log(6.4))
    return mels


def _mel_to_hz(mels: NDArray[np.float64]) -> NDArray[np.float64]:
    freq = 200.0 * mels / 3.0
    log_region = mels >= 15.0
    freq[log_region] = 1000.0 * np.exp((np.log(6.4) / 27.0) * (mels[log_region] - 15.0))
    return freq


def mel_filterbank() -> NDArray[np.float64]:
    """Slaney-normalised triangular filters, shape (N_FFT // 2 + 1, N_MELS)."""
    edges = _hz_to_mel(np.array([0.0, SAMPLE_RATE / 2.0]))
    filter_freqs = _mel_to_hz(np.linspace(edges[0], edges[1], N_MELS + 2))
    fft_freqs = np.linspace(0, SAMPLE_RATE // 2, N_FFT // 2 + 1)
    diff = np.diff(filter_freqs)
    slopes = filter_freqs[None, :] - fft_freqs[:, None]
    down = -slopes[:, :-2] / diff[:-1]
    up = slopes[:, 2:] / diff[1:]
    filters = np.maximum(0.0, np.minimum(down, up))
    filters *= (2.0 / (filter_freqs[2 : N_MELS + 2] - filter_freqs[:N_MELS]))[None, :]
    return filters


class LogMel:
    """Holds the window and filterbank (built once per process)."""

    def __init__(self) -> None:
        self._window = np.hanning(N_FFT + 1)[:-1]
        self._filters_t = mel_filterbank().T

    def __call__(self, audio: NDArray[np.float32]) -> NDArray[np.float32]:
        """`audio`: float samples at 16 kHz, exactly WINDOW_S seconds (left-padded by the caller)."""
        x = audio.astype(np.float32)
        x = (x - x.mean()) / np.sqrt(x.var() + 1e-7)
        padded = np.pad(x.astype(np.float64), (N_FFT // 2, N_FFT // 2), mode="reflect")
        frames = sliding_window_view(padded, N_FFT)[::HOP]
        power = np.abs(np.fft.rfft(frames * self._window, axis=-1)) ** 2
        mel = np.maximum(1e-10, self._filters_t @ power.T)
        log_spec = np.log10(mel)[:, :-1]
        log_spec = np.maximum(log_spec, log_spec.max() - 8.0)
        scaled: NDArray[np.float32] = ((log_spec + 4.0) / 4.0).astype(np.float32)
        return scaled
