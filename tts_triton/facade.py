"""HTTP facade of the TTS node (spec 3.5.4), an ASGI app served by uvicorn on `chatterbox_service.port`.

  POST /synthesize          whole utterance as a WAV file (spec 5.4.3: with options.streaming = true the
                            same WAV is sent chunked as it is made)
  POST /synthesize/stream   chunked audio: a streaming WAV (default) or raw PCM (Accept: audio/L16)
  GET  /voices              built-in voices and the tenant's cloned voices (?tenant_id=)
  GET  /voices/{id}
  POST /voices              register a cloned voice: JSON with base64 `reference_audio` (the gRPC-JSON form
                            of RegisterTtsVoiceRequest), or a raw audio/wav body with ?name=&tenant_id=
  GET  /health              200 when Triton has the model ready, else 503
  GET  /metrics             Prometheus: requests, time to first audio, real-time factor, errors, streams

The same process serves voice.v1.TtsService over gRPC on `grpc_port` (tts_triton/grpc_service.py).

Synthesis goes through Triton (the same client the agent uses); voices are read and written in the
registry directory the Triton model reads. Errors are RFC 9457 problem JSON; audio responses say what the
engine did in X-TTS-* headers (engine, whether exaggeration/cfg_weight were honoured, dropped tags).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import json
import logging
import math
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from services.agent.providers.tts import TritonTextToSpeech, TtsChunk, TtsError, TtsUnavailableError
from services.shared.grpc_server import GrpcServer
from services.shared.logging import configure_logging
from services.shared.settings import (
    ChatterboxServiceSettings,
    ServerSettings,
    TtsClientSettings,
    load_settings,
)
from tts_triton.auth import TenantRefusedError, TenantResolver
from tts_triton.grpc_service import tts_binding
from tts_triton.voices import VoiceError, VoiceRecord, VoiceRegistry
from tts_triton.wav import wav_header

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

SAMPLE_RATE = 24000
MAX_JSON_BODY = 64 * 1024
MAX_VOICE_BODY = 24 * 1024 * 1024  # 16 MiB of WAV, base64-encoded
_STATUS = {
    "invalid_argument": 400,
    "not_found": 404,
    "already_exists": 409,
    "cancelled": 499,
    "deadline_exceeded": 504,
    "unavailable": 503,
    "internal": 502,
}


class HttpError(Exception):
    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail


@dataclass(frozen=True)
class Metrics:
    requests: Counter
    errors: Counter
    ttfa: Histogram
    rtf: Histogram
    active_streams: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry) -> Metrics:
        return cls(
            requests=Counter("tts_http_requests", "HTTP requests", ["route", "status"], registry=registry),
            errors=Counter("tts_http_errors", "Failed requests by error code", ["code"], registry=registry),
            ttfa=Histogram(
                "tts_time_to_first_audio_seconds",
                "From request to the first audio chunk",
                registry=registry,
                buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1, 2, 5),
            ),
            rtf=Histogram(
                "tts_real_time_factor",
                "Synthesis time / audio duration, per completed utterance",
                registry=registry,
                buckets=(0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2),
            ),
            active_streams=Gauge("tts_active_streams", "Syntheses in progress", registry=registry),
        )


def voice_json(voice: VoiceRecord) -> dict[str, Any]:
    """A voice.v1.Voice in its JSON form."""
    created = (
        datetime.fromtimestamp(voice.created_at, UTC).isoformat().replace("+00:00", "Z")
        if voice.created_at
        else None
    )
    data: dict[str, Any] = {
        "id": voice.id,
        "tenantId": voice.tenant_id,
        "name": voice.name,
        "description": voice.description,
        "builtIn": voice.built_in,
        "defaults": {"exaggeration": voice.exaggeration, "cfgWeight": voice.cfg_weight},
        "referenceDurationSeconds": voice.reference_duration_seconds,
        "language": voice.language,
    }
    if created:
        data["createTime"] = created
    return data


def _field(body: dict[str, Any], *names: str) -> Any:
    """A JSON field under its proto name or its lowerCamelCase JSON name."""
    for name in names:
        if name in body:
            return body[name]
    return None


def _number(value: Any, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise HttpError(400, "invalid_argument", f"{name} must be a finite number")
    return float(value)


def _integer(value: Any, name: str) -> int | None:
    if value is None:
        return None
    # The gRPC-JSON mapping writes uint64 as a string.
    if isinstance(value, str) and value.isdigit():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise HttpError(400, "invalid_argument", f"{name} must be a non-negative integer")
    return value


@dataclass(frozen=True)
class SynthesisBody:
    text: str
    voice_id: str
    tenant_id: str
    exaggeration: float | None
    cfg_weight: float | None
    seed: int | None
    chunk_duration_ms: int | None
    streaming: bool


def parse_synthesis_body(raw: bytes) -> SynthesisBody:
    try:
        body = json.loads(raw or b"{}")
    except ValueError:
        raise HttpError(400, "invalid_argument", "body must be JSON") from None
    if not isinstance(body, dict):
        raise HttpError(400, "invalid_argument", "body must be a JSON object")
    text = body.get("text")
    if not isinstance(text, str):
        raise HttpError(400, "invalid_argument", "text is required and must be a string")
    options = body.get("options") or {}
    if not isinstance(options, dict):
        raise HttpError(400, "invalid_argument", "options must be an object")
    voice_id = _field(body, "voice_id", "voiceId") or ""
    tenant_id = _field(body, "tenant_id", "tenantId") or ""
    if not isinstance(voice_id, str) or not isinstance(tenant_id, str):
        raise HttpError(400, "invalid_argument", "voice_id and tenant_id must be strings")
    return SynthesisBody(
        text=text,
        voice_id=voice_id,
        tenant_id=tenant_id,
        exaggeration=_number(options.get("exaggeration"), "exaggeration"),
        cfg_weight=_number(_field(options, "cfg_weight", "cfgWeight"), "cfg_weight"),
        seed=_integer(options.get("seed"), "seed"),
        chunk_duration_ms=_integer(
            _field(options, "chunk_duration_ms", "chunkDurationMs"), "chunk_duration_ms"
        ),
        streaming=bool(options.get("streaming", False)),
    )


class TtsFacade:
    """The ASGI application. One per process; owns its Triton client and metrics registry."""

    def __init__(
        self,
        settings: ChatterboxServiceSettings,
        *,
        registry: CollectorRegistry | None = None,
        tenants: TenantResolver | None = None,
    ):
        self.settings = settings
        # Verifies callers' API keys / tokens (connects to PostgreSQL on the first request needing it).
        self.tenants = tenants or TenantResolver()
        self.voices = VoiceRegistry(
            settings.storage_path,
            default_exaggeration=settings.default_exaggeration,
            default_cfg_weight=settings.default_cfg_weight,
        )
        client_settings = TtsClientSettings(
            triton_url=settings.triton_url,
            triton_model=settings.triton_model,
            request_timeout_seconds=settings.request_timeout_seconds,
            chunk_duration_ms=settings.chunk_duration_ms,
            buffer_chunks=settings.buffer_chunks,
        )
        # engine="": the node's configured engine answers.
        self.tts = TritonTextToSpeech(client_settings, engine="")
        self.registry = registry or CollectorRegistry()
        self.metrics = Metrics.create(self.registry)
        self.extra_registries: list[CollectorRegistry] = []

    async def close(self) -> None:
        await self.tts.close()
        await self.tenants.close()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        method, path = scope["method"], scope["path"]
        route = path
        try:
            if path == "/synthesize" and method == "POST":
                await self._synthesize(scope, receive, send, force_stream=False)
            elif path == "/synthesize/stream" and method == "POST":
                await self._synthesize(scope, receive, send, force_stream=True)
            elif path == "/voices" and method == "GET":
                await self._list_voices(scope, send)
            elif path == "/voices" and method == "POST":
                await self._register_voice(scope, receive, send)
            elif path.startswith("/voices/") and method == "GET":
                route = "/voices/{id}"
                await self._get_voice(path.removeprefix("/voices/"), scope, send)
            elif path == "/health" and method == "GET":
                await self._health(send)
            elif path == "/metrics" and method == "GET":
                text = b"".join(generate_latest(r) for r in (self.registry, *self.extra_registries))
                await self._respond(send, 200, text, CONTENT_TYPE_LATEST)
            elif path in ("/synthesize", "/synthesize/stream", "/voices", "/health", "/metrics"):
                raise HttpError(405, "method_not_allowed", f"{method} is not allowed on {path}")
            else:
                route = "unknown"
                raise HttpError(404, "not_found", f"no route {path}")
            self.metrics.requests.labels(route, "ok").inc()
        except HttpError as exc:
            self.metrics.requests.labels(route, str(exc.status)).inc()
            self.metrics.errors.labels(exc.code).inc()
            await self._problem(send, exc)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # --- synthesis ------------------------------------------------------------------------------

    async def _tenant(self, scope: Scope, requested: str) -> str:
        """The tenant this request acts for: its credential's (tts_triton/auth.py). Only with
        http_authentication off (development, tests) is the requested tenant taken as given."""
        if not self.settings.http_authentication:
            return requested
        try:
            return await self.tenants.http_tenant(
                _header(scope, b"x-api-key") or None, _header(scope, b"authorization") or None, requested
            )
        except TenantRefusedError as exc:
            code = {401: "unauthenticated", 403: "permission_denied"}.get(exc.status, "unavailable")
            raise HttpError(exc.status, code, exc.message) from None

    async def _synthesize(self, scope: Scope, receive: Receive, send: Send, *, force_stream: bool) -> None:
        body = parse_synthesis_body(await _read_body(receive, MAX_JSON_BODY))
        tenant_id = await self._tenant(scope, body.tenant_id)
        streaming = force_stream or body.streaming
        raw_pcm = streaming and "audio/l16" in _header(scope, b"accept").lower()
        started = time.perf_counter()
        self.metrics.active_streams.inc()
        chunks = self.tts.stream(
            body.text,
            voice_id=body.voice_id,
            tenant_id=tenant_id,
            exaggeration=body.exaggeration,
            cfg_weight=body.cfg_weight,
            seed=body.seed,
            chunk_duration_ms=body.chunk_duration_ms,
        )
        try:
            # The first chunk decides the status: errors in the request surface before any header is sent.
            first = await _first(chunks)
            self.metrics.ttfa.observe(time.perf_counter() - started)
            headers = _info_headers(first)
            if not streaming:
                pcm = [first.pcm]
                async for chunk in chunks:
                    pcm.append(chunk.pcm)
                data = b"".join(pcm)
                self._observe_rtf(started, len(data) // 2)
                await self._respond(
                    send, 200, wav_header(SAMPLE_RATE, len(data)) + data, "audio/wav", headers
                )
                return
            content_type = f"audio/L16;rate={SAMPLE_RATE};channels=1" if raw_pcm else "audio/wav"
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", content_type.encode()), *headers],
                }
            )
            await send(
                {
                    "type": "http.response.body",
                    "body": (b"" if raw_pcm else wav_header(SAMPLE_RATE, None)) + first.pcm,
                    "more_body": True,
                }
            )
            samples = first.samples
            disconnected = asyncio.Event()
            watcher = asyncio.create_task(_watch_disconnect(receive, disconnected))
            try:
                async for chunk in chunks:
                    if disconnected.is_set():
                        # The caller hung up: stop here; closing `chunks` cancels generation in Triton.
                        self.metrics.errors.labels("cancelled").inc()
                        return
                    samples += chunk.samples
                    # uvicorn's send waits while the client is not reading: backpressure reaches Triton.
                    await send({"type": "http.response.body", "body": chunk.pcm, "more_body": True})
            finally:
                watcher.cancel()
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            self._observe_rtf(started, samples)
        except TtsError as exc:
            status = _STATUS.get(exc.code, 502)
            raise HttpError(status, exc.code, exc.message) from None
        finally:
            # Closing the generator cancels the Triton stream when the client went away mid-utterance.
            await chunks.aclose()
            self.metrics.active_streams.dec()

    def _observe_rtf(self, started: float, samples: int) -> None:
        if samples:
            self.metrics.rtf.observe((time.perf_counter() - started) / (samples / SAMPLE_RATE))

    # --- voices ---------------------------------------------------------------------------------

    async def _list_voices(self, scope: Scope, send: Send) -> None:
        tenant = await self._tenant(scope, _query(scope).get("tenant_id", ""))
        voices = await asyncio.to_thread(self.voices.list, tenant)
        await self._json(send, 200, {"voices": [voice_json(v) for v in voices]})

    async def _get_voice(self, voice_id: str, scope: Scope, send: Send) -> None:
        tenant = await self._tenant(scope, _query(scope).get("tenant_id", ""))
        try:
            voice = await asyncio.to_thread(self.voices.get, urllib.parse.unquote(voice_id), tenant)
        except VoiceError as exc:
            raise HttpError(_STATUS[exc.kind], exc.kind, str(exc)) from None
        await self._json(send, 200, {"voice": voice_json(voice)})

    async def _register_voice(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw = await _read_body(receive, MAX_VOICE_BODY)
        content_type = _header(scope, b"content-type").lower()
        query = _query(scope)
        defaults: dict[str, Any] = {}
        if content_type.startswith("audio/") or content_type.startswith("application/octet-stream"):
            fields: dict[str, Any] = dict(query)
            audio = raw
            for key in ("exaggeration", "cfg_weight"):
                if key in query:
                    try:
                        defaults[key] = float(query[key])
                    except ValueError:
                        raise HttpError(400, "invalid_argument", f"{key} must be a number") from None
        else:
            try:
                fields = json.loads(raw or b"{}")
            except ValueError:
                raise HttpError(400, "invalid_argument", "body must be JSON or audio/wav") from None
            if not isinstance(fields, dict):
                raise HttpError(400, "invalid_argument", "body must be a JSON object")
            encoded = _field(fields, "reference_audio", "referenceAudio")
            if not isinstance(encoded, str) or not encoded:
                raise HttpError(400, "invalid_argument", "reference_audio (base64 WAV) is required")
            try:
                audio = base64.b64decode(encoded, validate=True)
            except (binascii.Error, ValueError):
                raise HttpError(400, "invalid_argument", "reference_audio is not valid base64") from None
            given = fields.get("defaults") or {}
            if not isinstance(given, dict):
                raise HttpError(400, "invalid_argument", "defaults must be an object")
            defaults = {
                "exaggeration": _number(given.get("exaggeration"), "exaggeration"),
                "cfg_weight": _number(_field(given, "cfg_weight", "cfgWeight"), "cfg_weight"),
            }
        name = fields.get("name")
        if not isinstance(name, str):
            raise HttpError(400, "invalid_argument", "name is required")
        tenant_id = await self._tenant(scope, str(_field(fields, "tenant_id", "tenantId") or ""))
        try:
            voice = await asyncio.to_thread(
                self.voices.register,
                name=name,
                reference_audio=audio,
                tenant_id=tenant_id,
                voice_id=str(_field(fields, "voice_id", "voiceId") or ""),
                description=str(fields.get("description") or ""),
                language=str(fields.get("language") or "en-US"),
                exaggeration=defaults.get("exaggeration"),
                cfg_weight=defaults.get("cfg_weight"),
            )
        except VoiceError as exc:
            raise HttpError(_STATUS[exc.kind], exc.kind, str(exc)) from None
        await self._json(send, 201, {"voice": voice_json(voice)})

    async def _health(self, send: Send) -> None:
        ready = await self.tts.ready()
        body = {
            "status": "ok" if ready else "unavailable",
            "triton": self.settings.triton_url,
            "model_ready": ready,
        }
        await self._json(send, 200 if ready else 503, body)

    # --- responses ------------------------------------------------------------------------------

    async def _respond(
        self,
        send: Send,
        status: int,
        body: bytes,
        content_type: str,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", content_type.encode()),
                    (b"content-length", str(len(body)).encode()),
                    *(headers or []),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def _json(self, send: Send, status: int, payload: object) -> None:
        await self._respond(send, status, json.dumps(payload).encode(), "application/json")

    async def _problem(self, send: Send, exc: HttpError) -> None:
        try:
            title = HTTPStatus(exc.status).phrase
        except ValueError:
            title = "Client Closed Request" if exc.status == 499 else "Error"
        problem = {
            "type": "about:blank",
            "title": title,
            "status": exc.status,
            "detail": exc.detail,
            "code": exc.code,
        }
        await self._respond(send, exc.status, json.dumps(problem).encode(), "application/problem+json")


async def _first(chunks: AsyncIterator[TtsChunk]) -> TtsChunk:
    try:
        return await anext(chunks)
    except StopAsyncIteration:
        raise TtsUnavailableError("internal", "the engine produced no audio") from None


def _info_headers(first: TtsChunk) -> list[tuple[bytes, bytes]]:
    info = first.info
    if info is None:
        return []
    return [
        (b"x-tts-engine", info.engine.encode()),
        (b"x-tts-sample-rate", str(info.sample_rate).encode()),
        (b"x-tts-honours-expressiveness", b"true" if info.honours_expressiveness else b"false"),
        (b"x-tts-dropped-tags", ",".join(info.dropped_tags).encode()),
    ]


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return ""


def _query(scope: Scope) -> dict[str, str]:
    return dict(urllib.parse.parse_qsl(bytes(scope.get("query_string", b"")).decode()))


async def _watch_disconnect(receive: Receive, disconnected: asyncio.Event) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    disconnected.set()


async def _read_body(receive: Receive, limit: int) -> bytes:
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise HttpError(499, "cancelled", "client disconnected")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise HttpError(413, "invalid_argument", f"body is larger than {limit} bytes")
        parts.append(chunk)
        if not message.get("more_body", False):
            return b"".join(parts)


async def serve(settings: ChatterboxServiceSettings) -> None:
    """The facade's process: HTTP on `port` and voice.v1.TtsService (gRPC) on `grpc_port`."""
    import uvicorn  # noqa: PLC0415 - only the server process needs it

    app = TtsFacade(settings)
    grpc_server = GrpcServer(
        "tts",
        ServerSettings(host=settings.host, grpc_port=settings.grpc_port, metrics_port=0),
        [tts_binding(app.tts, app.voices, app.tenants)],
        serve_metrics_http=False,
    )
    # One /metrics for the node: the facade's own series and the gRPC server's.
    app.extra_registries.append(grpc_server.registry)
    await grpc_server.start()
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_config=None, access_log=False)
    try:
        await uvicorn.Server(config).serve()
    finally:
        await grpc_server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description="HTTP facade of the TTS node (spec 3.5.4)")
    parser.add_argument("--port", type=int, default=None)
    args = parser.parse_args()
    settings = load_settings()
    configure_logging("tts-facade", level=settings.log_level, fmt=settings.log_format)
    node = settings.chatterbox_service
    if args.port is not None:
        node = node.model_copy(update={"port": args.port})
    asyncio.run(serve(node))


if __name__ == "__main__":
    main()
