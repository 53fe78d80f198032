"""WebhookService: a tenant's event endpoints. The signing secret is generated here and shown once."""

from __future__ import annotations

import secrets
import uuid
from urllib.parse import urlsplit

import asyncpg

from services.control.auth import Permission
from services.control.common import (
    apply_mask,
    check_strings,
    check_text,
    next_token,
    page,
    parse_id,
    timestamp,
)
from services.control.errors import invalid, not_found
from services.control.state import ControlState
from services.control.webhook_deliveries import list_deliveries, redeliver
from services.shared.events import EVENT_TYPES
from services.shared.grpc_server import Context
from services.shared.outbound_http import OutboundPolicy
from voice.v1 import webhooks_pb2, webhooks_pb2_grpc

OUTPUT_ONLY = frozenset({"id", "tenant_id", "create_time"})
EVENT_NAMES = frozenset(EVENT_TYPES.values()) | {"*"}


def to_proto(row: asyncpg.Record) -> webhooks_pb2.Webhook:
    return webhooks_pb2.Webhook(
        id=str(row["id"]),
        tenant_id=str(row["tenant_id"]),
        url=row["url"],
        events=list(row["events"]),
        active=row["active"],
        description=row["description"],
        create_time=timestamp(row["created_at"]),
    )


def _validate(w: webhooks_pb2.Webhook, outbound: OutboundPolicy) -> None:
    check_strings(w, "webhook.")
    check_text(w.url, "webhook.url", max_len=2048, required=True)
    check_text(w.description, "webhook.description", max_len=1000)
    try:
        url = urlsplit(w.url)
        host = url.hostname or ""
    except ValueError:
        raise invalid("webhook.url", "is not a URL") from None
    if not host:
        raise invalid("webhook.url", "is not a URL")
    # The worker delivers events there: a public https URL only (no SSRF; tests allow-list loopback).
    try:
        outbound.check_url(w.url)
    except ValueError as exc:
        raise invalid("webhook.url", str(exc)) from None
    if len(w.events) > len(EVENT_NAMES):
        raise invalid("webhook.events", "too many events")
    for event in w.events:
        if event not in EVENT_NAMES:
            raise invalid(
                "webhook.events", f"unknown event {event!r}; known: {', '.join(sorted(EVENT_NAMES))}"
            )


class WebhookServicer(webhooks_pb2_grpc.WebhookServiceServicer):
    def __init__(self, state: ControlState) -> None:
        self._s = state

    async def ListWebhooks(
        self, request: webhooks_pb2.ListWebhooksRequest, context: Context
    ) -> webhooks_pb2.ListWebhooksResponse:
        p = self._s.principal(context, Permission.READ)
        pg = page(request.page_size, request.page_token)
        rows = await self._s.pool.fetch(
            """SELECT * FROM webhooks
               WHERE tenant_id = $1 AND ($2::timestamptz IS NULL OR (created_at, id) < ($2, $3::uuid))
               ORDER BY created_at DESC, id DESC LIMIT $4""",
            uuid.UUID(p.tenant_id),
            pg.after[0] if pg.after else None,
            pg.after[1] if pg.after else None,
            pg.size + 1,
        )
        return webhooks_pb2.ListWebhooksResponse(
            webhooks=[to_proto(r) for r in rows[: pg.size]], next_page_token=next_token(rows, pg.size)
        )

    async def CreateWebhook(
        self, request: webhooks_pb2.CreateWebhookRequest, context: Context
    ) -> webhooks_pb2.CreateWebhookResponse:
        p = self._s.principal(context, Permission.WRITE)
        w = request.webhook
        _validate(w, OutboundPolicy.from_settings(self._s.settings.outbound_http))
        secret = "whsec_" + secrets.token_urlsafe(32)
        row = await self._s.pool.fetchrow(
            """INSERT INTO webhooks (tenant_id, url, events, active, description, signing_secret)
               VALUES ($1, $2, $3, $4, $5, $6) RETURNING *""",
            uuid.UUID(p.tenant_id),
            w.url,
            sorted(set(w.events)),
            # A new endpoint is active unless asked otherwise (proto3 bool: absent means false).
            True,
            w.description,
            secret,
        )
        assert row is not None
        return webhooks_pb2.CreateWebhookResponse(webhook=to_proto(row), signing_secret=secret)

    async def GetWebhook(
        self, request: webhooks_pb2.GetWebhookRequest, context: Context
    ) -> webhooks_pb2.GetWebhookResponse:
        p = self._s.principal(context, Permission.READ)
        row = await self._s.pool.fetchrow(
            "SELECT * FROM webhooks WHERE id = $1 AND tenant_id = $2",
            parse_id(request.id, "webhook"),
            uuid.UUID(p.tenant_id),
        )
        if row is None:
            raise not_found("webhook")
        return webhooks_pb2.GetWebhookResponse(webhook=to_proto(row))

    async def UpdateWebhook(
        self, request: webhooks_pb2.UpdateWebhookRequest, context: Context
    ) -> webhooks_pb2.UpdateWebhookResponse:
        p = self._s.principal(context, Permission.WRITE)
        webhook_id = parse_id(request.webhook.id, "webhook")
        tenant_id = uuid.UUID(p.tenant_id)
        async with self._s.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "SELECT * FROM webhooks WHERE id = $1 AND tenant_id = $2 FOR UPDATE", webhook_id, tenant_id
            )
            if row is None:
                raise not_found("webhook")
            merged = apply_mask(to_proto(row), request.webhook, request.update_mask, OUTPUT_ONLY)
            _validate(merged, OutboundPolicy.from_settings(self._s.settings.outbound_http))
            row = await conn.fetchrow(
                """UPDATE webhooks
                   SET url = $3, events = $4, active = $5, description = $6, updated_at = NOW()
                   WHERE id = $1 AND tenant_id = $2 RETURNING *""",
                webhook_id,
                tenant_id,
                merged.url,
                sorted(set(merged.events)),
                merged.active,
                merged.description,
            )
        assert row is not None
        return webhooks_pb2.UpdateWebhookResponse(webhook=to_proto(row))

    async def DeleteWebhook(
        self, request: webhooks_pb2.DeleteWebhookRequest, context: Context
    ) -> webhooks_pb2.DeleteWebhookResponse:
        p = self._s.principal(context, Permission.WRITE)
        deleted = await self._s.pool.fetchval(
            "DELETE FROM webhooks WHERE id = $1 AND tenant_id = $2 RETURNING id",
            parse_id(request.id, "webhook"),
            uuid.UUID(p.tenant_id),
        )
        if deleted is None:
            raise not_found("webhook")
        return webhooks_pb2.DeleteWebhookResponse()

    async def ListWebhookDeliveries(
        self, request: webhooks_pb2.ListWebhookDeliveriesRequest, context: Context
    ) -> webhooks_pb2.ListWebhookDeliveriesResponse:
        p = self._s.principal(context, Permission.READ)
        return await list_deliveries(self._s.pool, uuid.UUID(p.tenant_id), request)

    async def RedeliverWebhookDelivery(
        self, request: webhooks_pb2.RedeliverWebhookDeliveryRequest, context: Context
    ) -> webhooks_pb2.RedeliverWebhookDeliveryResponse:
        p = self._s.principal(context, Permission.WRITE)
        attempts = self._s.settings.worker_service.retry.max_retries or 1
        return await redeliver(self._s.pool, uuid.UUID(p.tenant_id), request, attempts)
