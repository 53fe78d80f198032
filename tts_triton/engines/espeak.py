"""espeak-ng (the Debian package's CLI), streamed and resampled from 22050 Hz to 24 kHz.

One `espeak-ng --stdout` process per utterance. We first bound libespeak-ng in-process, but the library
carries state from one utterance to the next (the same text comes out a few samples different each time)
and synthesises one utterance per process at a time; a fresh process is deterministic, runs utterances in
parallel, is stopped instantly with a signal, and costs ~7 ms to start. The pipe gives backpressure for
free: when we stop reading, espeak blocks on its next write.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import struct
import subprocess
from collections.abc import Callable, Iterator

import numpy as np
import numpy.typing as npt

from tts_triton.engines.base import (
    OUTPUT_SAMPLE_RATE,
    EngineRequest,
    EngineUnavailableError,
    SynthesisError,
)
from tts_triton.resample import StreamResampler
from tts_triton.voices import VoiceRecord

_WAV_HEADER_BYTES = 44
# ~46 ms of 22050 Hz audio per read: small enough for an early first chunk.
_READ_BYTES = 4096


class EspeakEngine:
    name = "espeak-ng"
    honours_expressiveness = False
    supported_tags: frozenset[str] = frozenset()

    def __init__(self, *, words_per_minute: int = 170, binary: str | None = None) -> None:
        found = binary or shutil.which("espeak-ng")
        if found is None:
            raise EngineUnavailableError("espeak-ng not found on PATH; install the Debian package espeak-ng")
        self.binary = found
        self.words_per_minute = words_per_minute
        self.native_rate = 22050

    def prepare_voice(self, voice: VoiceRecord) -> object:
        return voice.espeak_voice

    def stream(
        self, request: EngineRequest, prepared: object, should_stop: Callable[[], bool]
    ) -> Iterator[npt.NDArray[np.int16]]:
        voice = prepared if isinstance(prepared, str) else "en-us"
        # "--" ends the options: text starting with "-" is spoken, not parsed. No -m: markup is not read.
        argv = [
            self.binary,
            "--stdout",
            "-v",
            voice,
            "-s",
            str(self.words_per_minute),
            "--",
            request.text.plain(),
        ]
        try:
            proc = subprocess.Popen(
                argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL
            )
        except OSError as exc:
            raise SynthesisError(f"cannot start espeak-ng: {exc}") from exc
        assert proc.stdout is not None
        out = proc.stdout.fileno()
        try:
            header = _read_exact(out, _WAV_HEADER_BYTES)
            rate = _check_header(header, proc)
            resampler = StreamResampler(rate, OUTPUT_SAMPLE_RATE)
            pending = b""
            while True:
                data = os.read(out, _READ_BYTES)
                if not data:
                    break
                # Any split works: the resampler's output does not depend on how its input is chunked.
                pending += data
                usable = len(pending) - len(pending) % 2
                piece = resampler.process(np.frombuffer(pending[:usable], dtype="<i2").astype(np.int16))
                pending = pending[usable:]
                if piece.size:
                    yield piece
                if should_stop():
                    return
            tail = np.frombuffer(pending[: len(pending) - len(pending) % 2], dtype="<i2").astype(np.int16)
            last = resampler.process(tail, last=True)
            if last.size:
                yield last
            if proc.wait() != 0:
                raise SynthesisError(f"espeak-ng exited with {proc.returncode}: {_stderr(proc)}")
        finally:
            if proc.poll() is None:
                proc.kill()
            with contextlib.suppress(OSError):
                proc.stdout.close()
            if proc.stderr is not None:
                proc.stderr.close()
            proc.wait()

    def close(self) -> None:
        pass


def _read_exact(fd: int, size: int) -> bytes:
    data = b""
    while len(data) < size:
        more = os.read(fd, size - len(data))
        if not more:
            break
        data += more
    return data


def _check_header(header: bytes, proc: subprocess.Popen[bytes]) -> int:
    if len(header) < _WAV_HEADER_BYTES or header[:4] != b"RIFF" or header[8:12] != b"WAVE":
        proc.wait()
        raise SynthesisError(f"espeak-ng produced no WAV output: {_stderr(proc)}")
    channels, rate = struct.unpack_from("<HI", header, 22)
    bits = struct.unpack_from("<H", header, 34)[0]
    if channels != 1 or bits != 16:
        raise SynthesisError(f"espeak-ng produced {channels} channels / {bits} bits, expected mono PCM16")
    return int(rate)


def _stderr(proc: subprocess.Popen[bytes]) -> str:
    if proc.stderr is None:
        return ""
    with contextlib.suppress(OSError, ValueError):
        return proc.stderr.read(2000).decode(errors="replace").strip()
    return ""
