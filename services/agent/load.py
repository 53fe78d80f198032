"""How loaded this agent process is, and whether it takes one more call.

A process that accepts calls beyond what its one event loop and core can serve makes every call on it
worse (late frames, slow turns) instead of letting the caller go elsewhere. So each process watches
three signals and refuses new sessions with RESOURCE_EXHAUSTED plus a retry hint when one is past its
limit (`agent_service.capacity`), before quality degrades:

- active calls (a hard count, when configured);
- event-loop lag: a timer asks to wake every `sample_interval_ms`; how late it wakes is how long any
  frame or turn would have waited. The p90 of the last second must stay under `max_loop_lag_ms` (one
  stall does not trip it, a loop that is steadily late does);
- CPU: the process' CPU time over the last second against `max_cpu_percent` of one core.

While saturated, grpc.health.v1 says NOT_SERVING (balancers and the bridge stop choosing it); it says
SERVING again once calls fall under the count and lag and CPU under 80 % of their limits (the margin
keeps it from flapping at the edge).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from services.shared.settings import CapacitySettings

log = logging.getLogger(__name__)

RECOVERY_FRACTION = 0.8
WINDOW_S = 1.0
LAG_QUANTILE = 0.9

StateListener = Callable[[bool], Coroutine[Any, Any, None]]


@dataclass(frozen=True)
class Refusal:
    reason: str
    retry_after_ms: int

    @property
    def details(self) -> str:
        return f"agent process at capacity ({self.reason}); retry in {self.retry_after_ms} ms, elsewhere"


class LoadMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.loop_lag = Histogram(
            "agent_event_loop_lag_seconds",
            "How late the event loop ran a timer due now (per sample)",
            registry=registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28),
        )
        self.loop_lag_recent = Gauge(
            "agent_event_loop_lag_ms", "p90 event-loop lag over the last second, ms", registry=registry
        )
        self.cpu = Gauge(
            "agent_process_cpu_percent",
            "CPU of this process over the last second, % of one core",
            registry=registry,
        )
        self.saturated = Gauge(
            "agent_saturated", "1 while this process refuses new sessions", registry=registry
        )
        self.refused = Counter(
            "agent_sessions_refused_total", "Sessions refused for load", ["reason"], registry=registry
        )
        self.active = Gauge("agent_process_calls_active", "Calls on this process", registry=registry)


class LoadMonitor:
    """Samples loop lag and CPU in a background task (`start`/`stop`); `admit` decides per session."""

    def __init__(self, settings: CapacitySettings, registry: CollectorRegistry) -> None:
        self._cfg = settings
        self.metrics = LoadMetrics(registry)
        self.active = 0
        self.lag_ms = 0.0
        self.cpu_percent = 0.0
        self.saturated = False
        self._lags: deque[float] = deque(maxlen=max(1, int(WINDOW_S * 1000 / settings.sample_interval_ms)))
        self._task: asyncio.Task[None] | None = None
        # Told when the process becomes saturated (True) or takes calls again (False): health status.
        self.listeners: list[StateListener] = []

    # ---- per session ---------------------------------------------------------------------------
    def admit(self) -> Refusal | None:
        """None and the call counted (call `leave` when it ends), or why it is refused."""
        reason = self._over_limit()
        if reason is not None:
            self.metrics.refused.labels(reason.split(" ", 1)[0]).inc()
            self._set_saturated(True)
            return Refusal(reason, self._cfg.retry_after_ms)
        self.active += 1
        self.metrics.active.set(self.active)
        if self._cfg.max_active_calls and self.active >= self._cfg.max_active_calls:
            self._set_saturated(True)
        return None

    def leave(self) -> None:
        self.active = max(0, self.active - 1)
        self.metrics.active.set(self.active)
        self._update()

    # ---- state ---------------------------------------------------------------------------------
    def _over_limit(self) -> str | None:
        cfg = self._cfg
        if cfg.max_active_calls and self.active >= cfg.max_active_calls:
            return f"calls: {self.active} of {cfg.max_active_calls} active"
        if self.lag_ms > cfg.max_loop_lag_ms:
            return f"loop_lag: {self.lag_ms:.0f} ms over {cfg.max_loop_lag_ms:.0f} ms"
        if self.cpu_percent > cfg.max_cpu_percent:
            return f"cpu: {self.cpu_percent:.0f} % over {cfg.max_cpu_percent:.0f} %"
        return None

    def _has_recovered(self) -> bool:
        cfg = self._cfg
        return (
            (not cfg.max_active_calls or self.active < cfg.max_active_calls)
            and self.lag_ms <= cfg.max_loop_lag_ms * RECOVERY_FRACTION
            and self.cpu_percent <= cfg.max_cpu_percent * RECOVERY_FRACTION
        )

    def _update(self) -> None:
        if self.saturated:
            if self._has_recovered():
                self._set_saturated(False)
        elif self._over_limit() is not None:
            self._set_saturated(True)

    def _set_saturated(self, saturated: bool) -> None:
        if saturated == self.saturated:
            return
        self.saturated = saturated
        self.metrics.saturated.set(1 if saturated else 0)
        log.warning(
            "load: refusing new sessions" if saturated else "load: taking new sessions again",
            extra={
                "data": {"active": self.active, "loop_lag_ms": round(self.lag_ms, 1), "cpu": self.cpu_percent}
            },
        )
        for listener in self.listeners:
            task: asyncio.Task[None] = asyncio.get_running_loop().create_task(listener(saturated))
            task.add_done_callback(_log_failure)

    # ---- sampling ------------------------------------------------------------------------------
    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._sample(), name="load-monitor")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _sample(self) -> None:
        interval = self._cfg.sample_interval_ms / 1000
        cpu_wall, cpu_used = time.monotonic(), time.process_time()
        while True:
            due = time.monotonic() + interval
            await asyncio.sleep(interval)
            now = time.monotonic()
            lag = max(0.0, now - due)
            self.metrics.loop_lag.observe(lag)
            self._lags.append(lag * 1000)
            ordered = sorted(self._lags)
            self.lag_ms = ordered[min(len(ordered) - 1, int(LAG_QUANTILE * (len(ordered) - 1)))]
            self.metrics.loop_lag_recent.set(self.lag_ms)
            if now - cpu_wall >= WINDOW_S:
                used = time.process_time()
                self.cpu_percent = (used - cpu_used) / (now - cpu_wall) * 100
                self.metrics.cpu.set(self.cpu_percent)
                cpu_wall, cpu_used = now, used
            self._update()


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("load state listener failed", exc_info=task.exception())
