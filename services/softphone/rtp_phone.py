"""The media side of a softphone: one UDP socket that sends PCMU RTP on a 20 ms clock (speech when it
has some, silence otherwise) and records what comes back with its arrival time, like a desk phone.
Symmetric: it answers where the far end's RTP comes from (before that, where `peer` says). RFC 4733
DTMF too. The SIP side is someone else's (SIPp in the tests, services.bridge's UA in the demo)."""

from __future__ import annotations

import asyncio
import contextlib
import random
import secrets
import struct

import audio_core

RATE = 8000
FRAME = 160  # samples per 20 ms at 8 kHz
Addr = tuple[str, int]
OPUS_RATE = 16000  # wideband ("HD voice") PCM in and out when the phone speaks Opus
OPUS_PT = 111


class RtpPhone(asyncio.DatagramProtocol):
    """`codec` "pcmu" (PCM16 8 kHz in `say`/`audio`) or "opus" (PCM16 16 kHz, RTP clock 48 kHz)."""

    def __init__(self, codec: str = "pcmu") -> None:
        if codec not in ("pcmu", "opus"):
            raise ValueError("codec must be pcmu or opus")
        self.codec = codec
        self.rate = OPUS_RATE if codec == "opus" else RATE
        self.payload_type = OPUS_PT if codec == "opus" else 0
        self._encoder = audio_core.OpusEncoder(OPUS_RATE, 1) if codec == "opus" else None
        self.port = 0
        self.peer: Addr | None = None
        self.received: list[tuple[int, bytes]] = []  # (sequence, payload) of audio packets
        self.arrivals: list[float] = []  # loop time of each received audio packet
        self.sent: list[tuple[float, bytes]] = []  # (loop time, PCM16 8 kHz) of speech frames sent
        self.first_packet = asyncio.Event()
        self._transport: asyncio.DatagramTransport | None = None
        self._speech = bytearray()  # PCM16 8 kHz waiting to be sent
        self._dtmf: list[bytes] = []
        self._seq = secrets.randbits(16)
        self._ts = secrets.randbits(32)
        self._ssrc = secrets.randbits(32)
        self._task: asyncio.Task[None] | None = None
        self.sent_speech_frames = 0
        self._rng: random.Random | None = None  # network impairment (impair()), off by default
        self._loss = self._jitter_ms = 0.0
        self._quiet = asyncio.Event()  # set while there is nothing left to say
        self._quiet.set()

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
        if packet.payload_type == self.payload_type:
            self.received.append((packet.sequence, packet.payload))
            self.arrivals.append(asyncio.get_running_loop().time())
            self.first_packet.set()

    def impair(self, loss: float, jitter_ms: float, seed: int = 7) -> None:
        """Sends like a bad network would: drops `loss` of the packets and delays each by 0..jitter_ms
        (so some arrive out of order). Deterministic for a given seed."""
        self._rng = random.Random(seed)
        self._loss, self._jitter_ms = loss, jitter_ms

    def _send(self, packet: bytes, peer: Addr) -> None:
        transport = self._transport
        if transport is None:
            return
        if self._rng is None:
            transport.sendto(packet, peer)
            return
        if self._rng.random() < self._loss:
            return
        delay = self._rng.uniform(0, self._jitter_ms) / 1000

        def late() -> None:
            if not transport.is_closing():
                transport.sendto(packet, peer)

        asyncio.get_running_loop().call_later(delay, late)

    def say(self, pcm16_8k: bytes) -> None:
        self._speech += pcm16_8k
        if self._speech:
            self._quiet.clear()

    async def spoken(self) -> None:
        """Returns once everything given to `say` has been sent."""
        await self._quiet.wait()

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
        """Everything received, in sequence order, decoded to PCM16 at `rate` (gaps not filled)."""
        if not self.received:
            return b""
        base = self.received[0][0]
        ordered = sorted(self.received, key=lambda p: (p[0] - base) & 0xFFFF)
        if self.codec == "opus":
            decoder = audio_core.OpusDecoder(OPUS_RATE, 1)
            return b"".join(decoder.decode(payload) for _, payload in ordered)
        return audio_core.ulaw_decode(b"".join(payload for _, payload in ordered))

    @property
    def frame_bytes(self) -> int:
        return self.rate // 50 * 2

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
                    size = self.frame_bytes
                    pcm = bytes(self._speech[:size]).ljust(size, b"\x00")
                    if self._speech:
                        self.sent_speech_frames += 1
                        self.sent.append((loop.time(), pcm))
                    del self._speech[:size]
                    if not self._speech:
                        self._quiet.set()
                    if self._encoder is not None:
                        payload = self._encoder.encode(pcm)
                    else:
                        payload = audio_core.ulaw_encode(pcm)
                    packet = audio_core.build_rtp(self.payload_type, self._seq, self._ts, self._ssrc, payload)
                self._send(packet, self.peer)
                self._seq = (self._seq + 1) & 0xFFFF
                # RTP clock: 8 kHz for G.711 and telephone-event, 48 kHz for Opus (RFC 7587).
                self._ts = (self._ts + (960 if self.codec == "opus" else FRAME)) & 0xFFFFFFFF
            next_tick += 0.02
            await asyncio.sleep(max(0.0, next_tick - loop.time()))
