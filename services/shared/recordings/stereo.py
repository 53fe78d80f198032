"""A call's two sides as one stereo PCM16 WAV (left: caller, right: agent) at one rate, built while the
call runs with bounded memory: interleaved audio goes to a temporary file in 1 MiB writes (in a thread).

Both sides are real-time streams (the caller's frames as they arrive, the agent's as playout sends them),
so the caller's sample count is the timeline: agent audio starts where the caller's stream is when it is
sent, and either side that falls silent (no frames) is filled with silence from the wall clock.
"""

from __future__ import annotations

import asyncio
import io
import tempfile
import time
import wave
from collections.abc import Callable
from typing import IO

import numpy as np

FLUSH_BYTES = 1 << 20
SLACK_S = 1.0  # a side lagging the wall clock by more than this is silent, not late


class Resampler:
    """Linear interpolation across frame boundaries (archive quality; no clicks at frame joins)."""

    def __init__(self, in_rate: int, out_rate: int) -> None:
        self.in_rate = in_rate
        self._step = in_rate / out_rate
        self._in_total = 0
        self._out_total = 0
        self._last: float | None = None

    def __call__(self, samples: np.ndarray) -> np.ndarray:
        if len(samples) == 0:
            return np.zeros(0, np.int16)
        x = samples.astype(np.float32)
        base = self._in_total
        if self._last is not None:
            x = np.concatenate(([self._last], x))
            base -= 1
        end = self._in_total + len(samples) - 1  # the newest input position available
        count = int(np.floor(end / self._step)) + 1 - self._out_total
        positions = (self._out_total + np.arange(max(count, 0))) * self._step - base
        out = np.interp(positions, np.arange(len(x)), x)
        self._out_total += max(count, 0)
        self._in_total += len(samples)
        self._last = float(samples[-1])
        result: np.ndarray = np.clip(np.round(out), -32768, 32767).astype(np.int16)
        return result


class StereoRecorder:
    def __init__(self, rate: int = 16000, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self._clock = clock
        self._start = clock()
        self._pending: list[np.ndarray] = [np.zeros(0, np.int16), np.zeros(0, np.int16)]
        self._totals = [0, 0]  # samples per side so far, silence included
        self._resamplers: list[Resampler | None] = [None, None]
        self._out = bytearray()
        self._file: IO[bytes] | None = None
        self._writer: asyncio.Task[None] | None = None
        self.frames = 0  # stereo frames interleaved so far

    def caller(self, pcm: bytes, rate: int = 16000) -> None:
        self._add(0, pcm, rate)

    def agent(self, pcm: bytes, rate: int) -> None:
        # The agent speaks from where the caller's stream is now.
        self._pad(1, self._totals[0])
        self._add(1, pcm, rate)

    def _pad(self, side: int, to: int) -> None:
        missing = to - self._totals[side]
        if missing > 0:
            self._pending[side] = np.concatenate((self._pending[side], np.zeros(missing, np.int16)))
            self._totals[side] = to

    def _add(self, side: int, pcm: bytes, rate: int) -> None:
        wall = int((self._clock() - self._start - SLACK_S) * self.rate)
        self._pad(0, wall)
        self._pad(1, wall)
        samples = np.frombuffer(pcm[: len(pcm) // 2 * 2], dtype="<i2")
        if rate != self.rate:
            resampler = self._resamplers[side]
            if resampler is None or resampler.in_rate != rate:
                resampler = self._resamplers[side] = Resampler(rate, self.rate)
            samples = resampler(samples)
        self._pending[side] = np.concatenate((self._pending[side], samples))
        self._totals[side] += len(samples)
        self._drain()

    def _drain(self) -> None:
        n = min(len(self._pending[0]), len(self._pending[1]))
        if n == 0:
            return
        frames = np.empty(2 * n, np.int16)
        frames[0::2] = self._pending[0][:n]
        frames[1::2] = self._pending[1][:n]
        self._pending = [self._pending[0][n:], self._pending[1][n:]]
        self._out += frames.astype("<i2").tobytes()
        self.frames += n
        if len(self._out) >= FLUSH_BYTES:
            self._flush()

    def _flush(self) -> None:
        chunk, self._out = bytes(self._out), bytearray()
        previous = self._writer

        async def write() -> None:
            if previous is not None:
                await previous  # writes stay in order
            await asyncio.to_thread(self._write, chunk)

        self._writer = asyncio.get_running_loop().create_task(write())

    def _write(self, chunk: bytes) -> None:
        if self._file is None:
            # closed by _assemble or discard: it lives as long as the call
            self._file = tempfile.TemporaryFile(prefix="recording-")  # noqa: SIM115
        self._file.write(chunk)

    @property
    def duration_s(self) -> float:
        return self.frames / self.rate

    async def finish(self) -> bytes:
        """The whole WAV file; the recorder is spent afterwards."""
        longest = max(self._totals)
        self._pad(0, longest)
        self._pad(1, longest)
        self._drain()
        if self._writer is not None:
            await self._writer
        tail, self._out = bytes(self._out), bytearray()
        return await asyncio.to_thread(self._assemble, tail)

    def _assemble(self, tail: bytes) -> bytes:
        buffer = io.BytesIO()
        with wave.open(buffer, "wb") as wav:
            wav.setnchannels(2)
            wav.setsampwidth(2)
            wav.setframerate(self.rate)
            if self._file is not None:
                self._file.seek(0)
                while chunk := self._file.read(FLUSH_BYTES):
                    wav.writeframesraw(chunk)
                self._file.close()
                self._file = None
            wav.writeframesraw(tail)
        return buffer.getvalue()

    def discard(self) -> None:
        if self._writer is not None:
            self._writer.cancel()
        if self._file is not None:
            self._file.close()
            self._file = None
