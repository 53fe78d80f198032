"""SDP offer/answer for one audio stream (RFC 4566, RFC 3264): parse bounded, answer with the first
codec of the offer we support, plus telephone-event when offered."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

MAX_SDP_LINES = 128
MAX_FORMATS = 32

# Static payload types (RFC 3551) and the encodings we speak.
STATIC = {0: ("PCMU", 8000, 1), 8: ("PCMA", 8000, 1)}
SUPPORTED = ("opus", "pcmu", "pcma")
DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")


class SdpError(ValueError):
    pass


@dataclass(frozen=True)
class Codec:
    payload_type: int
    name: str  # lower case: pcmu, pcma, opus, telephone-event
    clock_rate: int
    channels: int = 1
    fmtp: str = ""

    def rtpmap(self) -> str:
        enc = {"pcmu": "PCMU", "pcma": "PCMA"}.get(self.name, self.name)
        chans = f"/{self.channels}" if self.name == "opus" else ""
        return f"a=rtpmap:{self.payload_type} {enc}/{self.clock_rate}{chans}"


@dataclass
class MediaDescription:
    address: str
    port: int
    codecs: list[Codec]
    direction: str = "sendrecv"
    ptime: int = 20
    rtcp_port: int | None = None
    extra: list[str] = field(default_factory=list)

    @property
    def audio_codecs(self) -> list[Codec]:
        return [c for c in self.codecs if c.name != "telephone-event"]

    @property
    def dtmf(self) -> Codec | None:
        return next((c for c in self.codecs if c.name == "telephone-event" and c.clock_rate == 8000), None)


def parse_sdp(body: bytes) -> MediaDescription:
    """The first audio m-line of an offer or answer; SdpError when there is none usable."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise SdpError("SDP is not UTF-8") from None
    lines = [line.strip() for line in text.replace("\r\n", "\n").split("\n") if line.strip()]
    if len(lines) > MAX_SDP_LINES:
        raise SdpError("SDP too long")
    if not lines or lines[0] != "v=0":
        raise SdpError("SDP must start with v=0")
    session_addr = ""
    session_dir = "sendrecv"
    media: MediaDescription | None = None
    payload_types: list[int] = []
    rtpmaps: dict[int, tuple[str, int, int]] = {}
    fmtps: dict[int, str] = {}
    in_audio = False
    seen_audio = False
    for line in lines:
        if len(line) < 2 or line[1] != "=":
            raise SdpError("bad SDP line")
        kind, value = line[0], line[2:]
        if kind == "m":
            parts = value.split()
            if len(parts) < 4:
                raise SdpError("bad m= line")
            if in_audio:
                in_audio = False
                continue
            if parts[0] != "audio" or seen_audio:
                continue
            if parts[2] not in ("RTP/AVP", "RTP/AVPF"):
                raise SdpError("unsupported media transport")
            port = _int(parts[1].split("/")[0], 0, 65535, "port")
            if len(parts) - 3 > MAX_FORMATS:
                raise SdpError("too many formats")
            payload_types = [_int(p, 0, 127, "payload type") for p in parts[3:]]
            media = MediaDescription(address=session_addr, port=port, codecs=[], direction=session_dir)
            in_audio = seen_audio = True
        elif kind == "c":
            parts = value.split()
            if len(parts) != 3 or parts[0] != "IN" or parts[1] not in ("IP4", "IP6"):
                raise SdpError("bad c= line")
            address = parts[2].split("/")[0]
            try:
                ipaddress.ip_address(address)
            except ValueError:
                raise SdpError("c= address is not an IP address") from None
            if in_audio and media is not None:
                media.address = address
            elif not seen_audio:
                session_addr = address
        elif kind == "a":
            name, _, arg = value.partition(":")
            if name in DIRECTIONS:
                if in_audio and media is not None:
                    media.direction = name
                elif not seen_audio:
                    session_dir = name
            elif not in_audio:
                continue
            elif name == "rtpmap":
                pt_text, _, enc = arg.partition(" ")
                pt = _int(pt_text, 0, 127, "payload type")
                enc_parts = enc.strip().split("/")
                if len(enc_parts) < 2:
                    raise SdpError("bad rtpmap")
                channels = _int(enc_parts[2], 1, 8, "channels") if len(enc_parts) > 2 else 1
                rtpmaps[pt] = (enc_parts[0].lower(), _int(enc_parts[1], 1000, 192000, "clock rate"), channels)
            elif name == "fmtp":
                pt_text, _, params = arg.partition(" ")
                fmtps[_int(pt_text, 0, 127, "payload type")] = params.strip()[:256]
            elif name == "ptime" and media is not None:
                media.ptime = _int(arg, 10, 120, "ptime")
            elif name == "rtcp" and media is not None:
                media.rtcp_port = _int(arg.split()[0], 0, 65535, "rtcp port")
    if media is None:
        raise SdpError("no audio stream")
    if not media.address:
        raise SdpError("no connection address")
    for pt in payload_types:
        if pt in rtpmaps:
            name, rate, chans = rtpmaps[pt]
        elif pt in STATIC:
            enc, rate, chans = STATIC[pt]
            name = enc.lower()
        else:
            continue
        media.codecs.append(Codec(pt, name, rate, chans, fmtps.get(pt, "")))
    return media


def _int(text: str, lo: int, hi: int, what: str) -> int:
    if not text.isdigit() or len(text) > 6:
        raise SdpError(f"bad {what}")
    value = int(text)
    if not lo <= value <= hi:
        raise SdpError(f"{what} out of range")
    return value


def choose_codec(offer: MediaDescription, allowed: tuple[str, ...] = SUPPORTED) -> Codec | None:
    """The offerer's most preferred codec that we speak (RFC 3264 6.1)."""
    for codec in offer.audio_codecs:
        if codec.name in allowed and (codec.name != "opus" or codec.clock_rate == 48000):
            if codec.name in ("pcmu", "pcma") and codec.clock_rate != 8000:
                continue
            return codec
    return None


def answer_direction(offered: str) -> str:
    return {"sendonly": "recvonly", "recvonly": "sendonly", "inactive": "inactive"}.get(offered, "sendrecv")


def build_sdp(
    address: str,
    port: int,
    codecs: list[Codec],
    *,
    session_id: int,
    version: int = 1,
    direction: str = "sendrecv",
    ptime: int = 20,
) -> bytes:
    family = "IP6" if ":" in address else "IP4"
    lines = [
        "v=0",
        f"o=voice {session_id} {version} IN {family} {address}",
        "s=voice",
        f"c=IN {family} {address}",
        "t=0 0",
        f"m=audio {port} RTP/AVP {' '.join(str(c.payload_type) for c in codecs)}",
    ]
    for codec in codecs:
        lines.append(codec.rtpmap())
        if codec.fmtp:
            lines.append(f"a=fmtp:{codec.payload_type} {codec.fmtp}")
    lines += [f"a=ptime:{ptime}", f"a={direction}"]
    return ("\r\n".join(lines) + "\r\n").encode()


def default_offer_codecs(allowed: tuple[str, ...] = ("pcmu", "pcma")) -> list[Codec]:
    """What we offer on an outbound call: G.711 first (every trunk has it), then DTMF events."""
    table = {
        "pcmu": Codec(0, "pcmu", 8000),
        "pcma": Codec(8, "pcma", 8000),
        "opus": Codec(111, "opus", 48000, 2, "useinbandfec=1"),
    }
    dtmf = Codec(101, "telephone-event", 8000, 1, "0-16")
    return [table[name] for name in allowed if name in table] + [dtmf]
