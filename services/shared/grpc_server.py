"""The one way every service runs a gRPC server: its servicers plus grpc.health.v1, server reflection
(so grpcurl and ghz work), Prometheus /metrics, a log context per RPC, and graceful shutdown."""

from __future__ import annotations

import asyncio
import inspect
import logging
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry

from services.shared.logging import log_context
from services.shared.metrics import GrpcMetrics, serve_metrics
from services.shared.service_identity import allowed, load_material, peer_identity, plaintext
from services.shared.settings import ServerSettings, Settings, load_settings

log = logging.getLogger(__name__)

# The servicer context type of every handler (request/response types are erased at this layer).
Context = grpc.aio.ServicerContext[Any, Any]

# Keep-alives so dead callers are noticed within seconds, not the OS TCP timeout.
SERVER_OPTIONS: Sequence[tuple[str, Any]] = (
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.max_receive_message_length", 4 * 1024 * 1024),
    # Several processes of one service may serve one port (services/shared/processes.py); gRPC's
    # default on Linux, said explicitly because the multi-process services rely on it.
    ("grpc.so_reuseport", 1),
)


@dataclass(frozen=True)
class ServiceBinding:
    """A servicer and the generated function that registers it, plus its full proto name."""

    full_name: str
    servicer: object
    register: Callable[[Any, grpc.aio.Server], None]


def bind(
    pb2: ModuleType, pb2_grpc: ModuleType, service: str, servicer: object | None = None
) -> ServiceBinding:
    """Binds `servicer` to the generated `service` of a proto module pair. Without a servicer, the
    generated base class is served: its RPCs answer UNIMPLEMENTED, but the service is listed by
    reflection and health, so clients can already be pointed at it."""
    full_name: str = pb2.DESCRIPTOR.services_by_name[service].full_name
    register = getattr(pb2_grpc, f"add_{service}Servicer_to_server")
    if servicer is None:
        servicer = getattr(pb2_grpc, f"{service}Servicer")()
    return ServiceBinding(full_name, servicer, register)


def malformed(method: str) -> str:
    return f"malformed request: the bytes received are not a valid request message for {method}"


def _split_method(full_method: str) -> tuple[str, str]:
    _, service, method = full_method.split("/", 2)
    return service, method


def caller_identity(context: Context) -> str | None:
    """The service identity the caller proved with its certificate (None on a plaintext server)."""
    return peer_identity(context.auth_context())


