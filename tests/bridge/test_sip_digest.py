"""Digest authentication against the worked examples of RFC 7616 section 3.9.1."""

from __future__ import annotations

import pytest

from services.bridge.sip.digest import Challenge, DigestError, authorization, digest_response, parse_challenge

CHALLENGE = (
    'Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm={alg}, '
    'nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", '
    'opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"'
)
CNONCE = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"


@pytest.mark.parametrize(
    ("alg", "expected"),
    [
        ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
        ("SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
    ],
)
def test_rfc7616_examples(alg: str, expected: str) -> None:
    c = parse_challenge(CHALLENGE.format(alg=alg))
    assert (c.algorithm, c.qop, c.realm) == (alg, "auth", "http-auth@example.org")
    got = digest_response(
        c, username="Mufasa", password="Circle of Life", method="GET", uri="/dir/index.html", cnonce=CNONCE
    )
    assert got == expected
    header = authorization(
        c, username="Mufasa", password="Circle of Life", method="GET", uri="/dir/index.html", cnonce=CNONCE
    )
    assert f'response="{expected}"' in header and "nc=00000001" in header and 'opaque="FQhe' in header


@pytest.mark.parametrize(
    "bad",
    [
        "Basic realm=x",
        'Digest nonce="n"',
        'Digest realm="r", nonce="n", algorithm=SHA-512-256',
        'Digest realm="r", nonce="n", qop="auth-int"',
        'Digest realm="r" nonce',
        "Digest " + "a" * 3000,
    ],
)
def test_challenges_we_cannot_answer_are_refused(bad: str) -> None:
    with pytest.raises(DigestError):
        parse_challenge(bad)


def test_no_qop_is_rfc2069_style() -> None:
    c = Challenge(realm="r", nonce="n")
    assert "qop=" not in authorization(c, username="u", password="p", method="INVITE", uri="sip:1@h")
