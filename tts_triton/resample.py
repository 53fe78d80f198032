"""Streaming sample-rate conversion for engines whose native rate is not the platform's 24 kHz.

Only espeak-ng needs it (22050 Hz). audio_core's Rust resampler does the work (bit-identical output for
any split of the input, constant delay). Where its extension is not built (an image without the Rust
toolchain) python-soxr takes over behind the same class.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import numpy.typing as npt


def _audio_core_available() -> bool:
    try:
        return importlib.util.find_spec("audio_core._native") is not None
    except ImportError:
        return False


class StreamResampler:
    """Mono PCM16 in, mono PCM16 out; keeps filter state between chunks of one utterance."""

    def __init__(self, in_rate: int, out_rate: int, *, backend: str | None = None) -> None:
        self.in_rate = in_rate
        self.out_rate = out_rate
        self.backend = backend or ("audio_core" if _audio_core_available() else "soxr")
        if self.backend == "audio_core":
            from audio_core import Resampler  # noqa: PLC0415 - optional native extension

            self._native = Resampler(in_rate, out_rate)
        else:
            import soxr  # noqa: PLC0415

            # float32, not int16: soxr dithers integer output with noise, so the same input would not
            # give the same samples twice.
            self._soxr = soxr.ResampleStream(in_rate, out_rate, 1, dtype="float32", quality="HQ")

    def process(self, pcm: npt.NDArray[np.int16], *, last: bool = False) -> npt.NDArray[np.int16]:
        if self.backend == "audio_core":
            out = self._native.process(np.ascontiguousarray(pcm, dtype="<i2").tobytes())
            if last:
                out += self._native.flush()
            return np.frombuffer(out, dtype="<i2").astype(np.int16)
        resampled = self._soxr.resample_chunk(pcm.astype(np.float32) / 32768.0, last=last)
        scaled = np.rint(np.asarray(resampled, dtype=np.float32).reshape(-1) * 32768.0)
        clipped: npt.NDArray[np.int16] = np.clip(scaled, -32768, 32767).astype(np.int16)
        return clipped
