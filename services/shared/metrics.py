"""Prometheus metrics shared by every gRPC server, and the /metrics endpoint.

Metric objects are created per registry (one per server) rather than at import time, so tests can run
several servers in one process without "duplicated timeseries" errors.
"""

from __future__ import annotations

from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server


@dataclass(frozen=True)
class GrpcMetrics:
    """The standard gRPC server metrics (names as in go-grpc-prometheus)."""

    started: Counter
    handled: Counter
    handling_seconds: Histogram
    in_flight: Gauge
    up: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry, service: str) -> GrpcMetrics:
        labels = ["grpc_service", "grpc_method"]
        up = Gauge("service_up", "1 while the service is serving", ["service"], registry=registry)
        up.labels(service=service).set(0)
        return cls(
            started=Counter("grpc_server_started", "RPCs started", labels, registry=registry),
            handled=Counter(
                "grpc_server_handled", "RPCs completed", [*labels, "grpc_code"], registry=registry
            ),
            handling_seconds=Histogram(
                "grpc_server_handling_seconds",
                "RPC duration until the handler returned",
                labels,
                registry=registry,
                buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 60, 600),
            ),
            in_flight=Gauge("grpc_server_in_flight", "RPCs being handled", labels, registry=registry),
            up=up,
        )


def serve_metrics(registry: CollectorRegistry, host: str, port: int) -> WSGIServer:
    """Serves GET /metrics for `registry` on a daemon thread (off the event loop); returns the server."""
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server
