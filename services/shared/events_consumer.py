"""Durable pull consumers of the events stream: explicit ack, nak with backoff, poison into a dead-letter
stream, progress reports for long handlers.

    async def on_turn(delivery: Delivery) -> None:
        await store(delivery.event)          # returns: acked; raises: nak'ed with backoff
        # or: await delivery.in_progress() while working long; raise Poison("why") to dead-letter it

    sub = await subscribe(bus, "transcripts", type_filter("transcript.turn"), on_turn, concurrency=2)
    ...
    await sub.stop()

A handler that returns has its event acked; one that raises is nak'ed with exponential backoff and
jitter, until `max_deliver` deliveries, then the event is dead-lettered: published to
`voice_dlq.<durable>.<tenant>.<call>.<type>` (stream `<NATS_STREAM>_DLQ`, headers `Voice-Dead-Reason`,
`Voice-Original-Subject`, `Voice-Deliveries`) and terminated, so it never blocks the events behind it.
Malformed payloads (not a voice.v1.Event, or no id/type/tenant) and `Poison` go there at once, with the
reason logged. Handlers must be idempotent: an event is redelivered when its ack is lost or the
handler's process dies (after `ack_wait`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import nats.errors
import nats.js.errors
from google.protobuf.message import DecodeError
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from services.shared.events import DEAD_LETTER_PREFIX, SUBJECT_PREFIX, EventBus
from voice.v1 import events_pb2

log = logging.getLogger(__name__)

# Events asked for per pull request at most, and how long a request waits for events to arrive.
PULL_EXPIRES_S = 5.0


class Poison(Exception):
    """Raised by a handler for an event it can never process: dead-lettered at once, with this reason."""


@dataclass
class Delivery:
    event: events_pb2.Event
    msg: Msg
    # 1 on the first delivery.
    attempt: int
    settled: bool = False

    async def ack(self) -> None:
        self.settled = True
        await self.msg.ack()

    async def nak(self, delay_s: float | None = None) -> None:
        self.settled = True
        await self.msg.nak(delay=delay_s)

    async def in_progress(self) -> None:
        """Resets the ack timer: the handler is still working on it."""
        await self.msg.in_progress()


Handler = Callable[[Delivery], Awaitable[None]]


@dataclass
class ConsumerStats:
    handled: int = 0
    failed: int = 0
    dead_lettered: int = 0
    last_fetch: float = 0.0


@dataclass(frozen=True)
class Backoff:
    """Exponential with full jitter: attempt n waits up to min(cap, base * 2**(n-1)), at least base/2."""

    base_s: float = 1.0
    cap_s: float = 60.0

    def delay(self, attempt: int) -> float:
        ceiling = min(self.cap_s, self.base_s * 2 ** max(attempt - 1, 0))
        return random.uniform(min(self.base_s / 2, ceiling), ceiling)


@dataclass
class Subscription:
    bus: EventBus
    durable: str
    filter_subject: str | list[str]
    handler: Handler
    concurrency: int
    max_deliver: int
    backoff: Backoff
    stats: ConsumerStats = field(default_factory=ConsumerStats)
    on_outcome: Callable[[str, str], None] | None = None  # (durable, "handled"|"failed"|"dead_lettered")
    # Shared by the consumers of one queue, so the queue's concurrency holds across them.
    slots: asyncio.Semaphore | None = None
    _task: asyncio.Task[None] | None = None
    _handlers: set[asyncio.Task[None]] = field(default_factory=set)
    _stopping: bool = False
    _consumer_ok: bool = False

    @property
    def running(self) -> bool:
        """Fetching from the stream recently (a consumer cut off from NATS is not running)."""
        return (
            self._task is not None
            and not self._task.done()
            and self.bus.nc.is_connected
            and time.monotonic() - self.stats.last_fetch < 10.0
        )

    async def lag(self) -> int:
        """Events not yet delivered plus delivered but unacked."""
        info = await self.bus.js.consumer_info(self.bus.stream, self.durable)
        return int(info.num_pending or 0) + int(info.num_ack_pending or 0)

    async def stop(self, drain_s: float = 5.0) -> None:
        """Stops fetching; handlers running get `drain_s` to finish (unfinished ones are redelivered)."""
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._handlers:
            _done, pending = await asyncio.wait(self._handlers, timeout=drain_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def _run(self, config: ConsumerConfig) -> None:
        """A continuous pull: one pull request at a time for up to `PULL_BATCH` events, which the stream
        delivers as they arrive (no waiting for a batch to fill: an idle consumer hands an event over in
        a millisecond, a busy one gets them in bulk). A request expires after `PULL_EXPIRES_S`; then, or
        once fully delivered, the next one goes out."""
        slots = self.slots or asyncio.Semaphore(self.concurrency)
        nc = self.bus.nc
        inbox = nc.new_inbox()
        arrived: asyncio.Queue[Msg] = asyncio.Queue()

        async def on_message(msg: Msg) -> None:
            arrived.put_nowait(msg)

        sub = await nc.subscribe(inbox, cb=on_message)
        request_subject = f"$JS.API.CONSUMER.MSG.NEXT.{self.bus.stream}.{self.durable}"
        batch = max(self.concurrency * 4, 8)
        outstanding, deadline, failures = 0, 0.0, 0
        try:
            while not self._stopping:
                try:
                    if outstanding <= 0 or time.monotonic() > deadline:
                        await self._ensure_consumer(config)
                        request = {"batch": batch, "expires": int(PULL_EXPIRES_S * 1e9)}
                        await nc.publish(request_subject, json.dumps(request).encode(), reply=inbox)
                        outstanding, deadline = batch, time.monotonic() + PULL_EXPIRES_S + 1.0
                        self.stats.last_fetch = time.monotonic()
                    try:
                        msg = await asyncio.wait_for(arrived.get(), max(deadline - time.monotonic(), 0.01))
                    except TimeoutError:
                        outstanding = 0  # the request is gone (expired, or the server restarted)
                        continue
                    self.stats.last_fetch = time.monotonic()
                    status = msg.headers.get("Status") if msg.headers else None
                    if status is not None and not msg.data:
                        if status != "100":  # 404/408: request done or expired; 409: consumer changed
                            outstanding = 0
                            if status == "409":
                                self._consumer_ok = False
                        continue
                    outstanding -= 1
                    failures = 0
                    await slots.acquire()
                    task = asyncio.create_task(self._handle(msg))
                    self._handlers.add(task)
                    task.add_done_callback(self._handlers.discard)
                    task.add_done_callback(lambda _: slots.release())
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    failures += 1
                    outstanding = 0
                    self._consumer_ok = False
                    if failures == 1 or failures % 20 == 0:
                        log.warning(
                            "consumer %s cannot pull (%s: %s); retrying",
                            self.durable,
                            type(exc).__name__,
                            exc,
                        )
                    await asyncio.sleep(min(0.2 * failures, 2.0))
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _ensure_consumer(self, config: ConsumerConfig) -> None:
        """Creates the durable consumer, or updates it to this config (a new release may filter other
        subjects); where the server refuses the update, the existing consumer is used as it is."""
        if self._consumer_ok:
            return
        try:
            await self.bus.js.add_consumer(self.bus.stream, config=config)
        except nats.js.errors.BadRequestError as exc:
            log.warning("consumer %s kept its previous configuration: %s", self.durable, exc.description)
            await self.bus.js.consumer_info(self.bus.stream, self.durable)
        self._consumer_ok = True

    async def _handle(self, msg: Msg) -> None:
        attempt = int(msg.metadata.num_delivered or 1)
        try:
            event = events_pb2.Event.FromString(msg.data)
        except DecodeError as exc:
            await self._dead_letter(msg, None, attempt, f"malformed payload: not a voice.v1.Event ({exc})")
            return
        if not event.event_id or not event.type or not event.tenant_id or event.WhichOneof("payload") is None:
            reason = "malformed payload: event_id, type, tenant or payload missing"
            await self._dead_letter(msg, event, attempt, reason)
            return
        delivery = Delivery(event, msg, attempt)
        try:
            await self.handler(delivery)
        except Poison as exc:
            await self._dead_letter(msg, event, attempt, f"poison: {exc}")
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.stats.failed += 1
            self._outcome("failed")
            if attempt >= self.max_deliver:
                await self._dead_letter(
                    msg, event, attempt, f"failed {attempt} times, last: {type(exc).__name__}: {exc}"
                )
                return
            delay = self.backoff.delay(attempt)
            log.warning(
                "handler %s failed on %s (attempt %d), retrying in %.2f s: %s",
                self.durable,
                event.type,
                attempt,
                delay,
                exc,
                exc_info=not isinstance(exc, ConnectionError | TimeoutError),
                extra={"data": {"event_id": event.event_id, "call_id": event.call_id}},
            )
            if not delivery.settled:
                with contextlib.suppress(Exception):
                    await msg.nak(delay=delay)
            return
        self.stats.handled += 1
        self._outcome("handled")
        if not delivery.settled:
            with contextlib.suppress(Exception):
                await msg.ack()

    async def _dead_letter(self, msg: Msg, event: events_pb2.Event | None, attempt: int, reason: str) -> None:
        self.stats.dead_lettered += 1
        self._outcome("dead_lettered")
        log.error(
            "event dead-lettered by %s: %s",
            self.durable,
            reason,
            extra={
                "data": {
                    "subject": msg.subject,
                    "event_id": event.event_id if event else "",
                    "deliveries": attempt,
                }
            },
        )
        rest = msg.subject[len(SUBJECT_PREFIX) + 1 :] if msg.subject.startswith(SUBJECT_PREFIX + ".") else "x"
        seq = msg.metadata.sequence.stream
        headers = {
            "Nats-Msg-Id": f"{self.durable}:{seq}",
            "Voice-Dead-Reason": reason[:500].replace("\r", " ").replace("\n", " "),
            "Voice-Original-Subject": msg.subject,
            "Voice-Deliveries": str(attempt),
        }
        try:
            subject = f"{DEAD_LETTER_PREFIX}.{self.durable}.{rest}"
            await self.bus.js.publish(subject, msg.data, headers=headers)
        except Exception:
            # Not terminated: it comes back and is dead-lettered again once the DLQ stream answers.
            log.exception("dead-letter publish failed; the event will be redelivered")
            with contextlib.suppress(Exception):
                await msg.nak(delay=self.backoff.delay(attempt))
            return
        with contextlib.suppress(Exception):
            await msg.term()

    def _outcome(self, outcome: str) -> None:
        if self.on_outcome is not None:
            self.on_outcome(self.durable, outcome)


async def subscribe(
    bus: EventBus,
    durable: str,
    filter_subject: str | list[str],
    handler: Handler,
    *,
    concurrency: int = 2,
    ack_wait_s: float = 30.0,
    max_deliver: int = 5,
    backoff: Backoff | None = None,
    deliver_new_only: bool = False,
    on_outcome: Callable[[str, str], None] | None = None,
    slots: asyncio.Semaphore | None = None,
) -> Subscription:
    """Creates (or binds to) the durable pull consumer `durable` on `filter_subject` (one subject filter or
    several) and starts handling
    its events, `concurrency` at a time. A new durable starts at the beginning of the stream unless
    `deliver_new_only`. Consumers given the same `slots` share its concurrency (a queue)."""
    config = ConsumerConfig(
        durable_name=durable,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=ack_wait_s,
        max_deliver=-1,  # the handler loop decides when to dead-letter, never the server silently
        max_ack_pending=max(concurrency * 4, 64),
        filter_subject=filter_subject if isinstance(filter_subject, str) else None,
        filter_subjects=None if isinstance(filter_subject, str) else list(filter_subject),
        deliver_policy=DeliverPolicy.NEW if deliver_new_only else DeliverPolicy.ALL,
    )
    sub = Subscription(
        bus,
        durable,
        filter_subject,
        handler,
        concurrency,
        max_deliver,
        backoff or Backoff(),
        on_outcome=on_outcome,
        slots=slots,
    )
    sub._task = asyncio.create_task(sub._run(config), name=f"consumer-{durable}")
    return sub
