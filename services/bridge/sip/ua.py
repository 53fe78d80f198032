"""A small, strict SIP user agent for trunks over UDP (RFC 3261): transactions with their
retransmission timers, dialogs, INVITE/ACK/BYE/CANCEL/OPTIONS/INFO, as asyncio.

The UA knows no calls or agents: it hands each new INVITE to `on_invite` as an `InboundCall`, and
places calls with `dial()` as an `OutboundCall`. Both are `SipCall`s: a dialog plus a future that
completes when the dialog ends (with the reason). A malformed datagram is answered with 400 where it
can be answered and dropped otherwise; it never reaches a call.

Timers (RFC 3261 17): requests are retransmitted at T1, 2*T1, ... capped at T2 (INVITE: uncapped
until a provisional arrives), and given up after 64*T1. A 2xx to an INVITE is retransmitted by the UAS
core until the ACK arrives (13.3.1.4); a non-2xx final by the server transaction (timer G).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from services.bridge.sip.digest import DigestError, authorization, parse_challenge
from services.bridge.sip.message import (
    NameAddr,
    SipMessage,
    SipParseError,
    answerable,
    parse_message,
    parse_name_addr,
    response_to,
    uri_hostport,
)

log = logging.getLogger(__name__)

T1 = 0.5
T2 = 4.0
MAX_TRANSACTIONS = 20_000
ALLOW = "INVITE, ACK, BYE, CANCEL, OPTIONS, INFO, NOTIFY"
USER_AGENT = "voice-bridge"

Addr = tuple[str, int]


def new_branch() -> str:
    return "z9hG4bK" + secrets.token_hex(10)


def new_tag() -> str:
    return secrets.token_hex(8)


@dataclass
class Dialog:
    call_id: str
    local_tag: str
    remote_tag: str
    local_uri: str
    remote_uri: str
    remote_target: str
    peer: Addr
    local_cseq: int = 1
    remote_cseq: int = 0
    route_set: list[str] = field(default_factory=list)

    @property
    def key(self) -> tuple[str, str]:
        return (self.call_id, self.local_tag)


class SipCall:
    """One call's dialog on this UA. `ended` resolves with the end reason ("remote_hangup",
    "cancelled", "local_hangup", "ack_timeout", ...) exactly once."""

    def __init__(self, ua: UserAgent, call_id: str, local_tag: str, peer: Addr) -> None:
        self.ua = ua
        self.call_id = call_id
        self.local_tag = local_tag
        self.peer = peer
        self.dialog: Dialog | None = None
        self.ended: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.on_info: Callable[[SipMessage], None] | None = None
        # NOTIFYs in the dialog (the progress of a REFER we sent, RFC 3515), answered 200 first.
        self.on_notify: Callable[[SipMessage], None] | None = None
        self.on_reinvite: Callable[[SipMessage], bytes | None] | None = None
        self.remote_sdp: bytes = b""
        self.log: list[str] = []  # the SIP dialog as one-line summaries (for demos and debugging)

    def note(self, direction: str, msg: SipMessage) -> None:
        first = f"{msg.method} {msg.uri}" if msg.is_request else f"{msg.status} {msg.reason}"
        self.log.append(f"{direction} {first}")

    def finish(self, reason: str) -> None:
        if not self.ended.done():
            self.ended.set_result(reason)
        self.ua.forget(self)

    async def hangup(self, reason: str = "local_hangup") -> None:
        """BYE on an established dialog (idempotent)."""
        if self.ended.done() or self.dialog is None:
            self.finish(reason)
            return
        self.finish(reason)
        with contextlib.suppress(TimeoutError, SipTimeoutError):
            await self.ua.request_in_dialog(self, "BYE")

    async def info(self, content_type: str, body: bytes) -> int:
        resp = await self.ua.request_in_dialog(self, "INFO", content_type=content_type, body=body)
        return resp.status


class InboundCall(SipCall):
    def __init__(self, ua: UserAgent, invite: SipMessage, source: Addr) -> None:
        super().__init__(ua, invite.call_id, new_tag(), source)
        self.invite = invite
        self.remote_sdp = invite.body
        self.final_sent = False
        self.acked = asyncio.Event()
        self.note("<-", invite)

    @property
    def to_uri(self) -> str:
        return self.invite.to.uri

    @property
    def from_uri(self) -> str:
        return self.invite.from_.uri

    def respond(self, status: int, reason: str, body: bytes = b"", content_type: str = "") -> None:
        if self.final_sent:
            return
        tag = self.local_tag if status > 100 else ""
        resp = response_to(self.invite, status, reason, to_tag=tag, body=body)
        if status > 100:
            resp.add("Contact", f"<{self.ua.contact_uri}>")
        resp.add("Allow", ALLOW)
        resp.add("Server", USER_AGENT)
        if body:
            resp.add("Content-Type", content_type or "application/sdp")
        self.note("->", resp)
        self.ua.server_respond(self.invite, resp, self.peer)
        if status >= 200:
            self.final_sent = True
            if status < 300:
                self._establish(resp)
                self.ua.spawn(self._retransmit_2xx(resp.encode()))
            else:
                self.finish(f"rejected_{status}")

    def _establish(self, resp: SipMessage) -> None:
        invite = self.invite
        contact = invite.get("Contact")
        target = parse_name_addr(contact).uri if contact else invite.from_.uri
        self.dialog = Dialog(
            call_id=self.call_id,
            local_tag=self.local_tag,
            remote_tag=invite.from_.tag,
            local_uri=invite.to.uri,
            remote_uri=invite.from_.uri,
            remote_target=target,
            peer=self.peer,
            remote_cseq=invite.cseq[0],
            route_set=list(invite.get_all("Record-Route")),
        )
        self.ua.register_dialog(self)

    async def _retransmit_2xx(self, data: bytes) -> None:
        interval = T1
        waited = 0.0
        while waited < 64 * T1:
            try:
                await asyncio.wait_for(self.acked.wait(), interval)
                return
            except TimeoutError:
                if self.ended.done():
                    return
                waited += interval
                interval = min(interval * 2, T2)
                self.ua.send(data, self.peer)
        log.warning("no ACK for 2xx", extra={"data": {"call_id": self.call_id}})
        await self.hangup("ack_timeout")

    async def wait_ack(self, within_s: float = 64 * T1) -> bool:
        try:
            await asyncio.wait_for(self.acked.wait(), within_s)
        except TimeoutError:
            return False
        return not self.ended.done()


class OutboundCall(SipCall):
    def __init__(self, ua: UserAgent, target_uri: str, from_uri: str, peer: Addr) -> None:
        super().__init__(ua, secrets.token_hex(12) + "@voice", new_tag(), peer)
        self.target_uri = target_uri
        self.from_uri = from_uri
        self.invite: SipMessage | None = None
        self.provisional = asyncio.Event()
        self.final: asyncio.Future[SipMessage] = asyncio.get_running_loop().create_future()

    async def cancel(self) -> None:
        """CANCEL a call that is still ringing (RFC 3261 9.1): only after a provisional response."""
        if self.invite is None or self.final.done():
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.provisional.wait(), 64 * T1)
        if self.final.done():
            return
        cancel = SipMessage(method="CANCEL", uri=self.invite.uri)
        for name in ("Via", "From", "To", "Call-ID"):
            cancel.add(name, self.invite.get(name))
        cancel.add("CSeq", f"{self.invite.cseq[0]} CANCEL")
        cancel.add("Max-Forwards", "70")
        self.note("->", cancel)
        with contextlib.suppress(SipTimeoutError):
            await self.ua.send_request(cancel, self.peer)


class SipTimeoutError(TimeoutError):
    pass


@dataclass
class _ClientTx:
    request: SipMessage
    peer: Addr
    response: asyncio.Future[SipMessage]
    on_provisional: Callable[[SipMessage], None] | None = None


@dataclass
class _ServerTx:
    request: SipMessage
    peer: Addr
    last: bytes | None = None
    acked: asyncio.Event = field(default_factory=asyncio.Event)


class UserAgent(asyncio.DatagramProtocol):
    """SIP over UDP. `on_invite` is called (as a task) for each new dialog-creating INVITE."""

    def __init__(self, host: str, on_invite: Callable[[InboundCall], Awaitable[None]]) -> None:
        self.host = host
        self.port = 0
        self._on_invite = on_invite
        self._transport: asyncio.DatagramTransport | None = None
        self._client: dict[str, _ClientTx] = {}
        self._server: dict[tuple[str, str], _ServerTx] = {}
        self._pending: dict[str, InboundCall] = {}  # INVITE branch -> call, until final response
        self._dialogs: dict[tuple[str, str], SipCall] = {}
        self._outbound: dict[str, OutboundCall] = {}  # Call-ID -> call
        self._tasks: set[asyncio.Task[None]] = set()
        self.malformed = 0
        # (username, password) for the trunk's digest challenges; None = a challenge fails the request.
        self.credentials: tuple[str, str] | None = None
        self.register_call_id = f"{secrets.token_hex(8)}@{host}"  # one Call-ID for all our REGISTERs
        self.register_cseq = 0

    @property
    def contact_uri(self) -> str:
        return f"sip:voice@{self.host}:{self.port}"

    async def start(self, port: int = 0) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: self, local_addr=(self.host, port))
        self._transport = transport
        self.port = transport.get_extra_info("sockname")[1]
        log.info("SIP UA listening", extra={"data": {"udp": f"{self.host}:{self.port}"}})

    async def close(self) -> None:
        for call in list(self._dialogs.values()) + list(self._pending.values()):
            await call.hangup("shutdown")
        for task in list(self._tasks):
            task.cancel()
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    def spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("SIP task failed", exc_info=task.exception())

    def send(self, data: bytes, peer: Addr) -> None:
        if self._transport is not None:
            self._transport.sendto(data, peer)

    # ---- receiving

    def datagram_received(self, data: bytes, addr: Addr) -> None:
        if not data.strip():
            return  # CRLF keep-alive
        try:
            msg = parse_message(data)
        except SipParseError as exc:
            self.malformed += 1
            log.warning("malformed SIP", extra={"data": {"peer": f"{addr[0]}:{addr[1]}", "reason": str(exc)}})
            bad = answerable(data)
            if bad is not None:
                self.send(response_to(bad, 400, f"Bad Request ({exc})"[:100]).encode(), addr)
            return
        try:
            if msg.is_request:
                self._on_request(msg, addr)
            else:
                self._on_response(msg)
        except SipParseError as exc:
            self.malformed += 1
            log.warning("malformed SIP", extra={"data": {"peer": f"{addr[0]}:{addr[1]}", "reason": str(exc)}})
            if msg.is_request and msg.method != "ACK":
                self.send(response_to(msg, 400, "Bad Request").encode(), addr)

    def _on_request(self, msg: SipMessage, addr: Addr) -> None:
        branch = msg.top_via.branch
        method = msg.method
        if method == "ACK":
            self._on_ack(msg, (branch, "INVITE"))
            return
        tx = self._server.get((branch, method))
        if tx is not None:  # a retransmission: repeat our last answer
            if tx.last is not None:
                self.send(tx.last, addr)
            return
        if len(self._server) >= MAX_TRANSACTIONS:
            self.send(response_to(msg, 503, "Service Unavailable").encode(), addr)
            return
        self._server[(branch, method)] = _ServerTx(msg, addr)
        self.spawn(self._expire_server_tx((branch, method)))
        if method == "CANCEL":
            self._on_cancel(msg, addr, branch)
            return
        if msg.to.tag:
            self._in_dialog(msg, addr)
            return
        if method == "INVITE":
            call = InboundCall(self, msg, addr)
            self._pending[branch] = call
            self.server_respond(msg, response_to(msg, 100, "Trying"), addr)
            self.spawn(self._on_invite(call))
        elif method == "OPTIONS":
            resp = response_to(msg, 200, "OK", to_tag=new_tag())
            resp.add("Allow", ALLOW)
            resp.add("Accept", "application/sdp")
            self.server_respond(msg, resp, addr)
        elif method == "BYE":
            self.server_respond(msg, response_to(msg, 481, "Call/Transaction Does Not Exist"), addr)
        else:
            self.server_respond(msg, response_to(msg, 405, "Method Not Allowed"), addr)

    def _on_ack(self, msg: SipMessage, key: tuple[str, str]) -> None:
        tx = self._server.get(key)
        if tx is not None:  # ACK of a non-2xx final (same branch): stops timer G
            tx.acked.set()
        call = self._dialogs.get((msg.call_id, msg.to.tag))
        if isinstance(call, InboundCall):
            call.note("<-", msg)
            call.acked.set()

    def _on_cancel(self, msg: SipMessage, addr: Addr, branch: str) -> None:
        call = self._pending.get(branch)
        if call is None or call.final_sent:
            self.server_respond(msg, response_to(msg, 481, "Call/Transaction Does Not Exist"), addr)
            return
        call.note("<-", msg)
        self.server_respond(msg, response_to(msg, 200, "OK", to_tag=call.local_tag), addr)
        call.finish("cancelled")
        call.respond(487, "Request Terminated")

    def _in_dialog(self, msg: SipMessage, addr: Addr) -> None:
        call = self._dialogs.get((msg.call_id, msg.to.tag))
        if call is None or call.dialog is None:
            self.server_respond(msg, response_to(msg, 481, "Call/Transaction Does Not Exist"), addr)
            return
        number = msg.cseq[0]
        if number <= call.dialog.remote_cseq and call.dialog.remote_cseq:
            self.server_respond(msg, response_to(msg, 500, "Server Internal Error"), addr)
            return
        call.dialog.remote_cseq = number
        call.note("<-", msg)
        if msg.method == "BYE":
            self.server_respond(msg, response_to(msg, 200, "OK"), addr)
            call.finish("remote_hangup")
        elif msg.method == "INFO":
            self.server_respond(msg, response_to(msg, 200, "OK"), addr)
            if call.on_info is not None:
                call.on_info(msg)
        elif msg.method == "OPTIONS":
            self.server_respond(msg, response_to(msg, 200, "OK"), addr)
        elif msg.method == "NOTIFY":
            if call.on_notify is None:
                self.server_respond(msg, response_to(msg, 481, "Subscription Does Not Exist"), addr)
            else:
                self.server_respond(msg, response_to(msg, 200, "OK"), addr)
                call.on_notify(msg)
        elif msg.method == "INVITE":
            answer = call.on_reinvite(msg) if call.on_reinvite is not None else None
            if answer is None:
                self.server_respond(msg, response_to(msg, 488, "Not Acceptable Here"), addr)
            else:
                resp = response_to(msg, 200, "OK", body=answer)
                resp.add("Contact", f"<{self.contact_uri}>")
                resp.add("Content-Type", "application/sdp")
                self.server_respond(msg, resp, addr)
        else:
            self.server_respond(msg, response_to(msg, 405, "Method Not Allowed"), addr)

    def server_respond(self, request: SipMessage, resp: SipMessage, peer: Addr) -> None:
        data = resp.encode()
        branch = request.top_via.branch
        tx = self._server.get((branch, request.method))
        if tx is not None:
            tx.last = data
        self.send(data, peer)
        if request.method == "INVITE" and resp.status >= 200:
            self._pending.pop(branch, None)
            if resp.status >= 300 and tx is not None:
                self.spawn(self._timer_g(tx, data, peer))

    async def _timer_g(self, tx: _ServerTx, data: bytes, peer: Addr) -> None:
        interval, waited = T1, 0.0
        while waited < 64 * T1:
            try:
                await asyncio.wait_for(tx.acked.wait(), interval)
                return
            except TimeoutError:
                waited += interval
                interval = min(interval * 2, T2)
                self.send(data, peer)

    async def _expire_server_tx(self, key: tuple[str, str]) -> None:
        # Timer J / H: keep the transaction long enough to absorb retransmissions.
        await asyncio.sleep(64 * T1)
        self._server.pop(key, None)
        self._pending.pop(key[0], None)

    def _on_response(self, msg: SipMessage) -> None:
        branch = msg.top_via.branch
        _, method = msg.cseq
        tx = self._client.get(branch + method)
        if tx is None:
            # A retransmitted 2xx to our INVITE after the transaction ended: ACK it again.
            call = self._outbound.get(msg.call_id)
            retransmitted_2xx = method == "INVITE" and 200 <= msg.status < 300
            if retransmitted_2xx and call is not None and call.dialog is not None:
                self._send_ack(call, msg)
            return
        if msg.status < 200:
            if tx.on_provisional is not None:
                tx.on_provisional(msg)
            return
        if not tx.response.done():
            tx.response.set_result(msg)

    # ---- sending

    async def send_request(
        self,
        request: SipMessage,
        peer: Addr,
        on_provisional: Callable[[SipMessage], None] | None = None,
        invite_timeout: float = 64 * T1,
    ) -> SipMessage:
        """Sends through a client transaction; returns the final response, SipTimeoutError after
        64*T1 (INVITE: `invite_timeout` after a provisional, retransmissions stop at the first one)."""
        branch = request.top_via.branch
        _, method = request.cseq
        key = branch + method
        fut: asyncio.Future[SipMessage] = asyncio.get_running_loop().create_future()
        provisional = asyncio.Event()

        def on_prov(resp: SipMessage) -> None:
            provisional.set()
            if on_provisional is not None:
                on_provisional(resp)

        self._client[key] = _ClientTx(request, peer, fut, on_prov)
        data = request.encode()
        try:
            self.send(data, peer)
            interval, waited = T1, 0.0
            while not fut.done():
                limit = invite_timeout if provisional.is_set() else 64 * T1
                if waited >= limit:
                    raise SipTimeoutError(f"no final response to {method}")
                step = min(interval, limit - waited)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(fut), step)
                waited += step
                if fut.done():
                    break
                if method == "INVITE" and provisional.is_set():
                    continue
                interval = interval * 2 if method == "INVITE" else min(interval * 2, T2)
                self.send(data, peer)
            return fut.result()
        finally:
            self._client.pop(key, None)

    def _base_request(self, method: str, uri: str, call: SipCall, cseq: int) -> SipMessage:
        req = SipMessage(method=method, uri=uri)
        req.add("Via", f"SIP/2.0/UDP {self.host}:{self.port};branch={new_branch()};rport")
        req.add("Max-Forwards", "70")
        req.add("Call-ID", call.call_id)
        req.add("CSeq", f"{cseq} {method}")
        req.add("User-Agent", USER_AGENT)
        return req

    async def request_in_dialog(
        self,
        call: SipCall,
        method: str,
        *,
        content_type: str = "",
        body: bytes = b"",
        headers: tuple[tuple[str, str], ...] = (),
    ) -> SipMessage:
        d = call.dialog
        if d is None:
            raise RuntimeError("no dialog")
        d.local_cseq += 1
        req = self._base_request(method, d.remote_target, call, d.local_cseq)
        req.add("From", str(NameAddr("", d.local_uri, {"tag": d.local_tag})))
        req.add("To", str(NameAddr("", d.remote_uri, {"tag": d.remote_tag})))
        for route in d.route_set:
            req.add("Route", route)
        if method in ("INVITE", "REFER"):
            req.add("Contact", f"<{self.contact_uri}>")
        for name, value in headers:
            req.add(name, value)
        if body:
            req.add("Content-Type", content_type)
            req.body = body
        call.note("->", req)
        resp = await self.send_request(req, d.peer)
        call.note("<-", resp)
        if method == "INVITE" and 200 <= resp.status < 300:
            # The ACK of a re-INVITE's 2xx: in the dialog, same CSeq number, a new branch.
            ack = self._base_request("ACK", d.remote_target, call, req.cseq[0])
            ack.add("From", req.get("From"))
            ack.add("To", req.get("To"))
            call.note("->", ack)
            self.send(ack.encode(), d.peer)
        return resp

    async def refer(self, call: SipCall, target_uri: str) -> SipMessage:
        """Asks the peer to call `target_uri` itself (RFC 3515 blind transfer); the final response
        (202 = accepted; progress then comes as NOTIFY with a message/sipfrag body)."""
        d = call.dialog
        referred_by = d.local_uri if d is not None else self.contact_uri
        return await self.request_in_dialog(
            call, "REFER", headers=(("Refer-To", f"<{target_uri}>"), ("Referred-By", f"<{referred_by}>"))
        )

    async def reinvite(self, call: SipCall, sdp: bytes) -> SipMessage:
        """A new offer in the dialog (hold/resume); the final response (2xx already ACKed)."""
        return await self.request_in_dialog(call, "INVITE", content_type="application/sdp", body=sdp)

    async def dial(
        self,
        target_uri: str,
        from_uri: str,
        sdp: bytes,
        *,
        peer: Addr | None = None,
        ring_timeout: float = 30.0,
        on_ringing: Callable[[], None] | None = None,
        on_created: Callable[[OutboundCall], None] | None = None,
    ) -> OutboundCall:
        """Sends an INVITE and waits for its final answer (or `ring_timeout` after it rang: then CANCEL).
        `call.final` holds the final response; a 2xx leaves the dialog established and ACKed."""
        if peer is None:
            host, port = uri_hostport(target_uri)
            peer = (host, port or 5060)
        call = OutboundCall(self, target_uri, from_uri, peer)
        self._outbound[call.call_id] = call
        if on_created is not None:
            on_created(call)
        req = self._base_request("INVITE", target_uri, call, 1)
        req.add("From", str(NameAddr("", from_uri, {"tag": call.local_tag})))
        req.add("To", f"<{target_uri}>")
        req.add("Contact", f"<{self.contact_uri}>")
        req.add("Allow", ALLOW)
        req.add("Content-Type", "application/sdp")
        req.body = sdp
        call.invite = req
        call.note("->", req)

        def provisional(resp: SipMessage) -> None:
            call.note("<-", resp)
            call.provisional.set()
            if resp.status in (180, 183) and on_ringing is not None:
                on_ringing()

        # The INVITE transaction runs on its own; the ring timeout is ours: on expiry we CANCEL and
        # the transaction then ends with the callee's 487 (which is ACKed below like any non-2xx).
        # A 401/407 is answered once with our credentials: a new INVITE transaction, CSeq + 1.
        for attempt in range(2):
            invite_tx = asyncio.ensure_future(
                self.send_request(req, peer, provisional, invite_timeout=3600.0)
            )
            try:
                final = await self._ring(call, invite_tx, ring_timeout)
            except SipTimeoutError:
                call.finish("no_answer" if call.provisional.is_set() else "unreachable")
                call.final.set_result(response_to(req, 408, "Request Timeout"))
                return call
            retry = self._authorized(req, final) if attempt == 0 else None
            if retry is None:
                break
            call.note("<-", final)
            self._send_ack(call, final, same_transaction=True)
            req = retry
            call.invite = req
            call.note("->", req)
        if final.status == 487 and call.ended.done():  # our CANCEL won
            call.note("<-", final)
            self._send_ack(call, final, same_transaction=True)
            call.final.set_result(response_to(req, 408, "Request Timeout"))
            return call
        call.note("<-", final)
        call.final.set_result(final)
        if final.status >= 300:
            self._send_ack(call, final, same_transaction=True)
            call.finish(f"rejected_{final.status}")
            return call
        contact = final.get("Contact")
        call.dialog = Dialog(
            call_id=call.call_id,
            local_tag=call.local_tag,
            remote_tag=final.to.tag,
            local_uri=from_uri,
            remote_uri=target_uri,
            remote_target=parse_name_addr(contact).uri if contact else target_uri,
            peer=peer,
            local_cseq=req.cseq[0],
            route_set=list(reversed(final.get_all("Record-Route"))),
        )
        call.remote_sdp = final.body
        self.register_dialog(call)
        self._send_ack(call, final)
        return call

    def _authorized(self, request: SipMessage, challenge: SipMessage) -> SipMessage | None:
        """`request` again (new branch, CSeq + 1) with the answer to a 401/407 digest challenge; None
        when it is no challenge, we have no credentials, or the challenge cannot be answered."""
        if challenge.status not in (401, 407) or self.credentials is None:
            return None
        header = "WWW-Authenticate" if challenge.status == 401 else "Proxy-Authenticate"
        try:
            parsed = parse_challenge(challenge.get(header))
        except DigestError as exc:
            log.warning("digest challenge refused", extra={"data": {"reason": str(exc)}})
            return None
        username, password = self.credentials
        method = request.method
        retry = SipMessage(method=method, uri=request.uri)
        for name, value in request.headers:
            if name in ("Authorization", "Proxy-Authorization"):
                continue
            if name == "Via":
                retry.add(name, f"SIP/2.0/UDP {self.host}:{self.port};branch={new_branch()};rport")
            elif name == "CSeq":
                retry.add(name, f"{request.cseq[0] + 1} {method}")
            else:
                retry.add(name, value)
        retry.add(
            "Authorization" if challenge.status == 401 else "Proxy-Authorization",
            authorization(parsed, username=username, password=password, method=method, uri=request.uri),
        )
        retry.body = request.body
        return retry

    async def register(self, registrar: str, *, expires: int, peer: Addr | None = None) -> SipMessage:
        """REGISTER our Contact as sip:<username>@<registrar> (host:port), answering one digest
        challenge; the final response (2xx = registered for its Expires)."""
        user = self.credentials[0] if self.credentials is not None else "voice"
        host, _, port = registrar.partition(":")
        if peer is None:
            peer = (host, int(port or 5060))
        aor = f"sip:{user}@{registrar}"
        req = SipMessage(method="REGISTER", uri=f"sip:{registrar}")
        req.add("Via", f"SIP/2.0/UDP {self.host}:{self.port};branch={new_branch()};rport")
        req.add("Max-Forwards", "70")
        req.add("From", str(NameAddr("", aor, {"tag": new_tag()})))
        req.add("To", f"<{aor}>")
        req.add("Call-ID", self.register_call_id)
        self.register_cseq += 1
        req.add("CSeq", f"{self.register_cseq} REGISTER")
        req.add("Contact", f"<{self.contact_uri}>")
        req.add("Expires", str(expires))
        req.add("User-Agent", USER_AGENT)
        resp = await self.send_request(req, peer)
        retry = self._authorized(req, resp)
        if retry is None:
            return resp
        self.register_cseq += 1
        return await self.send_request(retry, peer)

    async def _ring(
        self, call: OutboundCall, invite_tx: asyncio.Future[SipMessage], ring_timeout: float
    ) -> SipMessage:
        """The final response, or CANCEL once it has rung for `ring_timeout` (then the 487)."""
        loop = asyncio.get_running_loop()
        deadline: float | None = None
        while True:
            if deadline is None and call.provisional.is_set():
                deadline = loop.time() + ring_timeout
            step = 0.05 if deadline is None else max(0.0, deadline - loop.time())
            done, _ = await asyncio.wait({invite_tx}, timeout=step)
            if done:
                return invite_tx.result()  # SipTimeoutError when nothing ever answered
            if deadline is not None and loop.time() >= deadline:
                call.finish("no_answer")
                await call.cancel()
                try:
                    return await asyncio.wait_for(invite_tx, 64 * T1)
                except TimeoutError:
                    raise SipTimeoutError("no 487 after CANCEL") from None

    def _send_ack(self, call: OutboundCall, final: SipMessage, same_transaction: bool = False) -> None:
        invite = call.invite
        assert invite is not None
        ack = SipMessage(method="ACK", uri=invite.uri)
        if same_transaction:  # ACK of a non-2xx: part of the INVITE transaction (17.1.1.3)
            ack.add("Via", invite.get("Via"))
        else:
            ack.add("Via", f"SIP/2.0/UDP {self.host}:{self.port};branch={new_branch()};rport")
        ack.add("Max-Forwards", "70")
        ack.add("From", invite.get("From"))
        ack.add("To", final.get("To"))
        ack.add("Call-ID", call.call_id)
        ack.add("CSeq", f"{invite.cseq[0]} ACK")
        call.note("->", ack)
        self.send(ack.encode(), call.peer)

    def register_dialog(self, call: SipCall) -> None:
        self._dialogs[(call.call_id, call.local_tag)] = call

    def forget(self, call: SipCall) -> None:
        self._dialogs.pop((call.call_id, call.local_tag), None)
        self._outbound.pop(call.call_id, None)


def sipfrag_status(body: bytes) -> int | None:
    """The status code of a message/sipfrag body ("SIP/2.0 200 OK"), None when it is not one."""
    first = body[:200].split(b"\n", 1)[0].strip().split()
    if len(first) < 2 or not first[0].startswith(b"SIP/2.0") or not first[1].isdigit() or len(first[1]) != 3:
        return None
    return int(first[1])


def allows(call: SipCall, method: str) -> bool:
    """Whether the peer's INVITE (or its answer to ours) listed `method` in Allow."""
    msg = call.invite if isinstance(call, InboundCall) else None
    if isinstance(call, OutboundCall) and call.final.done() and not call.final.cancelled():
        msg = call.final.result()
    if msg is None:
        return False
    return method.upper() in {m.strip().upper() for m in msg.get("Allow").split(",")}
