"""The worker's Prometheus metrics (on the server's registry, served at /metrics)."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


@dataclass(frozen=True)
class WorkerMetrics:
    outcomes: Counter
    skipped: Counter
    consumer_lag: Gauge
    consumers_running: Gauge
    dead_letter_depth: Gauge
    webhook_seconds: Histogram
    webhook_outcomes: Counter
    webhook_pending: Gauge
    jobs: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry) -> WorkerMetrics:
        return cls(
            outcomes=Counter(
                "worker_events",
                "Events by handler and outcome (handled, failed, dead_lettered)",
                ["handler", "outcome"],
                registry=registry,
            ),
            skipped=Counter(
                "worker_events_skipped",
                "Events acked without effect",
                ["handler", "reason"],
                registry=registry,
            ),
            consumer_lag=Gauge(
                "worker_consumer_lag",
                "Events not yet handled (pending + unacked)",
                ["consumer"],
                registry=registry,
            ),
            consumers_running=Gauge(
                "worker_consumers_running", "Consumers fetching from the stream", registry=registry
            ),
            dead_letter_depth=Gauge(
                "worker_dead_letter_depth", "Poison events in the dead-letter stream", registry=registry
            ),
            webhook_seconds=Histogram(
                "worker_webhook_seconds",
                "Tenant webhook request latency",
                registry=registry,
                buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            ),
            webhook_outcomes=Counter(
                "worker_webhook_deliveries",
                "Webhook attempts by outcome (delivered, failed, dead, rate_limited, circuit_open)",
                ["outcome"],
                registry=registry,
            ),
            webhook_pending=Gauge(
                "worker_webhook_pending", "Deliveries waiting to be sent", registry=registry
            ),
            jobs=Counter("worker_jobs", "Scheduled job runs", ["job", "outcome"], registry=registry),
        )
