"""espeak-ng through its C library (libespeak-ng1), streamed and resampled to 24 kHz.

The library synthesises on the calling thread and hands audio to a callback in pieces of `piece_ms`; we run
it on a helper thread and pass the pieces through a bounded queue, so the consumer gets the first piece
while the rest is still being made, a slow consumer holds espeak back (backpressure), and a stop request
makes the callback return 1, which aborts synthesis inside espeak.

espeak-ng keeps global state, so one process synthesises one utterance at a time (a lock); Triton gets
parallelism from several model instances, each its own process.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

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

log = logging.getLogger(__name__)

# speak_lib.h
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_EE_OK = 0
_PARAM_RATE = 1

_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
_Sink = Callable[[npt.NDArray[np.int16]], bool]


class EspeakEngine:
    name = "espeak-ng"
    honours_expressiveness = False
    supported_tags: frozenset[str] = frozenset()

    def __init__(self, *, piece_ms: int = 20, words_per_minute: int = 170) -> None:
        path = ctypes.util.find_library("espeak-ng") or "libespeak-ng.so.1"
        try:
            lib: Any = ctypes.CDLL(path)
        except OSError as exc:
            raise EngineUnavailableError(
                f"espeak-ng library not found ({exc}); install the Debian package libespeak-ng1"
            ) from None
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [
            ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint, ctypes.c_uint,
            ctypes.POINTER(ctypes.c_uint), ctypes.c_void_p,
        ]  # fmt: skip
        lib.espeak_Synth.restype = ctypes.c_int
        rate = int(lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, piece_ms, None, _INITIALIZE_DONT_EXIT))
        if rate <= 0:
            raise EngineUnavailableError("espeak_Initialize failed (is espeak-ng-data installed?)")
        self._lib = lib
        self.native_rate = rate
        self._words_per_minute = words_per_minute
        self._lock = threading.Lock()
        self._sink: _Sink | None = None
        # Kept on the instance: ctypes does not hold a reference to a callback it handed to C.
        self._callback = _SynthCallback(self._on_audio)
        lib.espeak_SetSynthCallback(self._callback)

    def prepare_voice(self, voice: VoiceRecord) -> object:
        return voice.espeak_voice.encode()

    def stream(
        self, request: EngineRequest, prepared: object, should_stop: Callable[[], bool]
    ) -> Iterator[npt.NDArray[np.int16]]:
        voice_name = prepared if isinstance(prepared, bytes) else b"en-us"
        text = request.text.plain()
        pieces: queue.Queue[npt.NDArray[np.int16] | BaseException | None] = queue.Queue(maxsize=32)
        stop = threading.Event()

        def sink(pcm: npt.NDArray[np.int16]) -> bool:
            # Blocks while the consumer is behind; wakes up regularly to notice a stop.
            while not stop.is_set():
                try:
                    pieces.put(pcm, timeout=0.05)
                    return False
                except queue.Full:
                    continue
            return True

        def run() -> None:
            try:
                self._synthesise(text, voice_name, sink)
                pieces.put(None)
            except BaseException as exc:
                pieces.put(exc)

        worker = threading.Thread(target=run, name="espeak-synth", daemon=True)
        worker.start()
        resampler = StreamResampler(self.native_rate, OUTPUT_SAMPLE_RATE)
        try:
            while True:
                item = pieces.get()
                if item is None:
                    break
                if isinstance(item, BaseException):
                    raise SynthesisError(f"espeak-ng failed: {item}") from item
                if should_stop():
                    return
                out = resampler.process(item)
                if out.size:
                    yield out
            tail = resampler.process(np.zeros(0, dtype=np.int16), last=True)
            if tail.size:
                yield tail
        finally:
            stop.set()
            while worker.is_alive():
                # Empty the queue so a blocked put returns and espeak sees the abort.
                with contextlib.suppress(queue.Empty):
                    pieces.get(timeout=0.01)
            worker.join()

    def _synthesise(self, text: str, voice_name: bytes, sink: _Sink) -> None:
        data = text.encode("utf-8") + b"\0"
        with self._lock:
            if self._lib.espeak_SetVoiceByName(voice_name) != _EE_OK:
                log.warning("espeak-ng voice %r not found; using en-us", voice_name.decode())
                self._lib.espeak_SetVoiceByName(b"en-us")
            self._lib.espeak_SetParameter(_PARAM_RATE, self._words_per_minute, 0)
            self._sink = sink
            try:
                status = self._lib.espeak_Synth(
                    data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None
                )
            finally:
                self._sink = None
            # EE_INTERNAL_ERROR (-1) is also what an abort from the callback returns; the sink knows.
            if status not in (_EE_OK, -1):
                raise SynthesisError(f"espeak_Synth returned {status}")

    def _on_audio(self, wav: Any, numsamples: int, _events: int | None) -> int:
        sink = self._sink
        if sink is None:
            return 1
        if not wav or numsamples <= 0:
            return 0
        try:
            pcm = np.ctypeslib.as_array(wav, shape=(numsamples,)).astype(np.int16, copy=True)
            return 1 if sink(pcm) else 0
        except Exception:  # an exception cannot cross the C boundary; abort synthesis instead
            log.exception("espeak-ng callback failed")
            return 1

    def close(self) -> None:
        # espeak_Terminate would tear down global state other engine objects in this process may use.
        self._sink = None
