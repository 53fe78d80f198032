"""Silero VAD v5 on onnxruntime, with the model file that ships inside `livekit-plugins-silero`.

One InferenceSession per process is shared by every call (onnxruntime sessions are thread-safe for
concurrent `run`); each call keeps only its RNN state and 64-sample context. Inference runs on a worker
thread (onnxruntime releases the GIL), never on the event loop.
"""

from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime

SAMPLE_RATE = 16000
WINDOW = 512  # samples per inference at 16 kHz (32 ms), fixed by the model
CONTEXT = 64  # samples of the previous window the model expects in front of each window


def bundled_model_path() -> Path:
    """The ONNX file inside the installed livekit-plugins-silero wheel (located without importing it)."""
    spec = importlib.util.find_spec("livekit.plugins.silero")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("livekit-plugins-silero is not installed; it ships the Silero VAD model")
    path = Path(next(iter(spec.submodule_search_locations))) / "resources" / "silero_vad.onnx"
    if not path.is_file():
        raise FileNotFoundError(f"Silero VAD model not found at {path}")
    return path


class SileroVad:
    """The VoiceActivity port. Create once per process; `new_stream()` per call."""

    name = "silero"

    def __init__(self, model_path: Path | None = None) -> None:
        options = onnxruntime.SessionOptions()
        # One thread per inference: windows are tiny and calls run in parallel on the thread pool.
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = onnxruntime.InferenceSession(
            str(model_path or bundled_model_path()), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self._sr = np.array(SAMPLE_RATE, dtype=np.int64)

    def new_stream(self) -> SileroStream:
        return SileroStream(self)

    def infer(
        self, window: npt.NDArray[np.float32], state: npt.NDArray[np.float32]
    ) -> tuple[float, npt.NDArray[np.float32]]:
        out, new_state = self._session.run(None, {"input": window, "state": state, "sr": self._sr})
        return float(out.item()), new_state


class SileroStream:
    window_ms = WINDOW * 1000 / SAMPLE_RATE

    def __init__(self, model: SileroVad) -> None:
        self._model = model
        self._state = np.zeros((2, 1, 128), dtype=np.float32)
        self._context = np.zeros(CONTEXT, dtype=np.float32)
        self._pending = np.zeros(0, dtype=np.float32)

    async def probabilities(self, pcm16: bytes) -> list[float]:
        samples = np.frombuffer(pcm16, dtype="<i2").astype(np.float32) / 32768.0
        self._pending = np.concatenate([self._pending, samples])
        if len(self._pending) < WINDOW:
            return []
        count = len(self._pending) // WINDOW
        windows, self._pending = self._pending[: count * WINDOW], self._pending[count * WINDOW :]
        return await asyncio.to_thread(self._run, windows)

    def _run(self, windows: npt.NDArray[np.float32]) -> list[float]:
        probs = []
        for start in range(0, len(windows), WINDOW):
            chunk = windows[start : start + WINDOW]
            framed = np.concatenate([self._context, chunk])[np.newaxis, :]
            prob, self._state = self._model.infer(framed, self._state)
            self._context = chunk[-CONTEXT:]
            probs.append(prob)
        return probs
