"""SIP messages (RFC 3261 section 7): a strict, bounded parser and a serializer.

Everything a peer sends is bounded before it is looked at: datagram size, header count, line length,
body length. A message that breaks a rule raises `SipParseError` with a reason; the transport answers
a request that has enough headers to be answerable with 400 and drops everything else. Parsing one
message never touches another call's state.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

MAX_MESSAGE_BYTES = 16_384
MAX_HEADERS = 96
MAX_LINE_BYTES = 4_096
MAX_BODY_BYTES = 8_192

# Compact header forms (RFC 3261 7.3.3 and later RFCs).
_COMPACT = {
    "i": "Call-ID",
    "f": "From",
    "t": "To",
    "v": "Via",
    "m": "Contact",
    "l": "Content-Length",
    "c": "Content-Type",
    "k": "Supported",
    "s": "Subject",
    "e": "Content-Encoding",
    "r": "Refer-To",
    "o": "Event",
}
_CANONICAL = {
    name.lower(): name
    for name in (
        "Call-ID",
        "CSeq",
        "From",
        "To",
        "Via",
        "Contact",
        "Content-Length",
        "Content-Type",
        "Max-Forwards",
        "Allow",
        "Supported",
        "User-Agent",
        "Server",
        "Route",
        "Record-Route",
        "Refer-To",
        "Referred-By",
        "Event",
        "Subscription-State",
        "WWW-Authenticate",
        "Authorization",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "Expires",
        "Require",
        "Unsupported",
        "Reason",
        "Accept",
        "Subject",
        "Content-Encoding",
    )
}
_TOKEN = re.compile(r"^[A-Za-z0-9.!%*_+`'~-]+$")
_METHOD = re.compile(r"^[A-Z]{2,16}$")
_VIA = re.compile(r"^SIP\s*/\s*2\.0\s*/\s*(UDP|TCP|TLS|SCTP|WS|WSS)\s+([^\s;]+)(.*)$", re.IGNORECASE)
_CSEQ = re.compile(r"^(\d{1,10})\s+([A-Z]{2,16})$")


class SipParseError(ValueError):
    """The message is malformed; `reason` is safe to log and to put in a 400's reason phrase."""


def canonical(name: str) -> str:
    low = name.lower()
    if low in _COMPACT:
        return _COMPACT[low]
    return _CANONICAL.get(low, name)


@dataclass
class Via:
    transport: str
    host: str
    port: int | None
    params: dict[str, str]

    @property
    def branch(self) -> str:
        return self.params.get("branch", "")


def parse_params(text: str) -> dict[str, str]:
    """`;a=b;c` -> {"a": "b", "c": ""} (names lower-cased)."""
    params: dict[str, str] = {}
    for raw in text.split(";"):
        part = raw.strip()
        if not part:
            continue
        name, _, value = part.partition("=")
        params[name.strip().lower()] = value.strip().strip('"')
    return params


def parse_via(value: str) -> Via:
    m = _VIA.match(value.strip())
    if m is None:
        raise SipParseError("bad Via")
    transport, sent_by, rest = m.groups()
    host, port = split_hostport(sent_by)
    params = parse_params(rest)
    return Via(transport.upper(), host, port, params)


def split_hostport(text: str) -> tuple[str, int | None]:
    if text.startswith("["):  # IPv6 reference
        end = text.find("]")
        if end < 0:
            raise SipParseError("bad host")
        host, rest = text[1:end], text[end + 1 :]
        port_text = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port_text = text.partition(":")
    if not host or len(host) > 255:
        raise SipParseError("bad host")
    if not port_text:
        return host, None
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise SipParseError("bad port")
    return host, int(port_text)


@dataclass
class NameAddr:
    """`"Alice" <sip:alice@example.com>;tag=1928301774` (From, To, Contact, Refer-To)."""

    display: str
    uri: str
    params: dict[str, str]

    @property
    def tag(self) -> str:
        return self.params.get("tag", "")

    def __str__(self) -> str:
        shown = f'"{self.display}" ' if self.display else ""
        params = "".join(f";{k}={v}" if v else f";{k}" for k, v in self.params.items())
        return f"{shown}<{self.uri}>{params}"


