"""The SIP and SDP parsers: what a trunk really sends parses, malformed input is refused with a reason
(never another exception), and no input of any size or shape makes them misbehave (hypothesis)."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.bridge.sip.message import (
    MAX_MESSAGE_BYTES,
    SipParseError,
    answerable,
    parse_message,
    response_to,
    uri_user,
)
from services.bridge.sip.sdp import SdpError, build_sdp, choose_codec, default_offer_codecs, parse_sdp
from services.bridge.state import TRANSITIONS, CallState, CallStateMachine, IllegalTransition

SDP = (
    b"v=0\r\no=- 1 1 IN IP4 10.0.0.5\r\ns=-\r\nc=IN IP4 10.0.0.5\r\nt=0 0\r\n"
    b"m=audio 40000 RTP/AVP 8 0 101\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\n"
    b"a=ptime:20\r\na=sendrecv\r\n"
)
INVITE = (
    b"INVITE sip:+15551234567@10.0.0.1:5060;user=phone SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bK776asdhds;rport\r\n"
    b"Max-Forwards: 70\r\n"
    b'f: "Alice" <sip:+15550100@10.0.0.5>;tag=1928301774\r\n'
    b"To: <sip:+15551234567@10.0.0.1>\r\n"
    b"i: a84b4c76e66710@10.0.0.5\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Contact: <sip:alice@10.0.0.5:5060>\r\n"
    b"Subject: folded\r\n  continuation\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: " + str(len(SDP)).encode() + b"\r\n\r\n" + SDP
)


def test_a_trunk_invite_parses() -> None:
    msg = parse_message(INVITE)
    assert msg.method == "INVITE" and uri_user(msg.uri) == "+15551234567"
    assert msg.from_.tag == "1928301774" and msg.from_.display == "Alice"
    assert msg.call_id == "a84b4c76e66710@10.0.0.5" and msg.cseq == (314159, "INVITE")
    assert msg.top_via.branch == "z9hG4bK776asdhds" and msg.top_via.host == "10.0.0.5"
    assert msg.get("Subject") == "folded continuation"
    offer = parse_sdp(msg.body)
    assert [c.name for c in offer.codecs] == ["pcma", "pcmu", "telephone-event"]
    assert choose_codec(offer) is not None and choose_codec(offer).name == "pcma"  # type: ignore[union-attr]
    assert offer.dtmf is not None and offer.dtmf.payload_type == 101
    resp = parse_message(response_to(msg, 200, "OK", to_tag="abc", body=b"").encode())
    assert resp.status == 200 and resp.to.tag == "abc" and resp.call_id == msg.call_id


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (INVITE[:60], "no end of headers"),
        (INVITE.replace(b"Content-Length: " + str(len(SDP)).encode(), b"Content-Length: 9999"), "body"),
        (
            INVITE.replace(b"Content-Length: " + str(len(SDP)).encode(), b"Content-Length: -1"),
            "Content-Length",
        ),
        (INVITE.replace(b"SIP/2.0/UDP 10.0.0.5:5060", b"SIP/3.0/UDP 10.0.0.5:5060"), "Via"),
        (INVITE.replace(b"Via: SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bK776asdhds;rport\r\n", b""), "Via"),
        (INVITE.replace(b"CSeq: 314159 INVITE", b"CSeq: 314159 BYE"), "CSeq"),
        (INVITE.replace(b"To: <sip:", b"To: <sip"), "URI"),
        (INVITE + b"x" * MAX_MESSAGE_BYTES, "too large"),
        (INVITE.replace(b"Max-Forwards: 70\r\n", b"Max-Forwards: 70\r\n" + b"X-A: b\r\n" * 100), "headers"),
        (INVITE.replace(b"Max-Forwards: 70", b"Max-Forwards: " + b"7" * 5000), "too long"),
        (b"INVITE sip:x@y SIP/2.0\r\n\x00: y\r\n\r\n", "header"),
        (b"HELLO\r\n\r\n", "request line"),
    ],
)
def test_malformed_messages_are_refused_with_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(SipParseError, match=reason):
        parse_message(data)


def test_a_bad_request_is_answered_only_when_it_can_be() -> None:
    bad_body = INVITE.replace(b"Content-Length: " + str(len(SDP)).encode(), b"Content-Length: 9999")
    reply_to = answerable(bad_body)
    assert reply_to is not None and reply_to.call_id == "a84b4c76e66710@10.0.0.5"
    assert answerable(INVITE.replace(b"SIP/2.0/UDP 10.0.0.5:5060", b"junk")) is None  # nowhere to answer
    assert answerable(b"ACK sip:x@y SIP/2.0\r\n\r\n") is None  # an ACK is never answered
    assert answerable(b"SIP/2.0 200 OK\r\n\r\n") is None


@pytest.mark.parametrize(
    ("sdp", "reason"),
    [
        (b"", "v=0"),
        (SDP.replace(b"m=audio 40000 RTP/AVP 8 0 101", b"m=video 40000 RTP/AVP 96"), "no audio"),
        (SDP.replace(b"c=IN IP4 10.0.0.5", b"c=IN IP4 example.com"), "IP address"),
        (SDP.replace(b"40000", b"99999"), "port"),
        (SDP.replace(b"RTP/AVP", b"RTP/SAVP"), "transport"),
        (SDP + b"a=x\r\n" * 200, "too long"),
    ],
)
def test_malformed_sdp_is_refused(sdp: bytes, reason: str) -> None:
    with pytest.raises(SdpError, match=reason):
        parse_sdp(sdp)


def test_unknown_codecs_only_have_no_answer() -> None:
    offer = parse_sdp(
        SDP.replace(b"RTP/AVP 8 0 101", b"RTP/AVP 18 101").replace(
            b"a=rtpmap:101", b"a=rtpmap:18 G729/8000\r\na=rtpmap:101"
        )
    )
    assert choose_codec(offer) is None


def test_our_offer_round_trips() -> None:
    body = build_sdp("127.0.0.1", 4000, default_offer_codecs(("pcmu", "pcma", "opus")), session_id=7)
    offer = parse_sdp(body)
    assert offer.port == 4000 and [c.name for c in offer.codecs] == [
        "pcmu",
        "pcma",
        "opus",
        "telephone-event",
    ]
    assert offer.codecs[2].clock_rate == 48000 and offer.codecs[2].channels == 2


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=3000))
def test_any_bytes_parse_or_are_refused_cleanly(data: bytes) -> None:
    with contextlib.suppress(SipParseError):
        parse_message(data)
    answerable(data)
    with contextlib.suppress(SdpError):
        parse_sdp(data)


_LINE = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=80)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["Via", "From", "To", "Call-ID", "CSeq", "v", "Content-Length", "X"]), _LINE
        ),
        max_size=12,
    ),
    st.binary(max_size=200),
)
def test_sip_shaped_garbage_is_refused_cleanly(headers: list[tuple[str, str]], body: bytes) -> None:
    data = (
        b"INVITE sip:a@b SIP/2.0\r\n"
        + b"".join(f"{k}: {v}\r\n".encode() for k, v in headers)
        + b"\r\n"
        + body
    )
    try:
        msg = parse_message(data)
    except SipParseError:
        return
    # Whatever parses is usable by the UA without further exceptions.
    assert msg.top_via.branch is not None and msg.cseq[1] == "INVITE"
    response_to(msg, 400, "Bad Request").encode()


@settings(max_examples=300, deadline=None)
@given(st.lists(_LINE.map(lambda s: s[:1] + "=" + s[1:]), max_size=30))
def test_sdp_shaped_garbage_is_refused_cleanly(lines: list[str]) -> None:
    with contextlib.suppress(SdpError):
        parse_sdp(("v=0\r\n" + "\r\n".join(lines)).encode())


def test_the_state_machine_allows_only_its_table() -> None:
    refused: list[tuple[CallState, CallState]] = []
    for start in CallState:
        for wanted in CallState:
            sm = CallStateMachine("c", lambda a, b: refused.append((a, b)))
            sm.state = start
            if wanted in TRANSITIONS[start]:
                assert sm.transition(wanted) == start and sm.state == wanted
            else:
                with pytest.raises(IllegalTransition):
                    sm.transition(wanted)
                assert sm.state == start
    assert all(CallState.ENDED in TRANSITIONS[s] for s in CallState if s != CallState.ENDED)
    assert (CallState.ENDED, CallState.ENDED) in refused and (
        CallState.RINGING,
        CallState.CONVERSING,
    ) in refused
