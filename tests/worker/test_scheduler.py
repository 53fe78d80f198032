"""Scheduled jobs: one runner per period across instances, and what each job computes from a call that
went through the event stream."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

from services.shared.events import call_event_id, new_event
from services.shared.events_publisher import EventPublisher
from services.worker.scheduler import (
    JOBS,
    aggregate_usage,
    daily_report,
    hour_start,
    monthly_invoice,
    run_due,
)
from services.worker.server import WorkerServer
from tests.control.env import ControlPlane
from tests.worker.conftest import eventually
from voice.v1 import common_pb2, events_pb2

INBOUND = common_pb2.CALL_DIRECTION_INBOUND


async def test_each_period_runs_once_across_instances(cp: ControlPlane) -> None:
    when = datetime.now(UTC) + timedelta(days=70)  # periods (even the month) no other run has used
    first, second = await asyncio.gather(run_due(cp.pool, when), run_due(cp.pool, when))
    assert sorted(first + second) == sorted(job.name for job in JOBS)
    assert await run_due(cp.pool, when) == []


async def test_jobs_compute_reports_invoices_and_the_hourly_roll_up(
    cp: ControlPlane, worker: WorkerServer, publisher: EventPublisher
) -> None:
    tenant, _ = await cp.tenant("Reports")
    call = f"call_{uuid.uuid4().hex[:8]}"
    publisher.emit(tenant, call, agent_joined=events_pb2.AgentJoined(agent_id="a", direction=INBOUND))
    for minute in (1, 2, 3):
        publisher.emit(
            tenant, call, usage_minute=events_pb2.UsageMinute(minute_count=minute, direction=INBOUND)
        )
    publisher.emit(tenant, call, tool_called=events_pb2.ToolCalled(tool_name="transfer_call", status="ok"))
    ended = events_pb2.CallEnded(end_reason="transferred", direction=INBOUND)
    ended.duration.FromSeconds(150)
    publisher.publish(
        new_event(tenant, call, "test", event_id=call_event_id(tenant, call, "call.ended"), call_ended=ended)
    )
    assert await publisher.flush(10)
    tenant_id = uuid.UUID(tenant)

    async def projected() -> bool:
        async with cp.pool.acquire() as conn:
            minutes = await conn.fetchval(
                "SELECT count(*) FROM usage_records WHERE tenant_id = $1", tenant_id
            )
            done = await conn.fetchval(
                "SELECT ended_at IS NOT NULL FROM calls WHERE tenant_id = $1", tenant_id
            )
            tools = await conn.fetchval(
                "SELECT count(*) FROM tool_calls JOIN calls ON calls.id = call_id WHERE tenant_id = $1",
                tenant_id,
            )
            return bool(minutes == 3 and done and tools == 1)

    await eventually(projected)
    now = datetime.now(UTC)
    async with cp.pool.acquire() as conn, conn.transaction():
        incremental = await conn.fetchval(
            "SELECT sum(minutes) FROM usage_hourly WHERE tenant_id = $1", tenant_id
        )
        await aggregate_usage(conn, hour_start(now) + timedelta(hours=1))  # recompute the current hour
        assert (
            await conn.fetchval("SELECT sum(minutes) FROM usage_hourly WHERE tenant_id = $1", tenant_id)
            == incremental
            == 3
        )

        await daily_report(conn, now + timedelta(days=1))
        report = await conn.fetchrow("SELECT * FROM daily_reports WHERE tenant_id = $1", tenant_id)
        assert report is not None
        assert (report["calls"], report["minutes"], report["transfer_rate"], report["tool_success_rate"]) == (
            1,
            3,
            1.0,
            1.0,
        )
        assert report["average_handle_seconds"] == 150

        next_month = (now.replace(day=1) + timedelta(days=32)).replace(day=1, hour=1)
        await monthly_invoice(conn, next_month)
        invoice = await conn.fetchrow("SELECT * FROM invoices WHERE tenant_id = $1", tenant_id)
        assert invoice is not None and (invoice["minutes"], invoice["amount_cents"]) == (3, 15)