def parse_name_addr(value: str) -> NameAddr:
    value = value.strip()
    lt = value.find("<")
    if lt >= 0:
        gt = value.find(">", lt)
        if gt < 0:
            raise SipParseError("unterminated <uri>")
        display = value[:lt].strip().strip('"')
        uri = value[lt + 1 : gt].strip()
        params = parse_params(value[gt + 1 :])
    else:
        # addr-spec without brackets: parameters belong to the header, not the URI.
        uri, _, rest = value.partition(";")
        display, params = "", parse_params(rest)
    if not uri or " " in uri or ":" not in uri:
        raise SipParseError("bad URI")
    return NameAddr(display, uri.strip(), params)


def uri_user(uri: str) -> str:
    """`sip:+15551234567@host;user=phone` -> `+15551234567` ('' without a user part)."""
    _, _, rest = uri.partition(":")
    user, at, _ = rest.partition("@")
    return user.split(";")[0] if at else ""


def uri_hostport(uri: str) -> tuple[str, int | None]:
    _, _, rest = uri.partition(":")
    if "@" in rest:
        rest = rest.split("@", 1)[1]
    rest = rest.split(";", 1)[0].split("?", 1)[0]
    return split_hostport(rest)


@dataclass
class SipMessage:
    """A request (method set) or a response (status set). Header names are canonical; values keep
    their order, and repeated headers (Via, Route) stay separate entries."""

    method: str = ""
    uri: str = ""
    status: int = 0
    reason: str = ""
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""

    @property
    def is_request(self) -> bool:
        return bool(self.method)

    def get(self, name: str, default: str = "") -> str:
        name = canonical(name)
        for key, value in self.headers:
            if key == name:
                return value
        return default

    def get_all(self, name: str) -> list[str]:
        name = canonical(name)
        return [v for k, v in self.headers if k == name]

    def set(self, name: str, value: str) -> None:
        name = canonical(name)
        self.headers = [(k, v) for k, v in self.headers if k != name]
        self.headers.append((name, value))

    def add(self, name: str, value: str) -> None:
        self.headers.append((canonical(name), value))

    @property
    def call_id(self) -> str:
        return self.get("Call-ID")

    @property
    def cseq(self) -> tuple[int, str]:
        m = _CSEQ.match(self.get("CSeq").strip())
        if m is None:
            raise SipParseError("bad CSeq")
        return int(m.group(1)), m.group(2)

    @property
    def vias(self) -> list[Via]:
        # A Via header may carry several comma-separated values.
        values = [v for raw in self.get_all("Via") for v in raw.split(",") if v.strip()]
        return [parse_via(v) for v in values]

    @property
    def top_via(self) -> Via:
        vias = self.vias
        if not vias:
            raise SipParseError("missing Via")
        return vias[0]

    @property
    def from_(self) -> NameAddr:
        return parse_name_addr(self.get("From"))

    @property
    def to(self) -> NameAddr:
        return parse_name_addr(self.get("To"))

    def encode(self) -> bytes:
        if self.is_request:
            lines = [f"{self.method} {self.uri} SIP/2.0"]
        else:
            lines = [f"SIP/2.0 {self.status} {self.reason}"]
        lines += [f"{k}: {v}" for k, v in self.headers if k != "Content-Length"]
        lines.append(f"Content-Length: {len(self.body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + self.body


def _decode_line(raw: bytes) -> str:
    if len(raw) > MAX_LINE_BYTES:
        raise SipParseError("header line too long")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SipParseError("header is not UTF-8") from None
    if any(ord(ch) < 32 and ch != "\t" for ch in text):
        raise SipParseError("control character in header")
    return text


def parse_message(data: bytes, *, stream: bool = False) -> SipMessage:
    """Parse one datagram (or one framed stream message when `stream`: the body must be complete).

    Over UDP, octets beyond Content-Length are discarded (RFC 3261 18.3); fewer octets than it says
    is an error. A stream message without Content-Length is an error."""
    if len(data) > MAX_MESSAGE_BYTES:
        raise SipParseError("message too large")
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        # Tolerate bare-LF peers; anything else without a blank line is truncated.
        head, sep, body = data.partition(b"\n\n")
        if not sep:
            raise SipParseError("no end of headers")
    raw_lines = head.replace(b"\r\n", b"\n").split(b"\n")
    while raw_lines and not raw_lines[0].strip():  # keep-alive CRLFs before a message (RFC 5626)
        raw_lines.pop(0)
    if not raw_lines:
        raise SipParseError("empty message")
    msg = _parse_start(_decode_line(raw_lines[0]))
    for raw in raw_lines[1:]:
        line = _decode_line(raw)
        if line[:1] in (" ", "\t"):  # folded continuation of the previous header
            if not msg.headers:
                raise SipParseError("continuation before the first header")
            name, value = msg.headers[-1]
            msg.headers[-1] = (name, f"{value} {line.strip()}")
            if len(msg.headers[-1][1]) > MAX_LINE_BYTES:
                raise SipParseError("header line too long")
            continue
        name, colon, value = line.partition(":")
        name = name.strip()
        if not colon or not _TOKEN.match(name):
            raise SipParseError("bad header line")
        msg.headers.append((canonical(name), value.strip()))
        if len(msg.headers) > MAX_HEADERS:
            raise SipParseError("too many headers")
    length_text = msg.get("Content-Length")
    if length_text:
        if not length_text.isdigit() or len(length_text) > 6:
            raise SipParseError("bad Content-Length")
        length = int(length_text)
        if length > MAX_BODY_BYTES:
            raise SipParseError("body too large")
        if len(body) < length:
            raise SipParseError("body shorter than Content-Length")
        body = body[:length]
    elif stream:
        raise SipParseError("missing Content-Length")
    if len(body) > MAX_BODY_BYTES:
        raise SipParseError("body too large")
    msg.body = body
    _check_mandatory(msg)
    return msg


def _parse_start(line: str) -> SipMessage:
    if line.startswith("SIP/2.0 "):
        parts = line.split(" ", 2)
        if len(parts) < 2 or not parts[1].isdigit() or len(parts[1]) != 3:
            raise SipParseError("bad status line")
        status = int(parts[1])
        if not 100 <= status <= 699:
            raise SipParseError("bad status code")
        return SipMessage(status=status, reason=parts[2] if len(parts) > 2 else "")
    parts = line.split(" ")
    if len(parts) != 3 or parts[2] != "SIP/2.0":
        raise SipParseError("bad request line")
    method, uri, _ = parts
    if not _METHOD.match(method):
        raise SipParseError("bad method")
    if ":" not in uri or len(uri) > 1024:
        raise SipParseError("bad Request-URI")
    return SipMessage(method=method, uri=uri)


def _check_mandatory(msg: SipMessage) -> None:
    for name in ("Via", "From", "To", "Call-ID", "CSeq"):
        if not msg.get(name):
            raise SipParseError(f"missing {name}")
    msg.top_via  # noqa: B018 - validates every Via value
    msg.from_  # noqa: B018
    msg.to  # noqa: B018
    _, method = msg.cseq
    if msg.is_request and method != msg.method:
        raise SipParseError("CSeq method does not match the request")
    if len(msg.call_id) > 256:
        raise SipParseError("Call-ID too long")


def response_to(
    request: SipMessage, status: int, reason: str, *, to_tag: str = "", body: bytes = b""
) -> SipMessage:
    """A response carrying the request's Via, From, To (+ tag), Call-ID and CSeq (RFC 3261 8.2.6)."""
    resp = SipMessage(status=status, reason=reason, body=body)
    for via in request.get_all("Via"):
        resp.add("Via", via)
    resp.add("From", request.get("From"))
    to = request.get("To")
    if to_tag and "tag=" not in to.lower():
        to = f"{to};tag={to_tag}"
    resp.add("To", to)
    resp.add("Call-ID", request.call_id)
    resp.add("CSeq", request.get("CSeq"))
    return resp


def answerable(data: bytes) -> SipMessage | None:
    """For a request that failed to parse: the headers needed to send it a 400, or None (drop it).
    Uses the same bounds as the parser, and only the headers a response must echo."""
    if len(data) > MAX_MESSAGE_BYTES:
        return None
    head = data.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    lines = head.replace(b"\r\n", b"\n").split(b"\n")
    if len(lines) > MAX_HEADERS + 1:
        return None
    try:
        start = _decode_line(lines[0]) if lines else ""
    except SipParseError:
        return None
    if start.startswith("SIP/2.0") or " " not in start:
        return None
    method = start.split(" ", 1)[0]
    if method == "ACK" or not _METHOD.match(method):
        return None  # never answer an ACK
    msg = SipMessage(method=method, uri="sip:invalid")
    for raw in lines[1:]:
        try:
            name, colon, value = _decode_line(raw).partition(":")
        except SipParseError:
            return None
        if colon and canonical(name.strip()) in ("Via", "From", "To", "Call-ID", "CSeq"):
            msg.add(name.strip(), value.strip())
    try:
        msg.top_via  # noqa: B018 - we can only answer where the top Via says
    except SipParseError:
        return None
    if not (msg.get("From") and msg.get("To") and msg.call_id and msg.get("CSeq")):
        return None
    return msg
