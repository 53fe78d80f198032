"""The media side of a test phone: one UDP socket that sends PCMU RTP on a 20 ms clock (speech when it
has some, silence otherwise) and records what the bridge sends back, like a desk phone would. SIP is
done by SIPp; this socket's port is what SIPp's SDP offers. RFC 4733 DTMF too."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import struct

import audio_core

RATE = 8000
FRAME = 160  # samples per 20 ms at 8 kHz
Addr = tuple[str, int]


class RtpPhone(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.port = 0
        self.peer: Addr | None = None
        self.received: list[tuple[int, bytes]] = []  # (sequence, payload) of audio packets
        self.first_packet = asyncio.Event()
        self._transport: asyncio.DatagramTransport | None = None
        self._speech = bytearray()  # PCM16 8 kHz waiting to be sent
        self._dtmf: list[bytes] = []
        self._seq = secrets.randbits(16)
        self._ts = secrets.randbits(32)
        self._ssrc = secrets.randbits(32)
        self._task: asyncio.Task[None] | None = None
        self.sent_speech_frames = 0

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: self, local_addr=("127.0.0.1", 0))
        self._transport = transport
        self.port = transport.get_extra_info("sockname")[1]
        self._task = asyncio.create_task(self._clock())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._transport is not None:
            self._transport.close()

    def datagram_received(self, data: bytes, addr: Addr) -> None:
        if self.peer is None:
            self.peer = addr  # symmetric: answer where the bridge's RTP comes from
        try:
            packet = audio_core.parse_rtp(data)
        except ValueError:
            return
        if packet.payload_type == 0:
            self.received.append((packet.sequence, packet.payload))
            self.first_packet.set()

    def say(self, pcm16_8k: bytes) -> None:
        self._speech += pcm16_8k

    def press(self, digit: str) -> None:
        """Queues one RFC 4733 event (100 ms, three end packets)."""
        code = "0123456789*#ABCD".index(digit)
        for step in range(1, 6):
            self._dtmf.append(struct.pack("!BBH", code, 10, step * FRAME))
        for _ in range(3):
            self._dtmf.append(struct.pack("!BBH", code, 0x80 | 10, 6 * FRAME))

    @property
    def speaking(self) -> bool:
        return bool(self._speech)

    def audio(self) -> bytes:
        """Everything received, in sequence order, decoded to PCM16 8 kHz (gaps not filled)."""
        if not self.received:
            return b""
        base = self.received[0][0]
        ordered = sorted(self.received, key=lambda p: (p[0] - base) & 0xFFFF)
        return audio_core.ulaw_decode(b"".join(payload for _, payload in ordered))

    async def _clock(self) -> None:
        loop = asyncio.get_running_loop()
        next_tick = loop.time()
        dtmf_ts = 0
        while True:
            if self.peer is not None and self._transport is not None:
                if self._dtmf:
                    payload = self._dtmf.pop(0)
                    if payload[1] & 0x80 == 0 and payload[2:] == struct.pack("!H", FRAME):
                        dtmf_ts = self._ts
                    packet = audio_core.build_rtp(101, self._seq, dtmf_ts, self._ssrc, payload)
                else:
                    pcm = bytes(self._speech[: FRAME * 2]).ljust(FRAME * 2, b"\x00")
                    if self._speech:
                        self.sent_speech_frames += 1
                    del self._speech[: FRAME * 2]
                    packet = audio_core.build_rtp(
                        0, self._seq, self._ts, self._ssrc, audio_core.ulaw_encode(pcm)
                    )
                self._transport.sendto(packet, self.peer)
                self._seq = (self._seq + 1) & 0xFFFF
                self._ts = (self._ts + FRAME) & 0xFFFFFFFF
            next_tick += 0.02
            await asyncio.sleep(max(0.0, next_tick - loop.time()))
