"""The worker process killed with SIGKILL in the middle of a backlog and started again: every event is
applied exactly once (usage records, the hourly roll-up, credits), nothing lost, nothing doubled."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from services.shared.events_publisher import EventPublisher
from tests.control.env import ControlPlane
from tests.events.nats_server import PrivateNats
from tests.worker.conftest import eventually
from voice.v1 import common_pb2, events_pb2

CALLS, MINUTES = 40, 10


@pytest.fixture
async def own_nats(tmp_path: Path) -> AsyncIterator[PrivateNats]:
    server = PrivateNats(tmp_path / "nats")  # not the session worker's: only the process below consumes
    await server.start()
    yield server
    await server.stop()


async def start_worker(cp: ControlPlane, nats: PrivateNats, log: Path) -> asyncio.subprocess.Process:
    env = {
        **os.environ,
        "DATABASE_URL": cp.settings.database_url,
        "NATS_URL": nats.url,
        "WORKER_SERVICE__GRPC_PORT": "0",
        "WORKER_SERVICE__METRICS_PORT": "0",
        # What the killed process held unacked comes back after this.
        "WORKER_SERVICE__ACK_WAIT_SECONDS": "3",
        "INTERNAL_TLS__MODE": "plaintext",
        "LOG_FORMAT": "text",
    }
    out = log.open("ab")
    try:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "services.worker", env=env, stdout=out, stderr=out
        )
    finally:
        out.close()


async def test_sigkill_mid_backlog_loses_and_doubles_nothing(
    cp: ControlPlane, own_nats: PrivateNats, tmp_path: Path
) -> None:
    tenant, _ = await cp.tenant("Crash")
    settings = cp.settings.model_copy(
        update={
            "nats_url": own_nats.url,
            "events": cp.settings.events.model_copy(update={"spool_dir": str(tmp_path / "spool")}),
        }
    )
    publisher = EventPublisher(settings, "test-crash")
    for c in range(CALLS):
        for m in range(1, MINUTES + 1):
            minute = events_pb2.UsageMinute(minute_count=m, direction=common_pb2.CALL_DIRECTION_INBOUND)
            publisher.emit(tenant, f"crash_{c}", usage_minute=minute)
    assert await publisher.flush(30)
    await publisher.close()
    total = CALLS * MINUTES

    async def applied() -> int:
        return int(
            await cp.pool.fetchval(
                "SELECT count(*) FROM usage_records WHERE tenant_id = $1", uuid.UUID(tenant)
            )
        )

    log = tmp_path / "worker.log"
    first = await start_worker(cp, own_nats, log)
    try:
        await eventually(lambda: applied_at_least(applied, 30), within_s=60)
    finally:
        first.send_signal(signal.SIGKILL)
        await first.wait()
    assert await applied() < total, "the backlog was done before the kill; nothing was tested"

    second = await start_worker(cp, own_nats, log)
    try:
        await eventually(lambda: applied_at_least(applied, total), within_s=90)
        await asyncio.sleep(1.0)  # anything redelivered after the kill is handled by now
    finally:
        second.send_signal(signal.SIGTERM)
        await second.wait()
    tenant_id = uuid.UUID(tenant)
    assert await applied() == total
    hourly = await cp.pool.fetchrow(
        "SELECT sum(minutes) AS minutes, sum(calls) AS calls FROM usage_hourly WHERE tenant_id = $1",
        tenant_id,
    )
    assert hourly is not None and (hourly["minutes"], hourly["calls"]) == (total, CALLS)
    used = await cp.pool.fetchval(
        "SELECT sum(minutes_used) FROM credit_buckets WHERE tenant_id = $1", tenant_id
    )
    debited = await cp.pool.fetchval(
        "SELECT sum(credits_debited) FROM usage_records WHERE tenant_id = $1", tenant_id
    )
    assert used == debited == 60  # the 60 trial minutes, then no credit left to take
    records = await cp.pool.fetchval("SELECT count(*) FROM calls WHERE tenant_id = $1", tenant_id)
    assert records == CALLS


async def applied_at_least(applied: object, n: int) -> bool:
    assert callable(applied)
    return bool(await applied() >= n)