class _ObservabilityInterceptor(grpc.aio.ServerInterceptor):
    """Counts and times every RPC and binds a log context (trace id from `x-trace-id` metadata). With
    mutual TLS, first refuses callers whose certificate identity may not call the method (service ACL)."""

    def __init__(
        self, metrics: GrpcMetrics, server_identity: str | None, max_unary_seconds: float = 300.0
    ) -> None:
        self._metrics = metrics
        self._max_unary_seconds = max_unary_seconds
        # None: a plaintext server (development), where no caller identity can be verified.
        self._server_identity = server_identity

    async def _authorize(self, context: Context, method: str) -> None:
        if self._server_identity is None:
            return
        caller = caller_identity(context)
        if caller is None or not allowed(self._server_identity, caller, method):
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"service identity {caller or '(none)'!r} may not call {method} on {self._server_identity}",
            )

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        service, method = _split_method(handler_call_details.method)
        metadata = dict(handler_call_details.invocation_metadata or ())
        raw_trace = metadata.get("x-trace-id") or metadata.get("x-request-id")
        trace_id = raw_trace.decode(errors="replace") if isinstance(raw_trace, bytes) else raw_trace
        metrics = self._metrics
        authorize = self._authorize
        full_method = handler_call_details.method
        max_unary = self._max_unary_seconds

        def finish(context: Context, started: float, error: BaseException | None) -> None:
            code = context.code()
            if code is None:
                code = grpc.StatusCode.OK if error is None else grpc.StatusCode.UNKNOWN
            if isinstance(code, int):  # set via context.set_code with a raw int
                code = grpc.StatusCode(code)
            metrics.handled.labels(service, method, code.name).inc()
            metrics.handling_seconds.labels(service, method).observe(time.perf_counter() - started)
            metrics.in_flight.labels(service, method).dec()

        def start() -> float:
            metrics.started.labels(service, method).inc()
            metrics.in_flight.labels(service, method).inc()
            return time.perf_counter()

        def wrap_unary_response(behavior: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
            async def wrapper(request: Any, context: Context) -> Any:
                started = start()
                error: BaseException | None = None
                try:
                    with log_context(trace_id=trace_id):
                        await authorize(context, full_method)
                        limit = asyncio.timeout(max_unary)
                        try:
                            async with limit:
                                return await behavior(request, context)
                        except TimeoutError:
                            if not limit.expired():
                                raise  # the handler's own timeout, not this limit
                            error = TimeoutError()
                            await context.abort(
                                grpc.StatusCode.DEADLINE_EXCEEDED,
                                f"{full_method} ran past this server's limit of {max_unary:g} s per request",
                            )
                except DecodeError as exc:
                    error = exc
                    await context.abort(
                        grpc.StatusCode.INVALID_ARGUMENT, malformed(handler_call_details.method)
                    )
                except BaseException as exc:
                    error = exc
                    raise
                finally:
                    finish(context, started, error)

            return wrapper

        def wrap_stream_response(behavior: Callable[..., Any]) -> Callable[..., AsyncIterator[Any]]:
            async def wrapper(request: Any, context: Context) -> AsyncIterator[Any]:
                started = start()
                error: BaseException | None = None
                try:
                    with log_context(trace_id=trace_id):
                        await authorize(context, full_method)
                        if inspect.isasyncgenfunction(behavior):
                            async for response in behavior(request, context):
                                yield response
                        else:  # a coroutine that writes with context.write()
                            await behavior(request, context)
                except DecodeError as exc:
                    # A client streamed bytes that are not the request message: its fault, not ours.
                    error = exc
                    await context.abort(
                        grpc.StatusCode.INVALID_ARGUMENT, malformed(handler_call_details.method)
                    )
                except BaseException as exc:
                    error = exc
                    raise
                finally:
                    finish(context, started, error)

            return wrapper

        def decoded(behavior: Callable[..., Any]) -> Callable[..., Any]:
            """A unary request arrives as bytes and is decoded inside the RPC, so that bytes that are
            not the request message (or nest past the decoder's limit) answer INVALID_ARGUMENT, as the
            wrappers do, rather than gRPC's UNKNOWN for a failing deserializer."""
            decode = handler.request_deserializer
            if decode is None:
                return behavior
            if inspect.isasyncgenfunction(behavior):

                async def stream(raw: bytes, context: Context) -> AsyncIterator[Any]:
                    async for item in behavior(decode(raw), context):
                        yield item

                return stream

            async def unary(raw: bytes, context: Context) -> Any:
                return await behavior(decode(raw), context)

            return unary

        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                wrap_unary_response(decoded(handler.unary_unary)),
                None,
                handler.response_serializer,
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                wrap_unary_response(handler.stream_unary),
                handler.request_deserializer,
                handler.response_serializer,
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                wrap_stream_response(decoded(handler.unary_stream)),
                None,
                handler.response_serializer,
            )
        assert handler.stream_stream is not None  # gRPC handlers are exactly one of the four kinds
        return grpc.stream_stream_rpc_method_handler(
            wrap_stream_response(handler.stream_stream),
            handler.request_deserializer,
            handler.response_serializer,
        )


