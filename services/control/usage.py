"""UsageService: call minutes by direction over a period, bucketed, and the prepaid minutes left."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from services.control.auth import Permission
from services.control.common import from_timestamp, parse_ref, timestamp
from services.control.errors import invalid
from services.control.state import ControlState
from services.shared.grpc_server import Context
from voice.v1 import usage_pb2, usage_pb2_grpc

_GRANULARITY = {
    usage_pb2.USAGE_GRANULARITY_UNSPECIFIED: "day",
    usage_pb2.USAGE_GRANULARITY_HOUR: "hour",
    usage_pb2.USAGE_GRANULARITY_DAY: "day",
    usage_pb2.USAGE_GRANULARITY_MONTH: "month",
}
# Hour buckets over a long period would be a huge answer; a month of hours is 744.
MAX_HOUR_PERIOD = timedelta(days=62)
MAX_PERIOD = timedelta(days=3 * 366)


def _month_bounds(now: datetime) -> tuple[datetime, datetime]:
    start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = (start + timedelta(days=32)).replace(day=1)
    return start, end


class UsageServicer(usage_pb2_grpc.UsageServiceServicer):
    def __init__(self, state: ControlState) -> None:
        self._s = state

    async def GetUsage(
        self, request: usage_pb2.GetUsageRequest, context: Context
    ) -> usage_pb2.GetUsageResponse:
        p = self._s.principal(context, Permission.READ)
        granularity = _GRANULARITY.get(request.granularity)
        if granularity is None:
            raise invalid("granularity", "unknown granularity")
        month_start, month_end = _month_bounds(datetime.now(UTC))
        try:
            start = from_timestamp(request.start_time) if request.HasField("start_time") else month_start
            end = from_timestamp(request.end_time) if request.HasField("end_time") else month_end
        except (ValueError, OverflowError):
            raise invalid("start_time", "is not a valid time") from None
        if end <= start:
            raise invalid("end_time", "must be after start_time")
        if end - start > MAX_PERIOD:
            raise invalid("end_time", "the period is limited to 3 years")
        if granularity == "hour" and end - start > MAX_HOUR_PERIOD:
            raise invalid("granularity", "hourly usage is limited to periods of 62 days")
        agent_id = parse_ref(request.agent_id, "agent_id") if request.agent_id else None
        tenant_id = uuid.UUID(p.tenant_id)
        # The worker's hourly roll-up (usage_hourly): kept current with every billed minute.
        # `calls` counts calls by the hour of their first minute.
        rows = await self._s.pool.fetch(
            """SELECT date_trunc($4, hour, 'UTC') AS bucket,
                      COALESCE(SUM(minutes) FILTER (WHERE direction = 'inbound'), 0) AS inbound,
                      COALESCE(SUM(minutes) FILTER (WHERE direction = 'outbound'), 0) AS outbound,
                      COALESCE(SUM(calls), 0) AS calls
               FROM usage_hourly
               WHERE tenant_id = $1 AND hour >= date_trunc('hour', $2::timestamptz, 'UTC') AND hour < $3
                 AND ($5::uuid IS NULL OR agent_key = $5)
               GROUP BY bucket ORDER BY bucket""",
            tenant_id,
            start,
            end,
            granularity,
            agent_id,
        )
        credit = await self._s.pool.fetchval(
            """SELECT COALESCE(SUM(minutes_total - minutes_used), 0) FROM credit_buckets
               WHERE tenant_id = $1 AND (expires_at IS NULL OR expires_at > NOW())""",
            tenant_id,
        )
        buckets = [
            usage_pb2.UsageBucket(
                start_time=timestamp(r["bucket"]),
                inbound_minutes=float(r["inbound"]),
                outbound_minutes=float(r["outbound"]),
                calls=r["calls"],
            )
            for r in rows
        ]
        inbound = sum(b.inbound_minutes for b in buckets)
        outbound = sum(b.outbound_minutes for b in buckets)
        return usage_pb2.GetUsageResponse(
            start_time=timestamp(start),
            end_time=timestamp(end),
            inbound_minutes=inbound,
            outbound_minutes=outbound,
            total_minutes=inbound + outbound,
            calls=sum(b.calls for b in buckets),
            buckets=buckets,
            credit_minutes_remaining=float(credit),
        )
