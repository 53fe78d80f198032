"""Circuit breakers per provider (spec 12.2): Deepgram 5 failures / 30 s, Claude 3 / 60 s,
Chatterbox 3 / 30 s.

Closed: calls go through; `failure_threshold` consecutive failures open the circuit. Open: calls are
refused at once (no dead air waiting on a provider known to be down) until `recovery_timeout_s` has
passed, then half-open: one trial call goes through; its success closes the circuit, its failure opens
it for another full timeout. The clock is injected, so tests move time instead of sleeping.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)


class BreakerState(enum.IntEnum):
    # Values are what the `circuit_breaker_state` gauge exports.
    CLOSED = 0
    OPEN = 1
    HALF_OPEN = 2


@dataclass(frozen=True)
class BreakerPolicy:
    failure_threshold: int
    recovery_timeout_s: float


# Spec 12.2.
DEEPGRAM = BreakerPolicy(5, 30.0)
CLAUDE = BreakerPolicy(3, 60.0)
CHATTERBOX = BreakerPolicy(3, 30.0)


class CircuitBreaker:
    def __init__(
        self,
        service: str,
        policy: BreakerPolicy,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[str, BreakerState], None] | None = None,
    ) -> None:
        self.service = service
        self.policy = policy
        self._clock = clock
        self._on_change = on_change
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._trial_in_flight = False
        if on_change is not None:
            on_change(service, self._state)

    @property
    def state(self) -> BreakerState:
        """The state now (an open circuit whose timeout has passed reports half-open)."""
        if (
            self._state is BreakerState.OPEN
            and self._clock() - self._opened_at >= self.policy.recovery_timeout_s
        ):
            self._set(BreakerState.HALF_OPEN)
        return self._state

    def allow(self) -> bool:
        """Whether a call may go to the provider now. In half-open, only one trial at a time."""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.HALF_OPEN and not self._trial_in_flight:
            self._trial_in_flight = True
            return True
        return False

    def record_success(self) -> None:
        self._failures = 0
        self._trial_in_flight = False
        if self._state is not BreakerState.CLOSED:
            self._set(BreakerState.CLOSED)

    def record_failure(self) -> None:
        self._trial_in_flight = False
        if self._state is BreakerState.HALF_OPEN:
            self._open()
            return
        self._failures += 1
        if self._state is BreakerState.CLOSED and self._failures >= self.policy.failure_threshold:
            self._open()

    def release(self) -> None:
        """A call ended with neither success nor failure (the caller barged in): free the trial slot."""
        self._trial_in_flight = False

    def _open(self) -> None:
        self._opened_at = self._clock()
        self._failures = 0
        self._set(BreakerState.OPEN)

    def _set(self, state: BreakerState) -> None:
        if state is self._state:
            return
        log.warning(
            "circuit breaker state change",
            extra={"data": {"service": self.service, "from": self._state.name, "to": state.name}},
        )
        self._state = state
        if self._on_change is not None:
            self._on_change(self.service, state)
