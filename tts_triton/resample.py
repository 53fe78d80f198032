"""Streaming sample-rate conversion for engines whose native rate is not the platform's 24 kHz.

Only espeak-ng needs it (22050 Hz). audio_core's streaming resampler is meant to take this job; until it
converts 22050 -> 24000 this is python-soxr behind this one class, so switching is a one-file change.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import soxr


class StreamResampler:
    """Mono PCM16 in, mono PCM16 out; keeps filter state between chunks of one utterance."""

    def __init__(self, in_rate: int, out_rate: int) -> None:
        self.in_rate = in_rate
        self.out_rate = out_rate
        # HQ: the quality the platform uses elsewhere; its ~1 ms of delay is irrelevant next to the engine.
        # float32, not int16: soxr dithers integer output with noise, so the same input would not give
        # the same samples twice.
        self._stream = soxr.ResampleStream(in_rate, out_rate, 1, dtype="float32", quality="HQ")

    def process(self, pcm: npt.NDArray[np.int16], *, last: bool = False) -> npt.NDArray[np.int16]:
        out = self._stream.resample_chunk(pcm.astype(np.float32) / 32768.0, last=last)
        scaled = np.rint(np.asarray(out, dtype=np.float32).reshape(-1) * 32768.0)
        clipped: npt.NDArray[np.int16] = np.clip(scaled, -32768, 32767).astype(np.int16)
        return clipped
