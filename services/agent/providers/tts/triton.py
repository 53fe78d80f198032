"""The agent's TextToSpeech adapter: streams PCM16 24 kHz from the Triton model `tts` over gRPC.

- One `tritonclient.grpc.aio` client (one HTTP/2 connection) per adapter, reused by every utterance;
  each utterance is its own bidirectional stream on it.
- Per-request timeout: the stream's gRPC deadline; Triton cancels the request server-side when it passes.
- Cancellation: closing the iterator (barge-in) or cancelling the task that reads it cancels the gRPC
  stream, and the model stops generating within one chunk.
- Backpressure: a reader task prefetches at most `buffer_chunks` chunks; while the consumer is behind it
  stops reading, and gRPC flow control holds the server back.
- Errors are `TtsRequestError` (the caller's input: not a provider failure, do not trip a breaker) or
  `TtsUnavailableError` (server down, timeout, engine failure: count it, fall back).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import grpc
import numpy as np
import tritonclient.grpc.aio as triton_aio
from tritonclient.grpc import InferInput, InferRequestedOutput
from tritonclient.utils import InferenceServerException

from services.shared.settings import TtsClientSettings

SAMPLE_RATE = 24000
_ENGINES = {
    ("espeak", "turbo"): "espeak-ng",
    ("espeak", "original"): "espeak-ng",
    ("chatterbox", "turbo"): "chatterbox-turbo",
    ("chatterbox", "original"): "chatterbox",
}
_KIND_RE = re.compile(r"^(invalid_argument|not_found|unavailable|cancelled|internal): ")

ErrorCode = Literal[
    "invalid_argument", "not_found", "unavailable", "deadline_exceeded", "cancelled", "internal"
]


class TtsError(Exception):
    """A synthesis that did not complete. `retryable`: another attempt (or provider) may succeed."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code: ErrorCode = code
        self.message = message

    @property
    def retryable(self) -> bool:
        return self.code in ("unavailable", "deadline_exceeded", "internal")


class TtsRequestError(TtsError):
    """The request itself is wrong (empty text, unknown voice, out-of-range option): fix the input."""


class TtsUnavailableError(TtsError):
    """The TTS node failed us (down, overloaded, timed out, engine error): a provider failure."""


def _error_from_message(message: str) -> TtsError:
    match = _KIND_RE.match(message)
    kind = match.group(1) if match else "internal"
    detail = message[match.end() :] if match else message
    if kind in ("invalid_argument", "not_found"):
        return TtsRequestError(kind, detail)  # type: ignore[arg-type]
    return TtsUnavailableError(kind, detail)  # type: ignore[arg-type]


def _error_from_rpc(exc: grpc.aio.AioRpcError) -> TtsError:
    code = exc.code()
    detail = exc.details() or code.name
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return TtsUnavailableError("deadline_exceeded", detail)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return TtsRequestError("invalid_argument", detail)
    if code == grpc.StatusCode.NOT_FOUND:
        return TtsRequestError("not_found", detail)
    return TtsUnavailableError("unavailable", f"{code.name}: {detail}")


@dataclass(frozen=True)
class SynthesisInfo:
    """What the engine did with the request (mirrors voice.v1.SynthesisInfo)."""

    engine: str
    sample_rate: int
    honours_expressiveness: bool
    dropped_tags: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class TtsChunk:
    pcm: bytes  # PCM16 little-endian mono at SAMPLE_RATE
    sequence: int
    final: bool
    info: SynthesisInfo | None = None  # on the first chunk only

    @property
    def samples(self) -> int:
        return len(self.pcm) // 2


class VoiceLike(Protocol):
    """What the adapter reads from the agent's voice selection (services.agent.ports.VoiceSelection)."""

    @property
    def voice_id(self) -> str: ...
    @property
    def exaggeration(self) -> float | None: ...
    @property
    def cfg_weight(self) -> float | None: ...


def _input(name: str, value: Any, datatype: str) -> InferInput:
    if datatype == "BYTES":
        array = np.array([str(value).encode("utf-8")], dtype=np.object_)
    else:
        array = np.array(
            [value], dtype={"FP32": np.float32, "UINT64": np.uint64, "UINT32": np.uint32}[datatype]
        )
    tensor = InferInput(name, [1], datatype)
    tensor.set_data_from_numpy(array)
    return tensor


_DONE = object()


