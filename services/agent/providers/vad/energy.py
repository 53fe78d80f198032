"""Energy VAD: the last-resort detector (no model), and a cheap one for load tests.

Speech probability is a logistic function of the frame's level above an adaptive noise floor.
"""

from __future__ import annotations

import math

import numpy as np

SAMPLE_RATE = 16000
WINDOW = 320  # 20 ms


class EnergyVad:
    name = "energy"

    def __init__(self, threshold_db: float = 12.0) -> None:
        self.threshold_db = threshold_db

    def new_stream(self) -> EnergyStream:
        return EnergyStream(self.threshold_db)


class EnergyStream:
    window_ms = WINDOW * 1000 / SAMPLE_RATE

    def __init__(self, threshold_db: float) -> None:
        self._threshold_db = threshold_db
        self._noise_db = -60.0
        self._pending = b""

    async def probabilities(self, pcm16: bytes) -> list[float]:
        self._pending += pcm16
        usable = len(self._pending) // (WINDOW * 2) * WINDOW * 2
        data, self._pending = self._pending[:usable], self._pending[usable:]
        probs = []
        for start in range(0, len(data), WINDOW * 2):
            x = np.frombuffer(data[start : start + WINDOW * 2], dtype="<i2").astype(np.float32)
            level = 10 * math.log10(float(np.mean(x * x)) / 32768.0**2 + 1e-10)
            # The noise floor follows quiet frames quickly and loud frames slowly.
            rate = 0.2 if level < self._noise_db else 0.002
            self._noise_db += rate * (level - self._noise_db)
            margin = level - max(self._noise_db, -70.0) - self._threshold_db
            probs.append(1.0 / (1.0 + math.exp(-margin / 2.0)))
        return probs
