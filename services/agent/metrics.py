"""The agent service's Prometheus metrics (spec 13.2), registered on the server's registry."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)


@dataclass(frozen=True)
class AgentMetrics:
    stt_latency: Histogram
    llm_latency: Histogram
    tts_latency: Histogram
    e2e_latency: Histogram
    overhead: Histogram
    calls_active: Gauge
    calls_total: Counter
    barge_ins: Counter
    false_interruptions: Counter
    underruns: Counter
    errors: Counter
    breaker_state: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry) -> AgentMetrics:
        return cls(
            stt_latency=Histogram(
                "stt_latency_seconds",
                "End of speech to final transcript (provider part)",
                ["tenant"],
                registry=registry,
                buckets=LATENCY_BUCKETS,
            ),
            llm_latency=Histogram(
                "llm_latency_seconds",
                "LLM request to first token",
                ["tenant", "model"],
                registry=registry,
                buckets=LATENCY_BUCKETS,
            ),
            tts_latency=Histogram(
                "tts_latency_seconds",
                "TTS request to first audio",
                ["tenant", "voice"],
                registry=registry,
                buckets=LATENCY_BUCKETS,
            ),
            e2e_latency=Histogram(
                "e2e_latency_seconds",
                "End of caller speech to first agent audio frame sent",
                ["tenant"],
                registry=registry,
                buckets=LATENCY_BUCKETS,
            ),
            overhead=Histogram(
                "platform_overhead_seconds",
                "e2e minus provider time and deliberate endpointing waits",
                ["tenant"],
                registry=registry,
                buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.04, 0.06, 0.1, 0.25),
            ),
            calls_active=Gauge("calls_active", "Agent sessions in progress", ["tenant"], registry=registry),
            calls_total=Counter(
                "calls_total", "Agent sessions ended", ["tenant", "direction", "status"], registry=registry
            ),
            barge_ins=Counter(
                "barge_ins_total", "Agent replies interrupted by the caller", ["tenant"], registry=registry
            ),
            false_interruptions=Counter(
                "false_interruptions_total",
                "Agent replies paused for caller sound that was noise or a backchannel, then resumed",
                ["tenant"],
                registry=registry,
            ),
            underruns=Counter(
                "playout_underruns_total",
                "Frames due while TTS had not delivered audio",
                ["tenant"],
                registry=registry,
            ),
            errors=Counter("errors_total", "Errors by kind", ["service", "type"], registry=registry),
            breaker_state=Gauge(
                "circuit_breaker_state",
                "Provider circuit breakers: 0 closed, 1 open, 2 half-open",
                ["service"],
                registry=registry,
            ),
        )
