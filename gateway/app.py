"""The REST gateway as an ASGI application (served by uvicorn; see gateway/__main__.py).

Per request, in order (spec 3.1.3): request id -> CORS -> size limit -> route -> auth (X-API-Key or
Bearer JWT) -> per-tenant rate limit -> transcode and call the control plane with the caller's signed
tenant context -> JSON (or NDJSON / SSE for server streams) -> audit row for mutating calls -> metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

import asyncpg
import grpc
import redis.asyncio as aioredis
from google.protobuf import json_format
from google.protobuf.message import Message
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

from gateway.docs import DOCS_HTML
from gateway.openapi import build_openapi
from gateway.ratelimit import RateLimiter, RateLimitResult
from gateway.routes import Route, Router, load_routes
from gateway.transcode import (
    HTTP_CODE_KEY,
    HTTP_STATUS,
    TranscodeError,
    bad_request_body,
    build_request,
    dumps,
    error_body,
    parse_grpc_timeout,
    response_dict,
    rpc_error_body,
)
from services.control.auth import RESERVED_PREFIX, InternalAuth, Principal, internal_auth, resolve_secret
from services.control.authn import AuthError, CredentialVerifier, FailedAuthLimiter, TooManyFailuresError
from services.control.state import blocking_redis
from services.shared.dependency_health import check_all
from services.shared.grpc_channels import open_channel
from services.shared.logging import log_context
from services.shared.settings import Settings, load_settings
from voice.v1 import system_pb2, system_pb2_grpc

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_METADATA_HEADER_PREFIX = "grpc-metadata-"
_EXPOSED = "X-Request-ID, X-RateLimit-Limit, X-RateLimit-Remaining, X-RateLimit-Reset, Retry-After"
MIN_DEADLINE_SECONDS = 0.001
PUBLIC_PATHS = ("/health", "/metrics", "/openapi.json", "/docs")
CHANNEL_OPTIONS = (
    ("grpc.keepalive_time_ms", 20_000),
    # Answers come from the control plane only; call recordings (HttpBody) are the large ones.
    ("grpc.max_receive_message_length", 256 * 1024 * 1024),
    ("grpc.max_send_message_length", 8 * 1024 * 1024),
)
HTTP_BODY = "google.api.HttpBody"


@dataclass
class Request:
    method: str
    path: str
    raw_path: str
    query: str
    headers: dict[str, str]
    client_ip: str
    request_id: str


class HttpError(Exception):
    def __init__(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        super().__init__(body.get("message", ""))
        self.status = status
        self.body = body
        self.headers = headers or {}


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "http_requests_total", "HTTP requests answered", ["method", "route", "code"], registry=registry
        )
        self.duration = Histogram(
            "http_request_duration_seconds",
            "Time to answer an HTTP request",
            ["method", "route"],
            registry=registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )


class Gateway:
    """The ASGI app. Connections are opened in the lifespan startup (inside uvicorn's event loop)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.cfg = settings.api_gateway
        self.routes = load_routes(self.cfg.excluded_services)
        self.router = Router(self.routes)
        self.openapi = dumps(build_openapi(self.routes))
        self.registry = CollectorRegistry()
        self.metrics = GatewayMetrics(self.registry)
        self.internal: InternalAuth = internal_auth(settings)
        self.jwt_secret = resolve_secret(settings, "jwt_secret")
        self.allowed_origins = set(self.cfg.cors.allowed_origins)
        self._channel: grpc.aio.Channel | None = None
        self._pool: asyncpg.Pool | None = None
        self._redis: aioredis.Redis | None = None
        self._auth: CredentialVerifier | None = None
        self._limiter: RateLimiter | None = None
        self._calls: dict[str, Any] = {}

    # ---- lifecycle -------------------------------------------------------------------------------
    @property
    def control_target(self) -> str:
        c = self.settings.control
        return self.cfg.control_target or f"{c.host}:{c.grpc_port}"

    async def startup(self) -> None:
        # The gateway is the gateway whatever process hosts it (its certificate lets it assert tenants).
        self._channel = open_channel(
            self.settings, self.control_target, options=CHANNEL_OPTIONS, identity="gateway", expect="control"
        )
        self._pool = await asyncpg.create_pool(
            self.settings.database_url, min_size=1, max_size=self.cfg.database_pool_size, command_timeout=10
        )
        self._redis = blocking_redis(self.settings)
        self._auth = CredentialVerifier(self._pool, self.jwt_secret, self.cfg.auth_cache_seconds)
        self._limiter = RateLimiter(
            self._redis, self.cfg.rate_limiting.default_limit, self.cfg.rate_limiting.burst_limit
        )
        for route in self.routes:
            if route.grpc_path in self._calls:
                continue
            factory = self._channel.unary_stream if route.server_streaming else self._channel.unary_unary
            self._calls[route.grpc_path] = factory(
                route.grpc_path,
                request_serializer=route.request_class.SerializeToString,
                response_deserializer=route.response_class.FromString,
            )
        log.info(
            "gateway started",
            extra={"data": {"routes": len(self.routes), "control": self.control_target}},
        )

    async def shutdown(self) -> None:
        if self._channel is not None:
            await self._channel.close()
        if self._redis is not None:
            await self._redis.aclose()
        if self._pool is not None:
            await self._pool.close()

    # ---- ASGI ------------------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        started = time.perf_counter()
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        rid = headers.get("x-request-id", "")
        request = Request(
            method=scope["method"],
            path=scope["path"],
            raw_path=(scope.get("raw_path") or scope["path"].encode()).decode("latin-1"),
            query=scope.get("query_string", b"").decode("latin-1"),
            headers=headers,
            client_ip=(scope.get("client") or ("", 0))[0],
            request_id=rid if _REQUEST_ID.match(rid) else uuid.uuid4().hex,
        )
        label = "unmatched"
        status = 500
        with log_context(trace_id=request.request_id):
            try:
                label, status = await self._handle(request, receive, send)
            except Exception:
                log.exception("unhandled gateway error", extra={"data": {"path": request.path}})
                status = 500
                with contextlib.suppress(Exception):
                    await self._send_json(
                        send, request, 500, error_body(grpc.StatusCode.INTERNAL, "internal error")
                    )
        self.metrics.requests.labels(request.method, label, str(status)).inc()
        self.metrics.duration.labels(request.method, label).observe(time.perf_counter() - started)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": f"{type(exc).__name__}: {exc}"})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # ---- responses -------------------------------------------------------------------------------
    def _base_headers(self, request: Request) -> list[tuple[bytes, bytes]]:
        out = [(b"x-request-id", request.request_id.encode())]
        origin = request.headers.get("origin")
        if origin and self._origin_allowed(origin):
            out += [
                (b"access-control-allow-origin", origin.encode("latin-1")),
                (b"access-control-expose-headers", _EXPOSED.encode()),
                (b"vary", b"Origin"),
            ]
        return out

    def _origin_allowed(self, origin: str) -> bool:
        return origin in self.allowed_origins or "*" in self.allowed_origins

    async def _send(
        self,
        send: Send,
        request: Request,
        status: int,
        body: bytes,
        *,
        content_type: bytes,
        extra: dict[str, str] | None = None,
    ) -> None:
        headers = self._base_headers(request)
        headers.append((b"content-type", content_type))
        headers.append((b"content-length", str(len(body)).encode()))
        for k, v in (extra or {}).items():
            headers.append((k.lower().encode(), v.encode("latin-1")))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _send_json(
        self, send: Send, request: Request, status: int, data: Any, extra: dict[str, str] | None = None
    ) -> None:
        await self._send(send, request, status, dumps(data), content_type=b"application/json", extra=extra)

    # ---- request handling ------------------------------------------------------------------------
    async def _handle(self, request: Request, receive: Receive, send: Send) -> tuple[str, int]:
        if request.method == "OPTIONS" and "access-control-request-method" in request.headers:
            return "preflight", await self._preflight(request, send)
        if request.method in ("GET", "HEAD") and request.path in PUBLIC_PATHS:
            return request.path, await self._public(request, send)

        matched = self.router.match(request.method, request.raw_path)
        if matched is None:
            allowed = self.router.allowed_methods(request.raw_path)
            if allowed:
                await self._send_json(
                    send,
                    request,
                    405,
                    error_body(grpc.StatusCode.UNIMPLEMENTED, "method not allowed"),
                    {"Allow": ", ".join(allowed)},
                )
                return "unmatched", 405
            await self._send_json(send, request, 404, error_body(grpc.StatusCode.NOT_FOUND, "no such route"))
            return "unmatched", 404
        route, path_values = matched
        principal: Principal | None = None
        status = 500
        grpc_code = ""
        try:
            body = await self._read_body(request, receive)
            principal = await self._authenticate(request)
            with log_context(tenant_id=principal.tenant_id):
                limit = await self._rate_limit(principal)
                try:
                    status, grpc_code = await self._dispatch(
                        request, route, path_values, body, principal=principal, limit=limit, send=send
                    )
                finally:
                    if limit is not None and self._limiter is not None:
                        await self._limiter.release(principal.tenant_id)
        except HttpError as err:
            status = err.status
            grpc_code = _code_name(err.body.get("code", 2))
            await self._send_json(send, request, err.status, err.body, err.headers)
        if route.mutating:
            await self._audit(request, route, principal, status, grpc_code)
        return route.label, status

    async def _read_body(self, request: Request, receive: Receive) -> bytes:
        limit = self.cfg.max_body_bytes
        too_large = HttpError(
            413,
            error_body(grpc.StatusCode.RESOURCE_EXHAUSTED, f"request body larger than {limit} bytes"),
        )
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise too_large
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise HttpError(499, error_body(grpc.StatusCode.CANCELLED, "client disconnected"))
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise too_large
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _authenticate(self, request: Request) -> Principal:
        """The caller's principal. A credential known valid from the cache costs no I/O; any other goes
        through the failed-authentication limit of its client address first, so a flood of missing or
        random credentials is answered 429 without database work."""
        assert self._auth is not None and self._redis is not None
        api_key = request.headers.get(self.cfg.authentication.api_key_header.lower())
        authorization = request.headers.get("authorization")
        try:
            cached = self._auth.cached(api_key, authorization)
        except AuthError:
            cached = None
        if cached is not None:
            return cached
        address = request.client_ip or "unknown"
        failures = FailedAuthLimiter(self._redis, self.cfg.rate_limiting.failed_auth_limit)
        try:
            await failures.check(address)
        except TooManyFailuresError as exc:
            raise HttpError(
                429,
                error_body(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc)),
                {"Retry-After": str(exc.retry_after)},
            ) from None
        try:
            return await self._auth.authenticate(api_key, authorization)
        except AuthError as exc:
            await failures.record(address)
            raise HttpError(
                401,
                error_body(grpc.StatusCode.UNAUTHENTICATED, str(exc)),
                {"WWW-Authenticate": 'Bearer realm="voice"'},
            ) from None

    async def _rate_limit(self, principal: Principal) -> RateLimitResult | None:
        assert self._limiter is not None
        result = await self._limiter.acquire(principal.tenant_id)
        if result is None:  # Redis unreachable: fail open, the control plane still enforces its limits
            return None
        if not result.allowed:
            raise HttpError(
                429,
                error_body(grpc.StatusCode.RESOURCE_EXHAUSTED, result.reason),
                {**result.headers(), "Retry-After": str(result.retry_after)},
            )
        return result

    def _metadata(self, request: Request, principal: Principal) -> list[tuple[str, str]]:
        md = self.internal.metadata(principal)
        md.append(("x-request-id", request.request_id))
        if request.client_ip:
            md.append(("x-forwarded-for", request.client_ip))
        for key, value in request.headers.items():
            # grpc-gateway's convention: Grpc-Metadata-Foo: bar -> foo: bar. Never our reserved keys.
            if key.startswith(_METADATA_HEADER_PREFIX):
                name = key[len(_METADATA_HEADER_PREFIX) :]
                if name and not name.startswith(RESERVED_PREFIX) and not name.startswith("grpc-"):
                    md.append((name, value))
        return md

    def _timeout(self, request: Request) -> float:
        header = request.headers.get("grpc-timeout")
        if header:
            parsed = parse_grpc_timeout(header)
            if parsed is None:
                raise HttpError(
                    400, error_body(grpc.StatusCode.INVALID_ARGUMENT, "malformed Grpc-Timeout header")
                )
            cap = self.cfg.max_request_timeout_seconds
            if parsed > cap:
                raise HttpError(
                    400,
                    error_body(
                        grpc.StatusCode.INVALID_ARGUMENT, f"Grpc-Timeout must be at most {cap:g} seconds"
                    ),
                )
            return parsed
        return self.cfg.request_timeout_seconds

    async def _dispatch(
        self,
        request: Request,
        route: Route,
        path_values: Any,
        body: bytes,
        *,
        principal: Principal,
        limit: RateLimitResult | None,
        send: Send,
    ) -> tuple[int, str]:
        try:
            message = build_request(route, path_values, request.query, body, request.method)
        except TranscodeError as err:
            raise HttpError(400, bad_request_body(err)) from None
        extra = limit.headers() if limit is not None else {}
        timeout = self._timeout(request)
        if timeout < MIN_DEADLINE_SECONDS:
            # gRPC rounds sub-millisecond deadlines away; such a deadline has passed before we can call.
            raise HttpError(504, error_body(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded"), extra)
        call = self._calls[route.grpc_path](
            message, metadata=self._metadata(request, principal), timeout=timeout
        )
        if route.server_streaming:
            return await self._stream(request, route, call, send, extra)
        try:
            response: Message = await call
        except grpc.aio.AioRpcError as exc:
            code, details = rpc_error_body(exc)
            raise HttpError(code, details, extra) from None
        status = 200
        for key, value in await call.initial_metadata() or ():
            if key == HTTP_CODE_KEY and isinstance(value, str) and value.isdigit():
                status = int(value)
        if route.method.full_name == "voice.v1.ApiKeyService.RevokeApiKey" and self._auth is not None:
            self._auth.forget_key(getattr(message, "id", ""))
        if response.DESCRIPTOR.full_name == HTTP_BODY:
            # google.api.HttpBody: the body is the payload itself (a recording's WAV), not JSON.
            content_type = getattr(response, "content_type", "") or "application/octet-stream"
            data: bytes = getattr(response, "data", b"")
            await self._send(send, request, status, data, content_type=content_type.encode(), extra=extra)
            return status, "OK"
        await self._send_json(send, request, status, response_dict(route, response), extra)
        return status, "OK"

    async def _stream(
        self, request: Request, route: Route, call: Any, send: Send, extra: dict[str, str]
    ) -> tuple[int, str]:
        """Server streaming as NDJSON ({"result": ...} per message) or SSE (`Accept: text/event-stream`);
        an error after the first message arrives in-band ({"error": ...}), as grpc-gateway does."""
        sse = "text/event-stream" in request.headers.get("accept", "")
        started = False
        code = "OK"

        async def start(status: int) -> None:
            headers = self._base_headers(request)
            ctype = b"text/event-stream" if sse else b"application/x-ndjson"
            headers.append((b"content-type", ctype))
            headers.extend((k.lower().encode(), v.encode()) for k, v in extra.items())
            await send({"type": "http.response.start", "status": status, "headers": headers})

        def frame(kind: str, data: Any) -> bytes:
            if sse:
                event = b"event: error\n" if kind == "error" else b""
                return event + b"data: " + dumps(data) + b"\n\n"
            return dumps({kind: data}) + b"\n"

        try:
            async for message in call:
                if not started:
                    await start(200)
                    started = True
                chunk = frame("result", response_dict(route, message))
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except grpc.aio.AioRpcError as exc:
            status, error = rpc_error_body(exc)
            code = exc.code().name
            if not started:
                raise HttpError(status, error, extra) from None
            await send({"type": "http.response.body", "body": frame("error", error), "more_body": True})
        if not started:
            await start(200)
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return 200, code

    async def _preflight(self, request: Request, send: Send) -> int:
        origin = request.headers.get("origin", "")
        method = request.headers.get("access-control-request-method", "")
        cors = self.cfg.cors
        if not self._origin_allowed(origin) or method not in cors.allowed_methods:
            await self._send_json(
                send, request, 403, error_body(grpc.StatusCode.PERMISSION_DENIED, "CORS request not allowed")
            )
            return 403
        allowed_headers = {h.lower() for h in cors.allowed_headers}
        asked = [
            h.strip()
            for h in request.headers.get("access-control-request-headers", "").split(",")
            if h.strip()
        ]
        if any(h.lower() not in allowed_headers for h in asked):
            await self._send_json(
                send, request, 403, error_body(grpc.StatusCode.PERMISSION_DENIED, "CORS header not allowed")
            )
            return 403
        headers = [
            *self._base_headers(request),
            (b"access-control-allow-methods", ", ".join(cors.allowed_methods).encode()),
            (b"access-control-allow-headers", ", ".join(cors.allowed_headers).encode()),
            (b"access-control-max-age", b"600"),
            (b"content-length", b"0"),
        ]
        await send({"type": "http.response.start", "status": 204, "headers": headers})
        await send({"type": "http.response.body", "body": b""})
        return 204

    async def _public(self, request: Request, send: Send) -> int:
        if request.path == "/metrics":
            body = await asyncio.to_thread(generate_latest, self.registry)
            await self._send(send, request, 200, body, content_type=CONTENT_TYPE_LATEST.encode())
            return 200
        if request.path == "/openapi.json":
            await self._send(send, request, 200, self.openapi, content_type=b"application/json")
            return 200
        if request.path == "/docs":
            await self._send(send, request, 200, DOCS_HTML.encode(), content_type=b"text/html; charset=utf-8")
            return 200
        health = await self.health()
        status = 200 if health.status == "ok" else 503
        await self._send_json(send, request, status, response_dict_plain(health))
        return status

    async def health(self) -> system_pb2.CheckHealthResponse:
        """The control plane's view of PostgreSQL, Redis and NATS plus its own reachability; when it is
        down, the gateway checks the dependencies itself so /health still says what is wrong."""
        assert self._channel is not None
        started = time.perf_counter()
        try:
            reply: system_pb2.CheckHealthResponse = await system_pb2_grpc.SystemServiceStub(
                self._channel
            ).CheckHealth(system_pb2.CheckHealthRequest(), timeout=5)
            control = system_pb2.ComponentHealth(
                name="control",
                healthy=True,
                detail=self.control_target,
                latency_ms=(time.perf_counter() - started) * 1000,
            )
            components = [*reply.components, control]
            version = reply.version
        except grpc.aio.AioRpcError as exc:
            control = system_pb2.ComponentHealth(
                name="control",
                healthy=False,
                detail=f"{exc.code().name}: {exc.details()}",
                latency_ms=(time.perf_counter() - started) * 1000,
            )
            deps = await check_all(self.settings)
            components = [
                system_pb2.ComponentHealth(
                    name=d.name, healthy=d.healthy, detail=d.detail, latency_ms=d.latency_ms
                )
                for d in deps
            ] + [control]
            version = ""
        ok = all(c.healthy for c in components)
        return system_pb2.CheckHealthResponse(
            status="ok" if ok else "degraded", components=components, version=version
        )

    async def _audit(
        self, request: Request, route: Route, principal: Principal | None, status: int, grpc_code: str
    ) -> None:
        """One audit_log row per authenticated mutating call, including refused ones (who tried what).
        Unauthenticated attempts are logged, not written: a flood of them must cost no database writes."""
        if self._pool is None:
            return
        if principal is None:
            log.info(
                "unauthenticated mutating request",
                extra={"data": {"path": request.path[:256], "status": status, "client": request.client_ip}},
            )
            return
        try:
            await self._pool.execute(
                """INSERT INTO audit_log (tenant_id, principal, request_id, method, path, rpc, http_status,
                                          grpc_code, client_ip)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)""",
                uuid.UUID(principal.tenant_id) if principal else None,
                principal.principal if principal else None,
                request.request_id,
                request.method,
                request.path[:2048],
                route.method.full_name,
                status,
                grpc_code or None,
                request.client_ip or None,
            )
        except (asyncpg.PostgresError, OSError) as exc:
            log.error("audit log write failed", extra={"data": {"error": f"{type(exc).__name__}: {exc}"}})


def _code_name(code: Any) -> str:
    try:
        return next(c.name for c in grpc.StatusCode if c.value[0] == int(code))
    except (StopIteration, ValueError, TypeError):
        return "UNKNOWN"


def response_dict_plain(message: Message) -> Any:
    return json_format.MessageToDict(message, always_print_fields_with_no_presence=True)


def create_app(settings: Settings | None = None) -> Gateway:
    """uvicorn factory (`gateway.app:create_app`)."""
    return Gateway(settings or load_settings())


__all__ = ["HTTP_STATUS", "Gateway", "create_app"]
