"""Tenant webhooks: signed POSTs of the subscribed events, retried with backoff, every attempt in the
delivery log (readable through WebhookService), dead after the last attempt, revived by redelivery."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator

import pytest

from services.shared.events import new_event
from services.shared.events_publisher import EventPublisher
from services.worker.server import WorkerServer
from tests.control.env import ControlPlane
from tests.worker.conftest import eventually
from tests.worker.receiver import WebhookReceiver
from voice.v1 import events_pb2, webhooks_pb2, webhooks_pb2_grpc

DELIVERED = webhooks_pb2.WEBHOOK_DELIVERY_STATUS_DELIVERED
DEAD = webhooks_pb2.WEBHOOK_DELIVERY_STATUS_DEAD


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[WebhookReceiver, str]]:
    r = WebhookReceiver()
    url = await r.start()
    yield r, url
    await r.stop()


async def register(cp: ControlPlane, tenant: str, url: str, events: list[str]) -> tuple[str, str]:
    stub = webhooks_pb2_grpc.WebhookServiceStub(cp.channel)
    reply = await stub.CreateWebhook(
        webhooks_pb2.CreateWebhookRequest(webhook=webhooks_pb2.Webhook(url=url, events=events)),
        metadata=cp.metadata(tenant),
    )
    return reply.webhook.id, reply.signing_secret


async def deliveries(cp: ControlPlane, tenant: str, webhook_id: str) -> list[webhooks_pb2.WebhookDelivery]:
    stub = webhooks_pb2_grpc.WebhookServiceStub(cp.channel)
    reply = await stub.ListWebhookDeliveries(
        webhooks_pb2.ListWebhookDeliveriesRequest(webhook_id=webhook_id), metadata=cp.metadata(tenant)
    )
    return list(reply.deliveries)


async def test_failing_three_times_then_ok_is_four_signed_logged_attempts(
    cp: ControlPlane,
    worker: WorkerServer,
    publisher: EventPublisher,
    receiver: tuple[WebhookReceiver, str],
) -> None:
    r, url = receiver
    tenant, _ = await cp.tenant("Hooks")
    webhook_id, secret = await register(cp, tenant, f"{url}/ended", ["call.ended"])
    r.secrets["/ended"] = secret
    r.failures["/ended"] = [500, 503, 500]
    call = f"call_{uuid.uuid4().hex[:8]}"
    publisher.emit(tenant, call, agent_joined=events_pb2.AgentJoined(agent_id="a"))  # not subscribed
    ended = new_event(tenant, call, "test", call_ended=events_pb2.CallEnded(end_reason="caller_hangup"))
    publisher.publish(ended)
    assert await publisher.flush(10)

    async def delivered() -> bool:
        found = await deliveries(cp, tenant, webhook_id)
        return bool(found) and found[0].status == DELIVERED

    await eventually(delivered)
    (delivery,) = await deliveries(cp, tenant, webhook_id)
    assert delivery.attempts == 4 and delivery.event_type == "call.ended"
    assert [a.status_code for a in delivery.attempt_log] == [500, 503, 500, 200]
    assert [x.signed for x in r.received] == [True] * 4
    first = r.received[0]
    assert first.headers["x-voice-event-id"] == ended.event_id
    assert json.loads(first.body)["callEnded"]["endReason"] == "caller_hangup"


async def test_dead_after_the_last_attempt_and_redelivered_on_request(
    cp: ControlPlane,
    worker: WorkerServer,
    publisher: EventPublisher,
    receiver: tuple[WebhookReceiver, str],
) -> None:
    r, url = receiver
    tenant, _ = await cp.tenant("Dead hooks")
    webhook_id, secret = await register(cp, tenant, f"{url}/down", [])
    r.secrets["/down"] = secret
    r.failures["/down"] = [500] * 5  # every attempt of the first cycle fails
    publisher.emit(tenant, "c1", usage_minute=events_pb2.UsageMinute(minute_count=1))
    assert await publisher.flush(10)

    async def dead() -> bool:
        found = await deliveries(cp, tenant, webhook_id)
        return bool(found) and found[0].status == DEAD

    await eventually(dead)
    (delivery,) = await deliveries(cp, tenant, webhook_id)
    assert delivery.attempts == 5
    stub = webhooks_pb2_grpc.WebhookServiceStub(cp.channel)
    await stub.RedeliverWebhookDelivery(
        webhooks_pb2.RedeliverWebhookDeliveryRequest(webhook_id=webhook_id, id=delivery.id),
        metadata=cp.metadata(tenant),
    )

    async def delivered() -> bool:
        return (await deliveries(cp, tenant, webhook_id))[0].status == DELIVERED

    await eventually(delivered)
    assert (await deliveries(cp, tenant, webhook_id))[0].attempts == 6
