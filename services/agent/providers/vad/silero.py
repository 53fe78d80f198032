"""Silero VAD v5 on onnxruntime, with the model file that ships inside `livekit-plugins-silero`.

One InferenceSession per process serves every call, in batches: each call keeps only its RNN state and
64-sample context, and the windows that calls ask for within `batch_wait_ms` of each other go through
the model in ONE run (the model's input and state have a batch dimension), on a worker thread
(onnxruntime releases the GIL), never on the event loop. Batching costs a call at most `batch_wait_ms`
of delay on its speech probabilities and saves most of the per-run overhead, which dominates at batch 1.
A window of digital silence (every sample under ENERGY_GATE) is not run at all: its probability is 0.
"""

from __future__ import annotations

import asyncio
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime

SAMPLE_RATE = 16000
WINDOW = 512  # samples per inference at 16 kHz (32 ms), fixed by the model
CONTEXT = 64  # samples of the previous window the model expects in front of each window
# Samples below this (as a fraction of full scale, ~ -72 dBFS) are digital silence: no speech to find.
ENERGY_GATE = 8 / 32768
# How long the first window of a batch waits for others, and the largest batch per run.
BATCH_WAIT_MS = 8.0
MAX_BATCH = 128

State = npt.NDArray[np.float32]


def bundled_model_path() -> Path:
    """The ONNX file inside the installed livekit-plugins-silero wheel (located without importing it)."""
    spec = importlib.util.find_spec("livekit.plugins.silero")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("livekit-plugins-silero is not installed; it ships the Silero VAD model")
    path = Path(next(iter(spec.submodule_search_locations))) / "resources" / "silero_vad.onnx"
    if not path.is_file():
        raise FileNotFoundError(f"Silero VAD model not found at {path}")
    return path


@dataclass
class _Request:
    framed: npt.NDArray[np.float32]  # (CONTEXT + WINDOW,)
    state: State  # (2, 1, 128)
    done: asyncio.Future[tuple[float, State]]


class SileroVad:
    """The VoiceActivity port. Create once per process; `new_stream()` per call."""

    name = "silero"

    def __init__(
        self,
        model_path: Path | None = None,
        *,
        batch_wait_ms: float = BATCH_WAIT_MS,
        max_batch: int = MAX_BATCH,
    ) -> None:
        options = onnxruntime.SessionOptions()
        # One thread: a process per core serves the calls, and a batch of windows is still small.
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = onnxruntime.InferenceSession(
            str(model_path or bundled_model_path()), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self._sr = np.array(SAMPLE_RATE, dtype=np.int64)
        self._wait_s = batch_wait_ms / 1000
        self._max_batch = max_batch
        self._pending: list[_Request] = []
        self._flush_handle: asyncio.TimerHandle | None = None
        # Batch sizes run so far (benchmarks read them).
        self.runs = 0
        self.windows = 0

    def new_stream(self) -> SileroStream:
        return SileroStream(self)

    def infer(self, window: npt.NDArray[np.float32], state: State) -> tuple[float, State]:
        """One window at batch 1, on the calling thread."""
        out, new_state = self._session.run(None, {"input": window, "state": state, "sr": self._sr})
        return float(out.item()), new_state

    def infer_batch(self, windows: npt.NDArray[np.float32], states: State) -> tuple[list[float], State]:
        """(B, 576) windows and (2, B, 128) states -> B probabilities and the new states, in one run."""
        out, new_states = self._session.run(None, {"input": windows, "state": states, "sr": self._sr})
        return [float(p) for p in np.asarray(out).reshape(-1)], new_states

    async def submit(self, framed: npt.NDArray[np.float32], state: State) -> tuple[float, State]:
        """The probability of one window and the call's next state, run with the other calls' windows."""
        loop = asyncio.get_running_loop()
        request = _Request(framed, state, loop.create_future())
        self._pending.append(request)
        if len(self._pending) >= self._max_batch:
            self._flush()
        elif self._flush_handle is None:
            self._flush_handle = loop.call_later(self._wait_s, self._flush)
        return await request.done

    def _flush(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        batch, self._pending = self._pending, []
        if batch:
            asyncio.get_running_loop().create_task(self._run(batch), name="silero-batch")

    async def _run(self, batch: list[_Request]) -> None:
        windows = np.stack([r.framed for r in batch])
        states = np.concatenate([r.state for r in batch], axis=1)
        try:
            probs, new_states = await asyncio.to_thread(self.infer_batch, windows, states)
        except Exception as exc:  # every call of the batch sees the failure (its VAD falls back)
            for r in batch:
                if not r.done.done():
                    r.done.set_exception(exc)
            return
        self.runs += 1
        self.windows += len(batch)
        for i, r in enumerate(batch):
            if not r.done.done():  # a call that hung up meanwhile no longer waits
                r.done.set_result((probs[i], new_states[:, i : i + 1, :].copy()))


class SileroStream:
    window_ms = WINDOW * 1000 / SAMPLE_RATE

    def __init__(self, model: SileroVad) -> None:
        self._model = model
        self._state: State = np.zeros((2, 1, 128), dtype=np.float32)
        self._context = np.zeros(CONTEXT, dtype=np.float32)
        self._pending = np.zeros(0, dtype=np.float32)

    async def probabilities(self, pcm16: bytes) -> list[float]:
        samples = np.frombuffer(pcm16, dtype="<i2").astype(np.float32) / 32768.0
        self._pending = np.concatenate([self._pending, samples])
        probs: list[float] = []
        while len(self._pending) >= WINDOW:
            chunk, self._pending = self._pending[:WINDOW], self._pending[WINDOW:]
            if float(np.max(np.abs(chunk))) < ENERGY_GATE:
                # Digital silence: nothing to detect, and the model's state stays where speech left it.
                probs.append(0.0)
            else:
                framed = np.concatenate([self._context, chunk])
                prob, self._state = await self._model.submit(framed, self._state)
                probs.append(prob)
            self._context = chunk[-CONTEXT:]
        return probs
