"""One call's RTP: a UDP socket, audio_core's inbound leg (jitter buffer, PLC, decode, resample) and
outbound leg (resample, encode, packetize), and RFC 4733 DTMF.

Sans-clock: the call's media loop calls `pop_frame(now_ms)` and `send_frame(pcm)` once per 20 ms
tick. Symmetric RTP (RFC 4961): we send to the address the peer's RTP comes from, once it has come;
packets from any other host than the one the SDP (or the signalling) named are dropped and counted.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

import audio_core
from services.bridge.sip.sdp import Codec

log = logging.getLogger(__name__)

Addr = tuple[str, int]
PIPELINE_RATE = 16000  # what the agent hears (Converse input)
MAX_RTP_BYTES = 1500


@dataclass
class MediaStats:
    received: int = 0
    sent: int = 0
    foreign: int = 0
    malformed: int = 0
    dtmf: int = 0
    last_rx_ms: float = 0.0
    first_rx_ms: float = 0.0
    kinds: dict[str, int] = field(default_factory=dict)


class _DtmfDetector:
    """RFC 4733: one digit per event (keyed by RTP timestamp), reported at its first end packet
    (the end packet is sent three times)."""

    def __init__(self, on_digit: Callable[[str, int], None]) -> None:
        self._on_digit = on_digit
        self._done: set[int] = set()

    def feed(self, packet: audio_core.RtpPacket) -> None:
        try:
            event = audio_core.parse_dtmf(packet.payload)
        except ValueError:
            return
        if not event.end or packet.timestamp in self._done or event.digit is None:
            return
        self._done.add(packet.timestamp)
        if len(self._done) > 64:
            self._done = {packet.timestamp}
        self._on_digit(event.digit, event.duration // 8)  # 8 kHz clock -> ms


class RtpSession(asyncio.DatagramProtocol):
    def __init__(
        self,
        host: str,
        *,
        on_dtmf: Callable[[str, int], None],
        agent_rate: int = PIPELINE_RATE,
        jitter_min_ms: float = 20.0,
        jitter_initial_ms: float = 60.0,
    ) -> None:
        self.host = host
        self.port = 0
        self.stats = MediaStats()
        self.remote: Addr = ("", 0)
        self.codec: Codec | None = None
        self._latched = False
        self._dtmf_pt: int | None = None
        self._dtmf = _DtmfDetector(on_dtmf)
        self._transport: asyncio.DatagramTransport | None = None
        self._agent_rate = agent_rate
        self._jitter = (jitter_min_ms, jitter_initial_ms)
        self.inbound: audio_core.InboundLeg | None = None
        self.outbound: audio_core.OutboundLeg | None = None
        self.on_first_packet: Callable[[], None] | None = None

    def configure(self, codec: Codec, remote: Addr, dtmf_payload_type: int | None) -> None:
        """The negotiated codec and the peer's media address (from the SDP answer or offer)."""
        self.codec = codec
        self.remote = remote
        self._latched = False
        self._dtmf_pt = dtmf_payload_type
        self.inbound = audio_core.InboundLeg(
            codec=codec.name,
            output_rate=PIPELINE_RATE,
            payload_type=codec.payload_type,
            min_delay_ms=self._jitter[0],
            initial_delay_ms=self._jitter[1],
        )
        self.outbound = audio_core.OutboundLeg(
            codec=codec.name,
            input_rate=self._agent_rate,
            payload_type=codec.payload_type,
            ssrc=secrets.randbits(32),
            sequence=secrets.randbits(16),
            timestamp=secrets.randbits(32),
        )

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: self, local_addr=(self.host, 0))
        self._transport = transport
        self.port = transport.get_extra_info("sockname")[1]

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    def update_remote(self, remote: Addr) -> None:
        """A re-INVITE moved the peer's media."""
        self.remote = remote
        self._latched = False

    def datagram_received(self, data: bytes, addr: Addr) -> None:
        if self.inbound is None:
            return  # not negotiated yet
        if addr[0] != self.remote[0]:
            self.stats.foreign += 1
            return
        if len(data) > MAX_RTP_BYTES or len(data) < 12:
            self.stats.malformed += 1
            return
        if not self._latched:
            self.remote = addr  # symmetric RTP: answer where the peer really sends from
            self._latched = True
        elif addr != self.remote:
            self.stats.foreign += 1
            return
        now_ms = asyncio.get_running_loop().time() * 1000
        payload_type = data[1] & 0x7F
        if 72 <= payload_type <= 76:
            return  # RTCP multiplexed on the RTP port (RFC 5761)
        if self._dtmf_pt is not None and payload_type == self._dtmf_pt:
            try:
                self._dtmf.feed(audio_core.parse_rtp(data))
                self.stats.dtmf += 1
            except ValueError:
                self.stats.malformed += 1
            return
        try:
            self.inbound.insert(data, now_ms)
        except ValueError:
            self.stats.malformed += 1
            return
        self.stats.received += 1
        if not self.stats.first_rx_ms:
            self.stats.first_rx_ms = now_ms
            if self.on_first_packet is not None:
                self.on_first_packet()
        self.stats.last_rx_ms = now_ms

    def pop_frame(self, now_ms: float) -> bytes:
        """One 20 ms frame of the caller at PIPELINE_RATE (silence or concealment when nothing came)."""
        if self.inbound is None:
            return b"\x00" * (PIPELINE_RATE // 50 * 2)
        pcm, kind = self.inbound.pop(now_ms)
        self.stats.kinds[kind] = self.stats.kinds.get(kind, 0) + 1
        return pcm

    def send_frame(self, pcm: bytes) -> None:
        """One 20 ms frame of agent audio (at agent_rate) out as RTP."""
        if self.outbound is None:
            return
        for packet in self.outbound.push(pcm):
            if self._transport is not None:
                self._transport.sendto(packet, self.remote)
                self.stats.sent += 1

    def clear(self) -> None:
        if self.outbound is not None:
            self.outbound.clear()
            self.outbound.set_marker()