class TritonTextToSpeech:
    """TextToSpeech port adapter over Triton gRPC. Create one per process and share it across calls."""

    sample_rate = SAMPLE_RATE

    def __init__(self, settings: TtsClientSettings | None = None, *, engine: str | None = None) -> None:
        self.settings = settings or TtsClientSettings()
        # Empty engine = whatever the TTS node is configured with.
        self.engine = (
            engine if engine is not None else _ENGINES[(self.settings.provider, self.settings.model)]
        )
        self.name = f"triton:{self.engine or 'default'}"
        self._client: triton_aio.InferenceServerClient | None = None

    def _connection(self) -> triton_aio.InferenceServerClient:
        # Created on first use so it binds to the running event loop.
        if self._client is None:
            self._client = triton_aio.InferenceServerClient(self.settings.triton_url)
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()

    async def ready(self) -> bool:
        """True when the server is up and the model loaded (for health checks and breakers)."""
        try:
            return bool(await self._connection().is_model_ready(self.settings.triton_model))
        except (InferenceServerException, grpc.aio.AioRpcError):
            return False

    def synthesize(self, text: str, voice: VoiceLike, *, tenant_id: str = "") -> AsyncIterator[bytes]:
        """The port method: PCM16 chunks; closing the iterator cancels generation server-side."""
        return self._pcm_only(
            self.stream(
                text,
                voice_id=voice.voice_id,
                exaggeration=voice.exaggeration,
                cfg_weight=voice.cfg_weight,
                # Cloned voices are spoken only for their tenant (TenantVoice carries it).
                tenant_id=tenant_id or str(getattr(voice, "tenant_id", "")),
            )
        )

    async def _pcm_only(self, chunks: AsyncGenerator[TtsChunk, None]) -> AsyncIterator[bytes]:
        async with contextlib.aclosing(chunks):
            async for chunk in chunks:
                if chunk.pcm:
                    yield chunk.pcm

    async def stream(
        self,
        text: str,
        *,
        voice_id: str = "",
        tenant_id: str = "",
        exaggeration: float | None = None,
        cfg_weight: float | None = None,
        seed: int | None = None,
        chunk_duration_ms: int | None = None,
        timeout_s: float | None = None,
    ) -> AsyncGenerator[TtsChunk, None]:
        """Chunks in order; the last has `final` set. Raises TtsError subclasses."""
        for name, value in (("exaggeration", exaggeration), ("cfg_weight", cfg_weight)):
            if value is not None and not math.isfinite(value):
                raise TtsRequestError("invalid_argument", f"{name} must be a finite number")
        inputs = [_input("TEXT", text, "BYTES")]
        voice = voice_id or self.settings.default_voice_id
        inputs.append(_input("VOICE_ID", voice, "BYTES"))
        if tenant_id:
            inputs.append(_input("TENANT_ID", tenant_id, "BYTES"))
        if self.engine:
            inputs.append(_input("ENGINE", self.engine, "BYTES"))
        if exaggeration is not None:
            inputs.append(_input("EXAGGERATION", exaggeration, "FP32"))
        if cfg_weight is not None:
            inputs.append(_input("CFG_WEIGHT", cfg_weight, "FP32"))
        if seed is not None:
            inputs.append(_input("SEED", seed, "UINT64"))
        inputs.append(
            _input("CHUNK_DURATION_MS", chunk_duration_ms or self.settings.chunk_duration_ms, "UINT32")
        )
        request = {
            "model_name": self.settings.triton_model,
            "inputs": inputs,
            "outputs": [InferRequestedOutput(n) for n in ("AUDIO", "FINAL", "INFO")],
        }

        async def requests() -> AsyncIterator[dict[str, Any]]:
            yield request

        deadline = timeout_s if timeout_s is not None else self.settings.request_timeout_seconds
        try:
            call = self._connection().stream_infer(requests(), stream_timeout=deadline)
        except InferenceServerException as exc:
            raise TtsUnavailableError("unavailable", str(exc)) from None
        queue: asyncio.Queue[object] = asyncio.Queue(maxsize=self.settings.buffer_chunks)
        reader = asyncio.create_task(self._read(call, queue), name="tts-stream-reader")
        try:
            sequence = 0
            while True:
                item = await queue.get()
                if item is _DONE:
                    return
                if isinstance(item, BaseException):
                    raise item
                assert isinstance(item, TtsChunk)
                yield TtsChunk(item.pcm, sequence, item.final, item.info)
                sequence += 1
                if item.final:
                    return
        finally:
            # Runs on completion, on error, on aclose() (barge-in) and on task cancellation alike.
            reader.cancel()
            call.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    @staticmethod
    async def _read(call: Any, queue: asyncio.Queue[object]) -> None:
        try:
            async for result, error in call:
                if error is not None:
                    await queue.put(_error_from_message(str(error.message())))
                    return
                final = bool(result.as_numpy("FINAL")[0])
                info_raw = result.as_numpy("INFO")[0]
                info = SynthesisInfo(**json.loads(info_raw)) if info_raw else None
                pcm = np.ascontiguousarray(result.as_numpy("AUDIO"), dtype="<i2").tobytes()
                await queue.put(TtsChunk(pcm, 0, final, info))
                if final:
                    return
            await queue.put(TtsUnavailableError("unavailable", "stream ended without a final chunk"))
        except grpc.aio.AioRpcError as exc:
            await queue.put(_error_from_rpc(exc))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a malformed response must not leave the consumer waiting forever
            await queue.put(TtsUnavailableError("internal", f"bad response from Triton: {exc}"))

    async def synthesize_all(self, text: str, **options: Any) -> tuple[bytes, SynthesisInfo | None]:
        """The whole utterance as one PCM16 buffer (for WAV responses), with the engine's info."""
        parts: list[bytes] = []
        info: SynthesisInfo | None = None
        async for chunk in self.stream(text, **options):
            info = info or chunk.info
            parts.append(chunk.pcm)
        return b"".join(parts), info
