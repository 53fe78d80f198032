"""Tenant event webhooks: every event a webhook subscribes to is POSTed to it as JSON, signed.

Two steps, so a slow or failing endpoint never holds the event stream:

1. `enqueue` (the `webhooks` consumer): one `webhook_deliveries` row per (webhook, event), unique, so a
   redelivered event creates nothing new. The body is the event as proto3 JSON, frozen at this point.
2. `WebhookDeliverer`: claims due deliveries (`FOR UPDATE SKIP LOCKED` plus a lease, so several worker
   instances never send the same attempt twice at once) and POSTs them, `webhooks_concurrency` at a time.
   Each attempt is logged (`webhook_attempts`: status code, error, latency). A failure is retried with
   exponential backoff and jitter (`retry.backoff_base` doubling up to `retry.backoff_max`) until
   `retry.max_retries` attempts, then the delivery is dead (RedeliverWebhookDelivery revives it).
   Per endpoint: at most `webhook_rate_per_minute` attempts a minute, and a circuit breaker (Redis, so
   shared by instances) that opens after `webhook_breaker_failures` failures in a row and postpones
   deliveries for `webhook_breaker_open_seconds`.

Headers of each POST: `Content-Type: application/json`, `X-Voice-Event-Id`, `X-Voice-Event-Type`,
`X-Voice-Delivery-Id`, `X-Voice-Timestamp`, `X-Voice-Signature: v1=<hex HMAC-SHA256 of "<timestamp>.<body>">`
(services/worker/signing.py). Receivers should de-duplicate on X-Voice-Event-Id (delivery is at least once).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import redis.asyncio as aioredis
from google.protobuf import json_format

from services.shared.outbound_http import safe_client
from services.shared.settings import Settings
from services.worker.db import Conn
from services.worker.metrics import WorkerMetrics
from services.worker.records import tenant_uuid
from services.worker.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign
from voice.v1 import events_pb2

log = logging.getLogger(__name__)

# How long a claimed delivery is reserved beyond the request timeout (a crashed sender's claim expires).
_LEASE_MARGIN_S = 5.0
_MAX_ERROR = 500


def webhook_client(settings: Settings) -> httpx.AsyncClient:
    """The worker's HTTP client for tenant URLs: the platform's SSRF-safe client (public https only,
    checked on the connected address, no redirects, no proxies), bounded by the webhook timeout."""
    return safe_client(
        settings.outbound_http,
        timeout=settings.worker_service.webhook_timeout_seconds,
        headers=(("User-Agent", "voice-aiconnected-webhooks/1"),),
    )


def event_body(event: events_pb2.Event) -> bytes:
    return json.dumps(json_format.MessageToDict(event), separators=(",", ":"), sort_keys=True).encode()


async def enqueue(conn: Conn, event: events_pb2.Event, max_attempts: int) -> int:
    """Creates the deliveries of `event` for its tenant's subscribed webhooks; returns how many were new."""
    tenant = tenant_uuid(event)
    rows = await conn.fetch(
        """INSERT INTO webhook_deliveries (tenant_id, webhook_id, event_id, event_type, call_id, body,
                                           attempts_limit)
           SELECT $1, w.id, $2, $3::text, $4, $5, $6 FROM webhooks w
           WHERE w.tenant_id = $1 AND w.active
             AND (cardinality(w.events) = 0 OR $3::text = ANY(w.events) OR '*' = ANY(w.events))
           ON CONFLICT (webhook_id, event_id) DO NOTHING RETURNING id""",
        tenant,
        event.event_id,
        event.type,
        event.call_id,
        event_body(event),
        max_attempts,
    )
    return len(rows)


class SubscriptionCache:
    """Which event types each tenant's active webhooks want, read at most every `ttl_s` per tenant, so
    the many events nobody subscribed to cost no database write (a read cache, never used for
    idempotency: `enqueue` and its unique key decide what is delivered)."""

    def __init__(self, ttl_s: float) -> None:
        self._ttl_s = ttl_s
        self._by_tenant: dict[uuid.UUID, tuple[float, set[str]]] = {}

    async def wants(self, conn: Conn, event: events_pb2.Event) -> bool:
        tenant = tenant_uuid(event)
        now = time.monotonic()
        cached = self._by_tenant.get(tenant)
        if cached is None or now - cached[0] > self._ttl_s:
            rows = await conn.fetch("SELECT events FROM webhooks WHERE tenant_id = $1 AND active", tenant)
            types: set[str] = set()
            for row in rows:
                types.update(row["events"] or ["*"])
            if len(self._by_tenant) > 10_000:
                self._by_tenant.clear()  # bounded: a cache, recomputed on demand
            self._by_tenant[tenant] = cached = (now, types)
        return "*" in cached[1] or event.type in cached[1]


