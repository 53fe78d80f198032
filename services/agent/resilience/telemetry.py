"""Where the resilience adapters report: `errors_total{service,type}` and `circuit_breaker_state{service}`.

Breakers live as long as the process (provider health is not per call) and are created before the
server's metrics registry exists, so the metrics are attached later; until then failures are only logged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from prometheus_client import Counter, Gauge

from services.agent.resilience.breaker import BreakerPolicy, BreakerState, CircuitBreaker

log = logging.getLogger(__name__)


class Telemetry:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._errors: Counter | None = None
        self._breaker_state: Gauge | None = None
        self.breakers: dict[str, CircuitBreaker] = {}

    def attach(self, errors: Counter, breaker_state: Gauge) -> None:
        self._errors = errors
        self._breaker_state = breaker_state
        for name, breaker in self.breakers.items():
            breaker_state.labels(name).set(int(breaker.state))

    def breaker(self, service: str, policy: BreakerPolicy) -> CircuitBreaker:
        """The process-wide breaker of `service` (created on first use)."""
        if service not in self.breakers:
            self.breakers[service] = CircuitBreaker(
                service, policy, clock=self._clock, on_change=self._breaker_changed
            )
        return self.breakers[service]

    def error(self, service: str, kind: str, detail: str = "") -> None:
        log.warning("provider failure", extra={"data": {"service": service, "type": kind, "detail": detail}})
        if self._errors is not None:
            self._errors.labels(service, kind).inc()

    def _breaker_changed(self, service: str, state: BreakerState) -> None:
        if self._breaker_state is not None:
            self._breaker_state.labels(service).set(int(state))
