"""Per endpoint: at most `webhook_rate_per_minute` attempts a minute, and a circuit breaker that opens
after `webhook_breaker_failures` failures in a row (state in Redis, shared by worker instances)."""

from __future__ import annotations

import time
import uuid

from prometheus_client import CollectorRegistry

from services.shared.cache import create_redis
from services.shared.settings import Settings
from services.worker.metrics import WorkerMetrics
from services.worker.webhooks import WebhookDeliverer, backoff_s
from tests.control.env import ControlPlane


async def test_rate_limit_and_breaker_postpone_attempts(cp: ControlPlane, wsettings: Settings) -> None:
    worker = wsettings.worker_service.model_copy(
        update={
            "webhook_rate_per_minute": 2,
            "webhook_breaker_failures": 3,
            "webhook_breaker_open_seconds": 30,
        }
    )
    redis = create_redis(wsettings)
    deliverer = WebhookDeliverer(
        wsettings.model_copy(update={"worker_service": worker}),
        cp.pool,
        redis,
        WorkerMetrics.create(CollectorRegistry()),
    )
    try:
        broken = uuid.uuid4()
        for _ in range(2):  # again if the three attempts straddled a minute boundary (a new window)
            limited, window = uuid.uuid4(), int(time.time() // 60)
            gates = [await deliverer._gate(limited) for _ in range(3)]
            if int(time.time() // 60) == window:
                break
        assert gates[:2] == [None, None]
        assert gates[2] is not None and 0 < gates[2] <= 61  # the third waits for the next minute

        for _ in range(2):
            await deliverer._trip(broken)
        assert await deliverer._gate(broken) is None  # two failures: still closed
        await deliverer._trip(broken)
        postponed = await deliverer._gate(broken)
        assert postponed is not None and 25 < postponed <= 30  # open: attempts wait it out
    finally:
        await deliverer.stop()
        await redis.aclose()


def test_backoff_doubles_with_jitter_up_to_the_cap() -> None:
    for attempt, ceiling in [(1, 60), (2, 120), (3, 240), (6, 1920), (7, 3600), (12, 3600)]:
        delay = backoff_s(attempt, 60, 3600)
        assert ceiling / 2 <= delay <= ceiling
