"""The bridge process: the SIP trunk user agent, the calls it carries, and CallControlService.

Inbound: the dialled number picks the tenant and agent (control-plane routing data, cached); an
unknown number is refused with 404, a suspended tenant with 403, a tenant without credit with 503 and
one at its concurrency limit with 486, before anything is created. Otherwise the call rings, is
answered (at once, or by `Answer` when auto-answer is off) and handed to the agent over Converse.

Outbound (`Dial`, from the control plane's CreateCall): the call is placed on the trunk; busy, no
answer (ring timeout), rejected and unreachable end it as `call.failed` with that reason.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable

import asyncpg
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry, Counter, Gauge

from services.agent.providers.tts.triton import TritonTextToSpeech
from services.bridge.briefing import BriefingVoice, Synthesizer, briefing_text, speak
from services.bridge.call import BridgeCall, CallDeps, CallInfo, EventSink
from services.bridge.media import RtpSession
from services.bridge.sip.message import SipMessage, uri_user
from services.bridge.sip.sdp import (
    Codec,
    MediaDescription,
    SdpError,
    answer_direction,
    build_sdp,
    choose_codec,
    default_offer_codecs,
    parse_sdp,
)
from services.bridge.sip.ua import InboundCall, OutboundCall, SipCall, UserAgent, allows, sipfrag_status
from services.bridge.state import CallState
from services.bridge.store import CallStore
from services.control.routing import NumberRoutes, agent_records_calls
from services.shared.call_slots import CallSlots
from services.shared.recordings.writer import RecordingWriter
from services.shared.settings import Settings
from voice.v1 import agent_session_pb2 as pb
from voice.v1 import agent_session_pb2_grpc, events_pb2

log = logging.getLogger(__name__)

DTMF_CODEC = Codec(101, "telephone-event", 8000, 1, "0-16")


class Rejected(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class BridgeMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.illegal = Counter(
            "bridge_illegal_transitions",
            "Refused call state transitions",
            ["from_state", "to_state"],
            registry=registry,
        )
        self.errors = Counter("errors_total", "Errors by kind", ["service", "type"], registry=registry)
        self.rejected = Counter(
            "bridge_calls_rejected", "Inbound calls refused", ["status"], registry=registry
        )
        self.calls = Counter("bridge_calls", "Calls carried", ["direction"], registry=registry)
        self.refers = Counter(
            "bridge_transfers_by_refer", "Blind transfers the peer carried out", registry=registry
        )
        self.briefings = Counter(
            "bridge_transfer_briefings", "Warm-transfer briefings spoken", registry=registry
        )
        self.active = Gauge("bridge_active_calls", "Calls in progress on this instance", registry=registry)


class Bridge:
    """Owns the UA and the live calls of this instance."""

    def __init__(
        self,
        settings: Settings,
        *,
        redis: aioredis.Redis,
        pool: asyncpg.Pool,
        agent_stub: agent_session_pb2_grpc.AgentSessionServiceAsyncStub,
        events: EventSink,
        registry: CollectorRegistry,
        instance: str = "bridge",
        recordings: RecordingWriter | None = None,
    ) -> None:
        self.settings = settings
        self.sip_settings = settings.webrtc_bridge.sip
        self.metrics = BridgeMetrics(registry)
        self.routes = NumberRoutes(pool)
        self.slots = CallSlots(redis, ttl_seconds=self.sip_settings.slot_ttl_seconds)
        self.store = CallStore(redis)
        self.calls: dict[str, BridgeCall] = {}
        self._answer: dict[str, asyncio.Event] = {}
        self.deps = CallDeps(
            agent_stub=agent_stub,
            store=self.store,
            slots=self.slots,
            events=events,
            timeouts=settings.webrtc_bridge.timeouts,
            illegal=self.metrics.illegal,
            errors=self.metrics.errors,
            instance=instance,
            transfer=self.transfer,
            recordings=recordings,
            records_calls=lambda tenant_id, agent_id: agent_records_calls(pool, tenant_id, agent_id),
        )
        self.ua = UserAgent(self.sip_settings.host, self._on_invite)
        self.on_call: Callable[[BridgeCall], None] | None = None  # tests and the demo observe calls
        self._tts: TritonTextToSpeech | None = None  # speaks warm-transfer briefings; made on first use
        password = self.sip_settings.auth_password
        if self.sip_settings.auth_username and password is not None:
            self.ua.credentials = (self.sip_settings.auth_username, password.get_secret_value())
        self.registered = asyncio.Event()  # set while the trunk registration is current

    @property
    def media_host(self) -> str:
        return self.sip_settings.advertised_host or self.sip_settings.rtp_host

    async def start(self) -> None:
        await self.ua.start(self.sip_settings.port)
        if self.sip_settings.advertised_host:
            self.ua.host = self.sip_settings.advertised_host
        if self.sip_settings.register_with_trunk:
            self.ua.spawn(self._keep_registered())

    async def _keep_registered(self) -> None:
        """REGISTER with the trunk and refresh at 80 % of the granted Expires; failures are logged and
        retried every 30 s (calls in and out do not depend on it)."""
        while True:
            wait = 30.0
            try:
                resp = await self.ua.register(
                    self.sip_settings.trunk, expires=self.sip_settings.register_expires
                )
                if 200 <= resp.status < 300:
                    granted = resp.get("Expires")
                    expires = int(granted) if granted.isdigit() else self.sip_settings.register_expires
                    wait = max(30.0, expires * 0.8)
                    self.registered.set()
                    log.info("registered with the trunk", extra={"data": {"expires": expires}})
                else:
                    self.registered.clear()
                    log.warning("REGISTER refused", extra={"data": {"status": resp.status}})
            except (TimeoutError, OSError):
                self.registered.clear()
                log.warning("REGISTER not answered")
            await asyncio.sleep(wait)

    async def close(self) -> None:
        for call in list(self.calls.values()):
            await call.end("shutdown")
        await self.ua.close()
        if self._tts is not None:
            await self._tts.close()

    def _track(self, call: BridgeCall) -> None:
        self.calls[call.call_id] = call
        self.metrics.calls.labels(call.info.direction).inc()
        self.metrics.active.set(len(self.calls))
        if self.on_call is not None:
            self.on_call(call)

        async def untrack() -> None:
            await call.ended.wait()
            # Keep it answerable (Get/Hangup say "ended") for a moment, then forget it.
            await asyncio.sleep(5.0)
            self.calls.pop(call.call_id, None)
            self._answer.pop(call.call_id, None)
            self.metrics.active.set(len(self.calls))

        self.ua.spawn(untrack())

    def _new_media(self, call: BridgeCall | None) -> RtpSession:
        def on_dtmf(digit: str, duration_ms: int) -> None:
            if call is not None:
                call.on_dtmf(digit, duration_ms)

        return RtpSession(
            self.sip_settings.rtp_host,
            on_dtmf=on_dtmf,
            jitter_initial_ms=self.sip_settings.jitter_initial_delay_ms,
        )

    # ---- inbound

    async def _route(self, dialled: str) -> tuple[str, str]:
        try:
            route = await self.routes.get(dialled)
        except Exception as exc:
            log.exception("routing data unavailable")
            raise Rejected(503, "Service Unavailable") from exc
        if route is None or route.agent_id is None:
            raise Rejected(404, "Not Found")
        if route.tenant_status != "active":
            raise Rejected(403, "Forbidden")
        if route.credit_minutes < self.settings.control.min_credit_minutes:
            raise Rejected(503, "Service Unavailable")
        return route.tenant_id, route.agent_id

    async def _on_invite(self, sip: InboundCall) -> None:
        dialled = uri_user(sip.invite.uri) or uri_user(sip.to_uri)
        caller = uri_user(sip.from_uri)
        call_id = str(uuid.uuid4())
        admitted = False
        try:
            offer, codec = self._negotiate(sip.invite.body)
            tenant_id, agent_id = await self._route(dialled)
            route = await self.routes.get(dialled)
            assert route is not None
            if not await self.slots.admit(tenant_id, call_id, route.max_concurrent_calls):
                raise Rejected(486, "Busy Here")
            admitted = True
        except Rejected as rej:
            self.metrics.rejected.labels(str(rej.status)).inc()
            log.info("inbound call refused", extra={"data": {"to": dialled, "status": rej.status}})
            if admitted:
                await self.slots.release(call_id)
            sip.respond(rej.status, rej.reason)
            return
        if sip.ended.done():  # CANCELled while we looked it up
            await self.slots.release(call_id)
            return
        info = CallInfo(
            call_id, tenant_id, agent_id, "inbound", caller, dialled, {"sip_call_id": sip.call_id}
        )
        call = BridgeCall(info, self.deps)
        self._track(call)
        call.watch(sip)
        sip.respond(180, "Ringing")
        await call.ringing()
        try:
            async with asyncio.timeout(self.settings.webrtc_bridge.timeouts.call_setup_timeout_seconds):
                await self._answer_inbound(call, sip, offer, codec)
        except TimeoutError:
            if not call.ended.is_set() and call.state == CallState.RINGING:
                sip.respond(480, "Temporarily Unavailable")
                await call.end("setup_timeout")

    def _negotiate(self, body: bytes) -> tuple[MediaDescription, Codec]:
        if not body:
            raise Rejected(488, "Not Acceptable Here")  # offerless INVITE: not supported
        try:
            offer = parse_sdp(body)
        except SdpError as exc:
            raise Rejected(488, "Not Acceptable Here") from exc
        codec = choose_codec(offer, tuple(self.sip_settings.codecs))
        if codec is None or offer.port == 0:
            raise Rejected(488, "Not Acceptable Here")
        return offer, codec

    async def _answer_inbound(
        self, call: BridgeCall, sip: InboundCall, offer: MediaDescription, codec: Codec
    ) -> None:
        if not self.sip_settings.auto_answer:
            event = self._answer.setdefault(call.call_id, asyncio.Event())
            ended = asyncio.ensure_future(call.ended.wait())
            answered = asyncio.ensure_future(event.wait())
            await asyncio.wait({ended, answered}, return_when=asyncio.FIRST_COMPLETED)
            ended.cancel()
            answered.cancel()
            if call.ended.is_set():
                return
        media = self._new_media(call)
        await media.start()
        dtmf = offer.dtmf
        media.configure(codec, (offer.address, offer.port), dtmf.payload_type if dtmf else None)
        answer_codecs = [codec] + ([dtmf] if dtmf else [])
        body = build_sdp(self.media_host, media.port, answer_codecs, session_id=id(call) & 0xFFFFFFFF)
        if call.ended.is_set():
            media.close()
            return
        sip.respond(200, "OK", body)
        if not await sip.wait_ack():
            media.close()
            await call.end("ack_timeout")
            return
        self._attach_sdp(call, sip, media, answer_codecs)
        await call.connected(sip, media)

    def _attach_sdp(self, call: BridgeCall, sip: SipCall, media: RtpSession, codecs: list[Codec]) -> None:
        """Re-INVITEs of this leg: ours (hold/resume) and the phone's (it holds us, or its media moved)."""
        version = [1]

        def offer(direction: str) -> bytes:
            version[0] += 1
            session = id(call) & 0xFFFFFFFF
            return build_sdp(
                self.media_host,
                media.port,
                codecs,
                session_id=session,
                version=version[0],
                direction=direction,
            )

        def on_reinvite(msg: SipMessage) -> bytes | None:
            try:
                new = parse_sdp(msg.body) if msg.body else None
            except SdpError:
                return None
            direction = "sendrecv"
            if new is not None:
                if media.codec is not None and all(
                    c.payload_type != media.codec.payload_type for c in new.codecs
                ):
                    return None  # a codec change mid-call is not supported
                if (new.address, new.port) != media.remote and new.port:
                    media.update_remote((new.address, new.port))
                direction = answer_direction(new.direction)
            return offer(direction)

        call.offer_sdp = offer
        sip.on_reinvite = on_reinvite

    def answer(self, call_id: str) -> bool:
        call = self.calls.get(call_id)
        if call is None or call.state != CallState.RINGING:
            return False
        self._answer.setdefault(call_id, asyncio.Event()).set()
        return True

    # ---- outbound

    def target_uri(self, number: str) -> str:
        user = number.removeprefix("ext:")
        return f"sip:{user}@{self.sip_settings.trunk}"

    async def dial(self, info: CallInfo, ring_timeout: float, max_calls: int | None) -> BridgeCall:
        """Places the call; returns once it is DIALING (the rest happens in the background)."""
        # CreateCall already took the slot; a Dial from elsewhere takes one here.
        held = await self.slots.refresh(info.call_id)
        if not held and (
            max_calls is None or not await self.slots.admit(info.tenant_id, info.call_id, max_calls)
        ):
            raise Rejected(486, "the tenant has no free concurrent-call slot")
        call = BridgeCall(info, self.deps)
        self._track(call)
        await call.ringing()
        self.ua.spawn(self._place(call, ring_timeout))
        return call

    async def _place(self, call: BridgeCall, ring_timeout: float) -> None:
        media = self._new_media(call)
        await media.start()
        offer = build_sdp(
            self.media_host,
            media.port,
            default_offer_codecs(tuple(self.sip_settings.codecs)),
            session_id=id(call) & 0xFFFFFFFF,
        )
        from_uri = f"sip:{call.info.from_number}@{self.ua.host}:{self.ua.port}"
        try:
            sip = await self.ua.dial(
                self.target_uri(call.info.to_number),
                from_uri,
                offer,
                ring_timeout=ring_timeout,
                on_created=call.set_dialing,
            )
        except Exception:
            log.exception("dial failed", extra={"data": {"call_id": call.call_id}})
            media.close()
            await call.end("error", failed=True)
            return
        final = sip.final.result()
        if final.status >= 300 or call.ended.is_set():
            media.close()
            await call.end(_failure_reason(final.status, sip), failed=True)
            return
        try:
            answer = parse_sdp(sip.remote_sdp)
            codec = choose_codec(answer, tuple(self.sip_settings.codecs))
            if codec is None:
                raise SdpError("no common codec in the answer")
        except SdpError:
            media.close()
            await sip.hangup("incompatible_media")
            await call.end("incompatible_media", failed=True)
            return
        dtmf = answer.dtmf
        media.configure(codec, (answer.address, answer.port), dtmf.payload_type if dtmf else None)
        self._attach_sdp(call, sip, media, [codec] + ([dtmf] if dtmf else []))
        await call.connected(sip, media)

    # ---- transfer

    async def transfer(self, call: BridgeCall, request: pb.TransferRequest, announce: bool = True) -> None:
        """Blind/warm transfer by the bridge (B2BUA): dial the target, and once it answers relay the
        caller to it and let the agent go. If the target does not answer the agent keeps the call."""
        if not await call.move(CallState.TRANSFERRING):
            return
        if announce:
            call.emit(
                call_transfer_requested=events_pb2.CallTransferRequested(
                    type=request.type, target=request.target, context=request.context, reason=request.reason
                )
            )
        if request.type == pb.TRANSFER_TYPE_BLIND and call.leg is not None and allows(call.leg, "REFER"):
            if await self._refer(call, call.leg, request):
                return
            if call.ended.is_set():
                return
            # The peer could not transfer the caller itself: the bridge dials and relays instead.
        media = self._new_media(None)
        await media.start()
        offer = build_sdp(
            self.media_host,
            media.port,
            default_offer_codecs(tuple(self.sip_settings.codecs)),
            session_id=id(media) & 0xFFFFFFFF,
        )
        from_number = call.info.from_number if call.info.direction == "inbound" else call.info.to_number
        from_uri = f"sip:{from_number}@{self.ua.host}:{self.ua.port}"
        target: SipCall | None = None
        try:
            leg = await self.ua.dial(self.target_uri(request.target), from_uri, offer, ring_timeout=30.0)
            if leg.final.result().status < 300 and not call.ended.is_set():
                answer = parse_sdp(leg.remote_sdp)
                codec = choose_codec(answer, tuple(self.sip_settings.codecs))
                if codec is None:
                    await leg.hangup("incompatible_media")
                else:
                    dtmf = answer.dtmf
                    media.configure(codec, (answer.address, answer.port), dtmf.payload_type if dtmf else None)
                    target = leg
        except (SdpError, OSError):
            log.exception("transfer failed", extra={"data": {"call_id": call.call_id}})
        if target is None or call.ended.is_set():
            media.close()
            if target is not None:
                await target.hangup("caller_gone")
            if not call.ended.is_set():
                await call.move(CallState.CONVERSING)
            return
        # Let the agent finish what it is saying ("I'm transferring you now") before the caller goes.
        await call.playout_drained(8.0)
        if request.type == pb.TRANSFER_TYPE_WARM:
            await self._brief(call, media, request)
            if call.ended.is_set() or target.ended.done():
                media.close()
                await target.hangup("caller_gone")
                if not call.ended.is_set():  # the target hung up while briefed: the agent keeps the call
                    await call.move(CallState.CONVERSING)
                return
        call.relay_leg = target
        call.relay_to = media
        call.drop_agent("transferred")
        call.emit(
            call_transferred=events_pb2.CallTransferred(transferred_to=request.target, type=request.type)
        )
        await call.record_end("transferred")

        async def target_gone() -> None:
            await asyncio.shield(target.ended)
            await call.end("transferred")

        self.ua.spawn(target_gone())

    async def _refer(self, call: BridgeCall, leg: SipCall, request: pb.TransferRequest) -> bool:
        """Blind transfer by REFER (RFC 3515) when the caller's side (a trunk or PBX) takes it: the
        peer calls the target itself and reports progress by NOTIFY (message/sipfrag). True once a
        2xx sipfrag came (the bridge then hangs up its leg and the agent leaves); False when the REFER
        is refused, a final failure is notified, or nothing final comes within 64*T1."""
        progress: asyncio.Queue[int] = asyncio.Queue()

        def on_notify(msg: SipMessage) -> None:
            status = sipfrag_status(msg.body)
            if status is not None:
                progress.put_nowait(status)

        await call.playout_drained(8.0)  # "I'm transferring you now" is heard before the caller goes
        leg.on_notify = on_notify
        try:
            accepted = await self.ua.refer(leg, self.target_uri(request.target))
            if accepted.status >= 300:
                log.info(
                    "REFER refused", extra={"data": {"call_id": call.call_id, "status": accepted.status}}
                )
                return False
            status = 100
            async with asyncio.timeout(64 * 0.5):
                while status < 200 and not call.ended.is_set():
                    status = await progress.get()
        except (TimeoutError, RuntimeError):
            log.warning("REFER without a final NOTIFY", extra={"data": {"call_id": call.call_id}})
            return False
        finally:
            leg.on_notify = None
        if status >= 300 or call.ended.is_set():
            log.info("REFER failed", extra={"data": {"call_id": call.call_id, "sipfrag": status}})
            return False
        self.metrics.refers.inc()
        call.drop_agent("transferred")
        call.emit(
            call_transferred=events_pb2.CallTransferred(transferred_to=request.target, type=request.type)
        )
        await call.record_end("transferred")
        await call.end("transferred")  # the transferor leaves (BYE), RFC 5589
        return True

    async def _brief(self, call: BridgeCall, media: RtpSession, request: pb.TransferRequest) -> None:
        """Warm transfer: the caller is held (re-INVITE a=sendonly; the agent hears silence) while the
        target hears the briefing, then the caller is taken off hold to be relayed."""
        call.on_hold = True
        await call.tell_phone_held(True)
        text = briefing_text(request.context, request.reason)
        voice = BriefingVoice(self.settings.agent_service.tts.default_voice_id)
        try:
            frames = await asyncio.wait_for(
                speak(self.briefing_tts(), text, voice, media, call.ended, tenant_id=call.info.tenant_id),
                self.settings.agent_service.tts.request_timeout_seconds + len(text) / 5,
            )
            self.metrics.briefings.inc()
            log.info("target briefed", extra={"data": {"call_id": call.call_id, "frames": frames}})
        except Exception:  # a failed briefing still connects the caller
            log.exception("briefing failed", extra={"data": {"call_id": call.call_id}})
        call.on_hold = False
        await call.tell_phone_held(False)

    def briefing_tts(self) -> Synthesizer:
        if self._tts is None:
            self._tts = TritonTextToSpeech(self.settings.agent_service.tts)
        return self._tts


def _failure_reason(status: int, leg: OutboundCall) -> str:
    if status in (486, 600):
        return "busy"
    if status == 408:
        return "no_answer" if leg.provisional.is_set() else "unreachable"
    if status in (480, 487):
        return "no_answer"
    if status >= 500:
        return "unreachable" if status == 503 else "rejected"
    return "rejected"
