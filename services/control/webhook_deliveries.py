"""The webhook delivery log (written by the worker, services/worker/webhooks.py), read and revived
through WebhookService: ListWebhookDeliveries and RedeliverWebhookDelivery."""

from __future__ import annotations

import uuid
from collections import defaultdict

import asyncpg

from services.control.common import next_token, page, parse_id, timestamp
from services.control.errors import failed_precondition, invalid, not_found
from voice.v1 import webhooks_pb2

_STATUS = {
    "pending": webhooks_pb2.WEBHOOK_DELIVERY_STATUS_PENDING,
    "delivered": webhooks_pb2.WEBHOOK_DELIVERY_STATUS_DELIVERED,
    "dead": webhooks_pb2.WEBHOOK_DELIVERY_STATUS_DEAD,
}
_STATUS_NAME = {v: k for k, v in _STATUS.items()}


def _delivery(row: asyncpg.Record, attempts: list[asyncpg.Record]) -> webhooks_pb2.WebhookDelivery:
    d = webhooks_pb2.WebhookDelivery(
        id=str(row["id"]),
        webhook_id=str(row["webhook_id"]),
        event_id=row["event_id"],
        event_type=row["event_type"],
        call_id=row["call_id"],
        status=_STATUS.get(row["status"], webhooks_pb2.WEBHOOK_DELIVERY_STATUS_UNSPECIFIED),
        attempts=row["attempts"],
        next_attempt_time=timestamp(row["next_attempt_at"]) if row["status"] == "pending" else None,
        last_status_code=row["last_status_code"] or 0,
        last_error=row["last_error"] or "",
        create_time=timestamp(row["created_at"]),
        deliver_time=timestamp(row["delivered_at"]),
    )
    for a in attempts:
        attempt = d.attempt_log.add(
            attempt=a["attempt"], status_code=a["status_code"] or 0, error=a["error"] or ""
        )
        attempt.latency.FromMilliseconds(a["latency_ms"])
        attempt.time.FromDatetime(a["created_at"])
    return d


async def _with_attempts(
    pool: asyncpg.Pool, rows: list[asyncpg.Record]
) -> list[webhooks_pb2.WebhookDelivery]:
    attempts: dict[uuid.UUID, list[asyncpg.Record]] = defaultdict(list)
    if rows:
        for a in await pool.fetch(
            "SELECT * FROM webhook_attempts WHERE delivery_id = ANY($1::uuid[]) ORDER BY attempt",
            [r["id"] for r in rows],
        ):
            attempts[a["delivery_id"]].append(a)
    return [_delivery(r, attempts[r["id"]]) for r in rows]


async def list_deliveries(
    pool: asyncpg.Pool, tenant_id: uuid.UUID, request: webhooks_pb2.ListWebhookDeliveriesRequest
) -> webhooks_pb2.ListWebhookDeliveriesResponse:
    webhook_id = parse_id(request.webhook_id, "webhook")
    status = _STATUS_NAME.get(request.status) if request.status else None
    if request.status and status is None:
        raise invalid("status", "unknown delivery status")
    pg = page(request.page_size, request.page_token)
    if (
        await pool.fetchval("SELECT 1 FROM webhooks WHERE id = $1 AND tenant_id = $2", webhook_id, tenant_id)
        is None
    ):
        raise not_found("webhook")
    rows = await pool.fetch(
        """SELECT * FROM webhook_deliveries
           WHERE tenant_id = $1 AND webhook_id = $2 AND ($3::text IS NULL OR status = $3)
             AND ($4::timestamptz IS NULL OR (created_at, id) < ($4, $5::uuid))
           ORDER BY created_at DESC, id DESC LIMIT $6""",
        tenant_id,
        webhook_id,
        status,
        pg.after[0] if pg.after else None,
        pg.after[1] if pg.after else None,
        pg.size + 1,
    )
    return webhooks_pb2.ListWebhookDeliveriesResponse(
        deliveries=await _with_attempts(pool, rows[: pg.size]), next_page_token=next_token(rows, pg.size)
    )


async def redeliver(
    pool: asyncpg.Pool,
    tenant_id: uuid.UUID,
    request: webhooks_pb2.RedeliverWebhookDeliveryRequest,
    attempts: int,
) -> webhooks_pb2.RedeliverWebhookDeliveryResponse:
    """Back to pending now, with `attempts` more tries; a delivery being sent or already pending is left."""
    webhook_id = parse_id(request.webhook_id, "webhook")
    delivery_id = parse_id(request.id, "delivery")
    row = await pool.fetchrow(
        "SELECT * FROM webhook_deliveries WHERE id = $1 AND webhook_id = $2 AND tenant_id = $3",
        delivery_id,
        webhook_id,
        tenant_id,
    )
    if row is None:
        raise not_found("delivery")
    if row["status"] == "pending":
        raise failed_precondition("DELIVERY_PENDING", "the delivery is still being attempted")
    row = await pool.fetchrow(
        """UPDATE webhook_deliveries SET status = 'pending', attempts_limit = attempts + $2,
                  next_attempt_at = NOW(), updated_at = NOW()
           WHERE id = $1 RETURNING *""",
        delivery_id,
        attempts,
    )
    assert row is not None
    (delivery,) = await _with_attempts(pool, [row])
    return webhooks_pb2.RedeliverWebhookDeliveryResponse(delivery=delivery)
