"""The worker's consumers: durable JetStream pull consumers per projection, grouped in queues.

| consumer (durable) | events          | queue    | writes                                  |
|--------------------|-----------------|----------|-----------------------------------------|
| worker_records     | call lifecycle  | default  | calls (upsert), call_events             |
| worker_transcripts | transcript.turn | default  | transcripts                             |
| worker_tool_calls  | tool.called     | default  | tool_calls                              |
| worker_usage       | usage.minute    | default  | usage_records, credit_buckets, hourly   |
| worker_webhooks    | all             | webhooks | webhook_deliveries (then the deliverer) |

Queues (spec 3.4.5) share a concurrency: default 2, webhooks 4.

Each handler applies its event atomically (one statement, or one transaction) and is idempotent on the
event id (or a natural key), so an event
redelivered (lost ack, worker killed mid-batch) changes nothing the second time. Events of tenants this
database does not know are acknowledged and counted as skipped. Connections are retried until they
succeed; `healthy` is true only while every consumer fetches and the deliverer runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import asyncpg
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from services.shared.cache import create_redis
from services.shared.events import SUBJECT_PREFIX, EventBus, type_filter
from services.shared.events_consumer import Backoff, Delivery, Subscription, subscribe
from services.shared.recordings.store import open_store
from services.shared.settings import Settings
from services.worker.db import Conn, create_worker_pool
from services.worker.metrics import WorkerMetrics
from services.worker.records import UnknownTenantError, log_call_event, upsert_call
from services.worker.scheduler import Scheduler
from services.worker.transcripts import store_tool_call, store_turn
from services.worker.usage import record_minute
from services.worker.webhooks import SubscriptionCache, WebhookDeliverer, enqueue
from voice.v1 import events_pb2

log = logging.getLogger(__name__)

Projection = Callable[[Conn, events_pb2.Event], Awaitable[object]]
ALL_EVENTS = f"{SUBJECT_PREFIX}.>"
# Events that open or advance a call record (turns, tool calls and minutes open it themselves).
LIFECYCLE = [
    type_filter(t)
    for t in (
        "call.ringing", "call.connected", "agent.joined", "call.transfer_requested", "call.transferred",
        "call.ended", "call.failed", "room.ready",
    )
]  # fmt: skip


class Worker:
    def __init__(
        self,
        settings: Settings,
        registry: CollectorRegistry | None = None,
        *,
        on_handled: Callable[[str, events_pb2.Event], None] | None = None,
    ) -> None:
        self.settings = settings
        # Told (handler name, event) after each event a handler applied (benchmarks, tests).
        self._on_handled = on_handled
        self.metrics = WorkerMetrics.create(registry or CollectorRegistry())
        self.pool: asyncpg.Pool | None = None
        self.redis: aioredis.Redis | None = None
        self.bus: EventBus | None = None
        self.deliverer: WebhookDeliverer | None = None
        self.subscriptions: list[Subscription] = []
        self.scheduler: Scheduler | None = None
        self._task: asyncio.Task[None] | None = None
        self._monitor: asyncio.Task[None] | None = None

    @property
    def healthy(self) -> bool:
        return (
            bool(self.subscriptions)
            and all(s.running for s in self.subscriptions)
            and self.deliverer is not None
            and self.deliverer.alive
        )

    def start(self) -> None:
        self._task = asyncio.create_task(self._start(), name="worker-start")

    async def started(self) -> None:
        if self._task is not None:
            await self._task

    async def _start(self) -> None:
        delay = 0.2
        while True:
            try:
                await self._connect()
                break
            except Exception as exc:  # whatever the cause, retried until the dependencies answer
                log.warning("worker cannot start yet (%s: %s); retrying", type(exc).__name__, exc)
                await self._close_connections()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        await self._subscribe()
        assert self.pool is not None
        self.scheduler = Scheduler(self.pool, self.metrics, store=open_store(self.settings))
        self.scheduler.start()
        self._monitor = asyncio.create_task(self._watch(), name="worker-monitor")
        log.info(
            "worker consumers running", extra={"data": {"consumers": [s.durable for s in self.subscriptions]}}
        )

    async def _connect(self) -> None:
        self.pool = await create_worker_pool(self.settings)
        self.redis = create_redis(self.settings)
        await self.redis.ping()
        self.bus = await EventBus.connect(self.settings, name="worker")

    async def _subscribe(self) -> None:
        assert self.pool is not None and self.redis is not None and self.bus is not None
        cfg = self.settings.worker_service
        self.deliverer = WebhookDeliverer(self.settings, self.pool, self.redis, self.metrics)
        self.deliverer.start()
        default = asyncio.Semaphore(cfg.default_concurrency)
        webhooks = asyncio.Semaphore(cfg.webhooks_concurrency)
        max_attempts = cfg.retry.max_retries or 1

        subscribed = SubscriptionCache(self.settings.worker_service.webhook_config_cache_seconds)

        async def deliver(conn: Conn, event: events_pb2.Event) -> None:
            if not await subscribed.wants(conn, event):
                return  # most events interest no endpoint: no write at all
            if await enqueue(conn, event, max_attempts) and self.deliverer is not None:
                self.deliverer.wake()

        consumers: list[tuple[str, str | list[str], Projection, asyncio.Semaphore, int]] = [
            ("worker_records", LIFECYCLE, self._record, default, cfg.default_concurrency),
            (
                "worker_transcripts",
                type_filter("transcript.turn"),
                store_turn,
                default,
                cfg.default_concurrency,
            ),
            (
                "worker_tool_calls",
                type_filter("tool.called"),
                store_tool_call,
                default,
                cfg.default_concurrency,
            ),
            ("worker_usage", type_filter("usage.minute"), record_minute, default, cfg.default_concurrency),
            ("worker_webhooks", ALL_EVENTS, deliver, webhooks, cfg.webhooks_concurrency),
        ]
        for durable, subject, projection, slots, concurrency in consumers:
            self.subscriptions.append(
                await subscribe(
                    self.bus,
                    durable,
                    subject,
                    self._handler(durable, projection),
                    concurrency=concurrency,
                    ack_wait_s=cfg.ack_wait_seconds,
                    max_deliver=cfg.max_deliver,
                    backoff=Backoff(base_s=0.5, cap_s=30.0),
                    on_outcome=self._count,
                    slots=slots,
                )
            )

    @staticmethod
    async def _record(conn: Conn, event: events_pb2.Event) -> None:
        async with conn.transaction():
            record_id = await upsert_call(conn, event)
            if record_id is not None:
                await log_call_event(conn, record_id, event)

    def _handler(self, name: str, projection: Projection) -> Callable[[Delivery], Awaitable[None]]:
        async def handle(delivery: Delivery) -> None:
            assert self.pool is not None
            try:
                async with self.pool.acquire() as conn:
                    await projection(conn, delivery.event)
                if self._on_handled is not None:
                    self._on_handled(name, delivery.event)
            except (UnknownTenantError, asyncpg.ForeignKeyViolationError):
                self.metrics.skipped.labels(name, "unknown_tenant").inc()
                log.debug(
                    "event of an unknown tenant skipped",
                    extra={"data": {"event_id": delivery.event.event_id}},
                )

        return handle

    def _count(self, durable: str, outcome: str) -> None:
        self.metrics.outcomes.labels(durable.removeprefix("worker_"), outcome).inc()

    async def _watch(self) -> None:
        """Lag per consumer, dead-letter depth, consumers running: every 2 s."""
        assert self.bus is not None
        while True:
            running = 0
            for sub in self.subscriptions:
                running += sub.running
                with contextlib.suppress(Exception):
                    self.metrics.consumer_lag.labels(sub.durable).set(await sub.lag())
            self.metrics.consumers_running.set(running)
            with contextlib.suppress(Exception):
                info = await self.bus.js.stream_info(f"{self.bus.stream}_DLQ")
                self.metrics.dead_letter_depth.set(info.state.messages)
            await asyncio.sleep(2.0)

    async def stop(self) -> None:
        for task in (self._task, self._monitor):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self.scheduler is not None:
            await self.scheduler.stop()
            self.scheduler = None
        await asyncio.gather(*(s.stop() for s in self.subscriptions), return_exceptions=True)
        self.subscriptions = []
        if self.deliverer is not None:
            await self.deliverer.stop()
            self.deliverer = None
        await self._close_connections()

    async def _close_connections(self) -> None:
        bus, self.bus = self.bus, None
        if bus is not None:
            await bus.close(drain=False)
        redis, self.redis = self.redis, None
        if redis is not None:
            await redis.aclose()
        pool, self.pool = self.pool, None
        if pool is not None:
            await pool.close()
