"""Smart Turn v3.2 (BSD-2-Clause, pipecat-ai): an ONNX audio model that says whether the last 8 s of a
caller's speech sound like a finished turn (falling intonation, a complete phrase) or a pause inside
one (reading out a number, "and ...", searching for a word).

The model file ships inside the `pipecat-ai` wheel, installed without its dependencies and pinned by
hash (requirements-nodeps.txt); it is located through the distribution's file list, so the pipecat
framework is never imported. One InferenceSession per process with one intra-op thread; each decision
(~6 ms of features + ~40 ms of inference on one core) runs on a worker thread, never on the event loop,
and only at candidate ends of turn.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
from pathlib import Path

import numpy as np
import onnxruntime

from services.agent.providers.turn.features import SAMPLE_RATE, WINDOW_S, LogMel

MODEL_FILE = "pipecat/audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx"


def bundled_model_path() -> Path:
    try:
        dist = importlib.metadata.distribution("pipecat-ai")
    except importlib.metadata.PackageNotFoundError as exc:
        raise FileNotFoundError(
            "pipecat-ai is not installed; it ships the Smart Turn model (scripts/bootstrap.sh installs it)"
        ) from exc
    path = Path(str(dist.locate_file(MODEL_FILE)))
    if not path.is_file():
        raise FileNotFoundError(f"Smart Turn model not found at {path}")
    return path


class SmartTurn:
    """The end-of-turn model. Create once per process; `complete_probability` is safe to call from many
    calls at once (onnxruntime sessions are thread-safe for inference)."""

    name = "smart-turn-v3.2"

    def __init__(self, model_path: Path | None = None) -> None:
        options = onnxruntime.SessionOptions()
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        options.inter_op_num_threads = 1
        options.intra_op_num_threads = 1
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        self._session = onnxruntime.InferenceSession(
            str(model_path or bundled_model_path()), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self._features = LogMel()

    async def complete_probability(self, pcm16: bytes) -> float:
        """Probability (0..1) that the turn in `pcm16` (16 kHz mono, the caller's turn so far) is over."""
        return await asyncio.to_thread(self.predict, pcm16)

    def predict(self, pcm16: bytes) -> float:
        audio = np.frombuffer(pcm16, dtype="<i2").astype(np.float32) / 32768.0
        size = SAMPLE_RATE * WINDOW_S
        audio = audio[-size:] if len(audio) >= size else np.pad(audio, (size - len(audio), 0))
        features = self._features(audio)[np.newaxis, :, :]
        (output,) = self._session.run(None, {"input_features": features})[:1]
        return float(np.asarray(output).reshape(-1)[0])
