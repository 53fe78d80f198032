"""Scheduled jobs (spec 3.4.4), UTC, one runner at a time across worker instances.

Each job has a period key (the hour, day or month it covers). Every tick, each instance tries to take
the job's row in `scheduled_jobs` with `FOR UPDATE SKIP LOCKED`; the one that gets it runs the job for
the due period, in the same transaction that records the period as done, so a crash mid-job leaves the
period to run again, and no period is ever done twice (or by two instances at once).

| job              | period | does                                                                       |
|------------------|--------|----------------------------------------------------------------------------|
| aggregate_usage  | hour   | recomputes the last closed hour of `usage_hourly` from `usage_records`       |
| daily_report     | day    | per tenant, yesterday: calls, minutes, average handle time, transfer rate,   |
|                  |        | tool success rate (`daily_reports`)                                         |
| retention        | day    | deletes what spec 9.4 no longer keeps (7 years: calls, transcripts, usage,  |
|                  |        | audit; 1 year: recordings; 30 days: webhook delivery log)                    |
| monthly_invoice  | month  | one draft invoice per tenant for last month's minutes (`invoices`)           |
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg

from services.shared.recordings.archive import delete_expired
from services.shared.recordings.store import ObjectStore
from services.worker.db import Conn
from services.worker.metrics import WorkerMetrics

log = logging.getLogger(__name__)

RETENTION_DAYS = {"records": 7 * 365, "recordings": 365, "webhook_log": 30}
PRICE_CENTS_PER_MINUTE = 5


def hour_start(now: datetime) -> datetime:
    return now.replace(minute=0, second=0, microsecond=0)


def day_start(now: datetime) -> datetime:
    return now.replace(hour=0, minute=0, second=0, microsecond=0)


def month_start(now: datetime) -> datetime:
    return day_start(now).replace(day=1)


async def aggregate_usage(conn: Conn, now: datetime) -> dict[str, object]:
    start = hour_start(now) - timedelta(hours=1)
    await conn.execute("DELETE FROM usage_hourly WHERE hour = $1", start)
    status = await conn.execute(
        """INSERT INTO usage_hourly (tenant_id, agent_key, direction, hour, minutes, calls)
           SELECT tenant_id, COALESCE(agent_id, '00000000-0000-0000-0000-000000000000'::uuid), direction, $1,
                  SUM(minutes), COUNT(*) FILTER (WHERE minute_count IS NULL OR minute_count <= 1)
           FROM usage_records WHERE recorded_at >= $1 AND recorded_at < $2
           GROUP BY 1, 2, 3""",
        start,
        start + timedelta(hours=1),
    )
    return {"hour": start.isoformat(), "rows": int(status.split()[-1])}


async def daily_report(conn: Conn, now: datetime) -> dict[str, object]:
    day = day_start(now) - timedelta(days=1)
    status = await conn.execute(
        """INSERT INTO daily_reports (tenant_id, day, calls, minutes, average_handle_seconds, transfer_rate,
                                      tool_success_rate)
           SELECT t.id, $1::date, COALESCE(c.calls, 0), COALESCE(u.minutes, 0), COALESCE(c.aht, 0),
                  COALESCE(c.transfer_rate, 0), COALESCE(tc.success, 1)
           FROM tenants t
           LEFT JOIN (
               SELECT tenant_id, COUNT(*) AS calls, AVG(duration_seconds) AS aht,
                      AVG(CASE WHEN status = 'transferred' OR end_reason = 'transferred' THEN 1.0 ELSE 0 END)
                        AS transfer_rate
               FROM calls WHERE created_at >= $2 AND created_at < $3 GROUP BY tenant_id
           ) c ON c.tenant_id = t.id
           LEFT JOIN (
               SELECT tenant_id, SUM(minutes) AS minutes FROM usage_records
               WHERE recorded_at >= $2 AND recorded_at < $3 GROUP BY tenant_id
           ) u ON u.tenant_id = t.id
           LEFT JOIN (
               SELECT calls.tenant_id, AVG(CASE WHEN tool_calls.status = 'ok' THEN 1.0 ELSE 0 END) AS success
               FROM tool_calls JOIN calls ON calls.id = tool_calls.call_id
               WHERE tool_calls.created_at >= $2 AND tool_calls.created_at < $3
               GROUP BY calls.tenant_id
           ) tc ON tc.tenant_id = t.id
           WHERE t.deleted_at IS NULL AND (c.calls IS NOT NULL OR u.minutes IS NOT NULL)
           ON CONFLICT (tenant_id, day) DO UPDATE SET
               calls = EXCLUDED.calls, minutes = EXCLUDED.minutes,
               average_handle_seconds = EXCLUDED.average_handle_seconds,
               transfer_rate = EXCLUDED.transfer_rate, tool_success_rate = EXCLUDED.tool_success_rate""",
        day,
        day,
        day + timedelta(days=1),
    )
    return {"day": day.date().isoformat(), "tenants": int(status.split()[-1])}


async def retention(conn: Conn, now: datetime, store: ObjectStore | None = None) -> dict[str, object]:
    records = now - timedelta(days=RETENTION_DAYS["records"])
    deleted: dict[str, object] = {}
    if store is not None:  # recordings: the encrypted objects, then their rows
        deleted["recordings"] = await delete_expired(
            conn, store, now - timedelta(days=RETENTION_DAYS["recordings"])
        )
    old_calls = "SELECT id FROM calls WHERE COALESCE(ended_at, created_at) < $1"
    for table, sql in (
        ("transcripts", f"DELETE FROM transcripts WHERE call_id IN ({old_calls})"),
        ("tool_calls", f"DELETE FROM tool_calls WHERE call_id IN ({old_calls})"),
        ("call_events", f"DELETE FROM call_events WHERE call_id IN ({old_calls})"),
        ("usage_records", "DELETE FROM usage_records WHERE recorded_at < $1"),
        ("calls", "DELETE FROM calls WHERE COALESCE(ended_at, created_at) < $1"),
        ("audit_log", "DELETE FROM audit_log WHERE created_at < $1"),
    ):
        deleted[table] = int((await conn.execute(sql, records)).split()[-1])
    deleted["webhook_deliveries"] = int(
        (
            await conn.execute(
                "DELETE FROM webhook_deliveries WHERE created_at < $1 AND status <> 'pending'",
                now - timedelta(days=RETENTION_DAYS["webhook_log"]),
            )
        ).split()[-1]
    )
    return deleted


async def monthly_invoice(conn: Conn, now: datetime) -> dict[str, object]:
    end = month_start(now)
    start = month_start(end - timedelta(days=1))
    status = await conn.execute(
        """INSERT INTO invoices (tenant_id, period_start, period_end, minutes, amount_cents)
           SELECT tenant_id, $1, $2, SUM(minutes), CEIL(SUM(minutes) * $3)::bigint
           FROM usage_records WHERE recorded_at >= $1 AND recorded_at < $2 GROUP BY tenant_id
           ON CONFLICT (tenant_id, period_start) DO NOTHING""",
        start,
        end,
        PRICE_CENTS_PER_MINUTE,
    )
    return {"month": start.date().isoformat()[:7], "invoices": int(status.split()[-1])}


JobFn = Callable[[Conn, datetime], Awaitable[dict[str, object]]]


@dataclass(frozen=True)
class Job:
    name: str
    period: Callable[[datetime], str]
    run: JobFn


JOBS = (
    Job("aggregate_usage", lambda now: (hour_start(now) - timedelta(hours=1)).isoformat(), aggregate_usage),
    Job("daily_report", lambda now: (day_start(now) - timedelta(days=1)).date().isoformat(), daily_report),
    Job("retention", lambda now: day_start(now).date().isoformat(), retention),
    Job(
        "monthly_invoice",
        lambda now: (month_start(now) - timedelta(days=1)).strftime("%Y-%m"),
        monthly_invoice,
    ),
)


def jobs_with(store: ObjectStore | None) -> tuple[Job, ...]:
    """JOBS with retention deleting recording objects from `store` too."""
    if store is None:
        return JOBS
    expire = functools.partial(retention, store=store)
    return tuple(Job(j.name, j.period, expire) if j.name == "retention" else j for j in JOBS)


async def run_due(
    pool: asyncpg.Pool,
    now: datetime,
    metrics: WorkerMetrics | None = None,
    store: ObjectStore | None = None,
) -> list[str]:
    """Runs every job whose current period is not done yet and that no other instance is running;
    returns the names of the jobs this call ran. With `store`, retention deletes recording objects."""
    ran = []
    for job in jobs_with(store):
        period = job.period(now)
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO scheduled_jobs (name) VALUES ($1) ON CONFLICT DO NOTHING", job.name
            )
            row = await conn.fetchrow(
                "SELECT last_period FROM scheduled_jobs WHERE name = $1 FOR UPDATE SKIP LOCKED", job.name
            )
            if row is None or row["last_period"] == period:
                continue  # another instance has it, or it is done
            try:
                async with conn.transaction():  # a savepoint: a failed job leaves its period to retry
                    result = await job.run(conn, now)
            except (asyncpg.PostgresError, OSError) as exc:
                log.exception("scheduled job %s failed", job.name)
                if metrics is not None:
                    metrics.jobs.labels(job.name, "failed").inc()
                await conn.execute(
                    "UPDATE scheduled_jobs SET last_result = $2::jsonb WHERE name = $1",
                    job.name,
                    json.dumps({"error": str(exc)[:500]}),
                )
                continue
            await conn.execute(
                """UPDATE scheduled_jobs SET last_period = $2, last_run_at = $3, last_result = $4::jsonb
                   WHERE name = $1""",
                job.name,
                period,
                now,
                json.dumps(result, default=str),
            )
        ran.append(job.name)
        if metrics is not None:
            metrics.jobs.labels(job.name, "done").inc()
        log.info("scheduled job %s done for %s", job.name, period, extra={"data": result})
    return ran


class Scheduler:
    def __init__(
        self,
        pool: asyncpg.Pool,
        metrics: WorkerMetrics,
        tick_s: float = 30.0,
        store: ObjectStore | None = None,
    ) -> None:
        self._pool = pool
        self._store = store
        self._metrics = metrics
        self._tick_s = tick_s
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="scheduler")

    async def _run(self) -> None:
        while True:
            try:
                await run_due(self._pool, datetime.now(UTC), self._metrics, self._store)
            except (asyncpg.PostgresError, OSError) as exc:
                log.warning("scheduler tick failed: %s", exc)
            await asyncio.sleep(self._tick_s)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._store is not None:
            await self._store.close()