class GrpcServer:
    """An asyncio gRPC server with health, reflection and metrics. Use `start()`, then `stop()`.

    Mutual TLS with the certificate of service identity `identity` (default: `name`) and the service
    ACL, as `platform.internal_tls` says (default: the settings of the environment); plaintext only
    when those settings choose it explicitly."""

    def __init__(
        self,
        name: str,
        settings: ServerSettings,
        bindings: Sequence[ServiceBinding],
        *,
        serve_metrics_http: bool = True,
        identity: str | None = None,
        platform: Settings | None = None,
    ) -> None:
        self.name = name
        self.identity = identity or name
        self.platform = platform
        self.settings = settings
        self.bindings = tuple(bindings)
        self.registry = CollectorRegistry()
        self.metrics = GrpcMetrics.create(self.registry, name)
        self.health = health.aio.HealthServicer()
        self._serve_metrics_http = serve_metrics_http
        self._server: grpc.aio.Server | None = None
        self._metrics_http: Any = None
        # Run after the last RPC finished (flush event backlogs, close client connections).
        self.on_stop: list[Callable[[], Awaitable[None]]] = []
        # Run inside the server's event loop once it serves (background samplers).
        self.on_start: list[Callable[[], Awaitable[None]]] = []
        self.port = 0
        self.metrics_port = 0

    @property
    def address(self) -> str:
        return f"{self.settings.host}:{self.port}"

    async def start(self) -> None:
        platform = self.platform or load_settings()
        secure = not plaintext(platform)
        server = grpc.aio.server(
            interceptors=[
                _ObservabilityInterceptor(
                    self.metrics, self.identity if secure else None, self.settings.max_unary_seconds
                )
            ],
            options=SERVER_OPTIONS,
        )
        for binding in self.bindings:
            binding.register(binding.servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        names = [b.full_name for b in self.bindings]
        reflection.enable_server_reflection(
            [*names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
            server,
        )
        address = f"{self.settings.host}:{self.settings.grpc_port}"
        if secure:
            material = load_material(platform.internal_tls, self.identity)
            credentials = grpc.ssl_server_credentials(
                [(material.key, material.cert)], root_certificates=material.ca, require_client_auth=True
            )
            self.port = server.add_secure_port(address, credentials)
        else:
            self.port = server.add_insecure_port(address)
        if self.port == 0:
            raise OSError(
                f"{self.name}: cannot bind gRPC port {self.settings.host}:{self.settings.grpc_port}"
            )
        await server.start()
        self._server = server
        serving = health_pb2.HealthCheckResponse.SERVING
        await self.health.set("", serving)
        for full_name in names:
            await self.health.set(full_name, serving)
        for hook in self.on_start:
            await hook()
        if self._serve_metrics_http:
            self._metrics_http = serve_metrics(self.registry, self.settings.host, self.settings.metrics_port)
            self.metrics_port = self._metrics_http.server_port
        self.metrics.up.labels(service=self.name).set(1)
        log.info(
            "gRPC server started",
            extra={"data": {"address": self.address, "services": names, "metrics_port": self.metrics_port}},
        )

    async def set_serving(self, serving: bool) -> None:
        """grpc.health.v1 status of the server and each of its services: SERVING or NOT_SERVING (a
        process refusing new work for load). Ignored once the server is stopping."""
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", *(b.full_name for b in self.bindings)):
            await self.health.set(name, status)

    async def stop(self, grace: float = 5.0) -> None:
        """Reports NOT_SERVING first (load balancers drain), then lets in-flight RPCs finish."""
        if self._server is None:
            return
        self.metrics.up.labels(service=self.name).set(0)
        await self.health.enter_graceful_shutdown()
        await self._server.stop(grace)
        self._server = None
        for cleanup in self.on_stop:
            try:
                await cleanup()
            except Exception:
                log.exception("cleanup after stop failed")
        if self._metrics_http is not None:
            self._metrics_http.shutdown()
            self._metrics_http.server_close()
            self._metrics_http = None
        log.info("gRPC server stopped", extra={"data": {"address": self.address}})

    async def wait_for_termination(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()


async def run_until_signalled(server: GrpcServer, *, grace: float = 5.0) -> None:
    """Starts `server` and serves until SIGTERM or SIGINT, then stops it gracefully."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    try:
        await stop.wait()
    finally:
        await server.stop(grace)