def backoff_s(attempt: int, base_s: float, cap_s: float) -> float:
    """Delay after failed attempt `attempt` (1-based): base * 2**(attempt-1) capped, with jitter."""
    ceiling: float = min(cap_s, base_s * 2.0 ** (attempt - 1))
    return ceiling * random.uniform(0.5, 1.0)


@dataclass(frozen=True)
class _Due:
    id: uuid.UUID
    webhook_id: uuid.UUID
    event_id: str
    event_type: str
    body: bytes
    attempts: int
    attempts_limit: int
    url: str
    secret: str
    active: bool


class WebhookDeliverer:
    def __init__(
        self,
        settings: Settings,
        pool: asyncpg.Pool,
        redis: aioredis.Redis,
        metrics: WorkerMetrics,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self._cfg = settings.worker_service
        self._pool = pool
        self._redis = redis
        self._metrics = metrics
        self._http = client or webhook_client(settings)
        self._slots = asyncio.Semaphore(self._cfg.webhooks_concurrency)
        self._wake = asyncio.Event()
        self._inflight: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None
        self.last_loop = 0.0

    @property
    def alive(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="webhook-deliverer")

    def wake(self) -> None:
        self._wake.set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._inflight:
            await asyncio.wait(self._inflight, timeout=self._cfg.webhook_timeout_seconds)
        await self._http.aclose()

    async def _run(self) -> None:
        while True:
            self.last_loop = time.monotonic()
            try:
                claimed = await self._claim()
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("webhook deliveries unavailable: %s", exc)
                await asyncio.sleep(1.0)
                continue
            for due in claimed:
                await self._slots.acquire()
                task = asyncio.create_task(self._deliver(due))
                self._inflight.add(task)
                task.add_done_callback(self._inflight.discard)
                task.add_done_callback(lambda _: self._slots.release())
            if claimed:
                continue
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), await self._idle_s())

    async def _idle_s(self) -> float:
        """Until the next delivery is due (at most 1 s: redeliveries and other instances' rows)."""
        row = await self._pool.fetchrow(
            """SELECT MIN(next_attempt_at) - NOW() AS wait, COUNT(*) AS pending
               FROM webhook_deliveries WHERE status = 'pending'"""
        )
        assert row is not None
        self._metrics.webhook_pending.set(row["pending"])
        wait: timedelta | None = row["wait"]
        if wait is None:
            return 1.0
        return min(max(wait.total_seconds(), 0.005), 1.0)

    async def _claim(self) -> list[_Due]:
        free = self._slots._value  # claim no more than can start now; the rest stay for other instances
        if free <= 0:
            await self._slots.acquire()
            self._slots.release()
            free = 1
        lease = self._cfg.webhook_timeout_seconds + _LEASE_MARGIN_S
        rows = await self._pool.fetch(
            """WITH due AS (
                   SELECT id FROM webhook_deliveries
                   WHERE status = 'pending' AND next_attempt_at <= NOW()
                   ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED)
               UPDATE webhook_deliveries d
               SET next_attempt_at = NOW() + make_interval(secs => $2), updated_at = NOW()
               FROM due, webhooks w WHERE d.id = due.id AND w.id = d.webhook_id
               RETURNING d.id, d.webhook_id, d.event_id, d.event_type, d.body, d.attempts, d.attempts_limit,
                         w.url, w.signing_secret, w.active""",
            free,
            lease,
        )
        return [
            _Due(
                r["id"],
                r["webhook_id"],
                r["event_id"],
                r["event_type"],
                bytes(r["body"]),
                r["attempts"],
                r["attempts_limit"],
                r["url"],
                r["signing_secret"],
                r["active"],
            )
            for r in rows
        ]

    async def _deliver(self, due: _Due) -> None:
        try:
            await self._attempt(due)
        except Exception:
            # The claim's lease expires and the delivery is tried again; nothing is lost.
            log.exception(
                "webhook delivery failed unexpectedly", extra={"data": {"delivery_id": str(due.id)}}
            )

    async def _attempt(self, due: _Due) -> None:
        if not due.active:
            await self._finish(due, attempt=None, status="dead", error="the webhook was disabled")
            return
        postponed = await self._gate(due.webhook_id)
        if postponed is not None:
            await self._pool.execute(
                """UPDATE webhook_deliveries SET next_attempt_at = NOW() + make_interval(secs => $2)
                   WHERE id = $1""",
                due.id,
                postponed,
            )
            return
        attempt = due.attempts + 1
        timestamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "X-Voice-Event-Id": due.event_id,
            "X-Voice-Event-Type": due.event_type,
            "X-Voice-Delivery-Id": str(due.id),
            TIMESTAMP_HEADER: str(timestamp),
            SIGNATURE_HEADER: sign(due.secret, timestamp, due.body),
        }
        started = time.perf_counter()
        code: int | None = None
        error: str | None = None
        try:
            # Only the status matters: the answer's body is never read (an endpoint cannot flood us).
            async with self._http.stream("POST", due.url, content=due.body, headers=headers) as response:
                code = response.status_code
            if not 200 <= code < 300:
                error = f"HTTP {code}"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"[:_MAX_ERROR] or type(exc).__name__
        latency = time.perf_counter() - started
        self._metrics.webhook_seconds.observe(latency)
        await self._log_attempt(due, attempt, code, error, latency)
        if error is None:
            self._metrics.webhook_outcomes.labels("delivered").inc()
            await self._redis.delete(self._key(due.webhook_id, "failures"))
            await self._finish(due, attempt, "delivered", code=code)
            return
        await self._trip(due.webhook_id)
        if attempt >= due.attempts_limit:
            self._metrics.webhook_outcomes.labels("dead").inc()
            log.warning(
                "webhook delivery dead after %d attempts",
                attempt,
                extra={"data": {"delivery_id": str(due.id)}},
            )
            await self._finish(due, attempt, "dead", code=code, error=error)
            return
        self._metrics.webhook_outcomes.labels("failed").inc()
        delay = backoff_s(attempt, self._cfg.retry.backoff_base, self._cfg.retry.backoff_max)
        await self._finish(due, attempt, "pending", code=code, error=error, retry_in_s=delay)

    async def _log_attempt(
        self, due: _Due, attempt: int, code: int | None, error: str | None, latency_s: float
    ) -> None:
        await self._pool.execute(
            """INSERT INTO webhook_attempts (delivery_id, attempt, status_code, error, latency_ms)
               VALUES ($1, $2, $3, $4, $5) ON CONFLICT (delivery_id, attempt) DO NOTHING""",
            due.id,
            attempt,
            code,
            error,
            round(latency_s * 1000),
        )

    async def _finish(
        self,
        due: _Due,
        attempt: int | None,
        status: str,
        *,
        code: int | None = None,
        error: str | None = None,
        retry_in_s: float = 0.0,
    ) -> None:
        now = datetime.now(UTC)
        await self._pool.execute(
            """UPDATE webhook_deliveries SET status = $2::varchar, attempts = COALESCE($3, attempts),
                      next_attempt_at = $4, last_status_code = COALESCE($5, last_status_code),
                      last_error = $6,
                      delivered_at = CASE WHEN $2::varchar = 'delivered' THEN $7::timestamptz END,
                      updated_at = $7
               WHERE id = $1""",
            due.id,
            status,
            attempt,
            now + timedelta(seconds=retry_in_s),
            code,
            error,
            now,
        )

    # --- per endpoint: rate limit and circuit breaker (Redis, shared by worker instances) ----------

    @staticmethod
    def _key(webhook_id: uuid.UUID, what: str) -> str:
        return f"webhook:{webhook_id}:{what}"

    async def _gate(self, webhook_id: uuid.UUID) -> float | None:
        """None when an attempt may go now; else seconds to postpone it (circuit open or rate limit)."""
        open_ms = await self._redis.pttl(self._key(webhook_id, "open"))
        if open_ms > 0:
            self._metrics.webhook_outcomes.labels("circuit_open").inc()
            return open_ms / 1000
        window = int(time.time() // 60)
        key = self._key(webhook_id, f"minute:{window}")
        count = await self._redis.incr(key)
        if count == 1:
            await self._redis.expire(key, 120)
        if count > self._cfg.webhook_rate_per_minute:
            self._metrics.webhook_outcomes.labels("rate_limited").inc()
            return (window + 1) * 60 - time.time() + random.uniform(0, 1)
        return None

    async def _trip(self, webhook_id: uuid.UUID) -> None:
        key = self._key(webhook_id, "failures")
        failures = await self._redis.incr(key)
        await self._redis.expire(key, max(int(self._cfg.webhook_breaker_open_seconds * 10), 60))
        if failures >= self._cfg.webhook_breaker_failures:
            await self._redis.set(
                self._key(webhook_id, "open"),
                b"1",
                px=max(int(self._cfg.webhook_breaker_open_seconds * 1000), 1),
            )
            await self._redis.delete(key)
            log.warning("webhook circuit opened", extra={"data": {"webhook_id": str(webhook_id)}})
