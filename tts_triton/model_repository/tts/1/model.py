"""Triton python-backend model `tts` (decoupled): text in, PCM16 mono 24 kHz chunks out.

Runs inside Triton's python backend stub (one process per instance). All logic lives in
`tts_triton.core` (importable through PYTHONPATH, see scripts/tts.sh and deploy/tts/Dockerfile); this
file only translates between Triton tensors and that core, and exports the model's own metrics on
Triton's metrics port.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

# The stub runs its interpreter isolated (PYTHONPATH is ignored), so the launcher passes the repository
# and the venv's site-packages in TTS_TRITON_PYTHONPATH. The GPU image installs into the system
# site-packages instead and leaves it unset.
for _entry in reversed(os.environ.get("TTS_TRITON_PYTHONPATH", "").split(os.pathsep)):
    if _entry and _entry not in sys.path:
        sys.path.insert(0, _entry)

import numpy as np  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402

from services.shared.settings import load_settings  # noqa: E402
from tts_triton.core import RequestError, SynthesisParams, TtsCore  # noqa: E402

log = logging.getLogger("tts_triton.model")

_ERROR_CODES = {
    "invalid_argument": "INVALID_ARG",
    "not_found": "NOT_FOUND",
    "unavailable": "UNAVAILABLE",
}
# How often the request's cancellation flag is read: it is a round trip to the Triton process.
_CANCEL_POLL_S = 0.01


def _string_input(request: Any, name: str) -> str:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return ""
    values = tensor.as_numpy().reshape(-1)
    if values.size != 1:
        raise RequestError("invalid_argument", f"{name} must hold exactly one value")
    value = values[0]
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise RequestError("invalid_argument", f"{name} is not valid UTF-8") from None
    return str(value)


def _scalar_input(request: Any, name: str) -> Any:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return None
    values = tensor.as_numpy().reshape(-1)
    if values.size != 1:
        raise RequestError("invalid_argument", f"{name} must hold exactly one value")
    return values[0].item()


def _params(request: Any) -> SynthesisParams:
    if pb_utils.get_input_tensor_by_name(request, "TEXT") is None:
        raise RequestError("invalid_argument", "TEXT is required")
    exaggeration = _scalar_input(request, "EXAGGERATION")
    cfg_weight = _scalar_input(request, "CFG_WEIGHT")
    seed = _scalar_input(request, "SEED")
    chunk_ms = _scalar_input(request, "CHUNK_DURATION_MS")
    return SynthesisParams(
        text=_string_input(request, "TEXT"),
        voice_id=_string_input(request, "VOICE_ID"),
        tenant_id=_string_input(request, "TENANT_ID"),
        exaggeration=None if exaggeration is None else float(exaggeration),
        cfg_weight=None if cfg_weight is None else float(cfg_weight),
        seed=None if seed is None else int(seed),
        chunk_duration_ms=None if chunk_ms is None else int(chunk_ms),
        engine=_string_input(request, "ENGINE"),
    )


def _throttled(check: Callable[[], bool]) -> Callable[[], bool]:
    """`check` at most every _CANCEL_POLL_S (the first time after one interval, so the first chunk
    is not delayed by a round trip); once true, stays true."""
    state = {"next": time.monotonic() + _CANCEL_POLL_S, "stopped": False}

    def should_stop() -> bool:
        if state["stopped"]:
            return True
        now = time.monotonic()
        if now >= state["next"]:
            state["next"] = now + _CANCEL_POLL_S
            state["stopped"] = bool(check())
        return bool(state["stopped"])

    return should_stop


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        if not pb_utils.using_decoupled_model_transaction_policy(config):
            raise pb_utils.TritonModelException("model `tts` must be configured decoupled")
        self.instance = args.get("model_instance_name", "tts")
        settings = load_settings().chatterbox_service
        if args.get("model_instance_kind") == "GPU" and settings.device != "cuda":
            settings = settings.model_copy(update={"device": "cuda"})
        self.core = TtsCore(settings)
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        self._slots = threading.BoundedSemaphore(int(params.get("max_concurrent_requests") or 8))
        self._lock = threading.Lock()
        self._ipc_lock = threading.Lock()
        self._threads: set[threading.Thread] = set()
        self._active = 0
        labels = {"model": "tts", "instance": self.instance, "engine": self.core.default_engine}
        counter, gauge = pb_utils.MetricFamily.COUNTER, pb_utils.MetricFamily.GAUGE
        # The families must outlive their metrics, so they are kept on the instance too.
        self.families = {
            "requests": pb_utils.MetricFamily("tts_requests_total", "Synthesis requests", counter),
            "errors": pb_utils.MetricFamily("tts_errors_total", "Requests refused or failed", counter),
            "cancelled": pb_utils.MetricFamily(
                "tts_cancelled_total", "Requests cancelled by the client while generating", counter
            ),
            "audio": pb_utils.MetricFamily(
                "tts_audio_seconds_total", "Seconds of audio generated (sent or not)", counter
            ),
            "busy": pb_utils.MetricFamily(
                "tts_active_requests", "Requests the instance is generating", gauge
            ),
        }
        self.m_requests = self.families["requests"].Metric(labels)
        self.m_errors = self.families["errors"].Metric(labels)
        self.m_cancelled = self.families["cancelled"].Metric(labels)
        self.m_audio = self.families["audio"].Metric(labels)
        self.m_busy = self.families["busy"].Metric(labels)
        log.info("tts instance %s ready with engine %s", self.instance, self.core.default_engine)

    def execute(self, requests: list[Any]) -> None:
        # Decoupled: each request gets its own thread and execute returns at once, so one instance
        # streams several utterances at a time (espeak-ng runs one process per utterance; Chatterbox
        # serialises on its own lock). The semaphore bounds how many generate at once per instance.
        for request in requests:
            thread = threading.Thread(target=self._run, args=(request,), name="tts-request", daemon=True)
            with self._lock:
                self._threads.add(thread)
            thread.start()

    def _run(self, request: Any) -> None:
        try:
            with self._slots:
                self._handle(request)
        finally:
            with self._lock:
                self._threads.discard(threading.current_thread())

    def _set_active(self, delta: int) -> None:
        with self._lock:
            self._active += delta
            active = self._active
        self._ipc(self.m_busy.set, active)

    def _ipc(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Calls into the backend (responses, cancellation checks, metrics) one thread at a time: the
        stub's shared-memory channel to Triton crashes the server when request threads use it at once."""
        with self._ipc_lock:
            return call(*args, **kwargs)

    def _handle(self, request: Any) -> None:
        sender = request.get_response_sender()
        final = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        self._set_active(1)
        samples = 0
        should_stop = _throttled(lambda: bool(self._ipc(sender.is_cancelled)))
        try:
            prepared = self.core.prepare(_params(request))
            info = json.dumps(prepared.info.__dict__)
            for chunk in self.core.stream(prepared, should_stop):
                samples += chunk.pcm.size
                outputs = [
                    pb_utils.Tensor("AUDIO", chunk.pcm),
                    pb_utils.Tensor("FINAL", np.array([chunk.final], dtype=np.bool_)),
                    pb_utils.Tensor("INFO", np.array([info.encode()], dtype=np.object_)),
                ]
                info = ""
                response = pb_utils.InferenceResponse(output_tensors=outputs)
                self._ipc(sender.send, response, flags=final if chunk.final else 0)
                if chunk.final:
                    return
            # The stream ended without a final chunk: the client cancelled.
            self._ipc(self.m_cancelled.increment, 1)
            error = pb_utils.TritonError("cancelled: by the client", pb_utils.TritonError.CANCELLED)
            self._ipc(sender.send, pb_utils.InferenceResponse(error=error), flags=final)
        except RequestError as exc:
            self._ipc(self.m_errors.increment, 1)
            # Triton's stream responses carry only the message, not the code: the message starts with the
            # kind ("invalid_argument: text is empty") so clients can classify it.
            code = getattr(pb_utils.TritonError, _ERROR_CODES[exc.kind])
            error = pb_utils.TritonError(f"{exc.kind}: {exc}", code)
            self._ipc(sender.send, pb_utils.InferenceResponse(error=error), flags=final)
        except Exception as exc:
            # Any failure ends this request with an error; the instance stays up for the next one.
            self._ipc(self.m_errors.increment, 1)
            log.exception("synthesis failed")
            error = pb_utils.TritonError(f"internal: synthesis failed: {exc}")
            self._ipc(sender.send, pb_utils.InferenceResponse(error=error), flags=final)
        finally:
            # Counters are updated once per request, not per chunk: each update is an IPC round trip.
            self._ipc(self.m_requests.increment, 1)
            if samples:
                self._ipc(self.m_audio.increment, samples / 24000)
            self._set_active(-1)

    def finalize(self) -> None:
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(timeout=10)
        self.core.close()
