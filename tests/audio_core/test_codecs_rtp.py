"""G.711, RTP, Opus and frame helpers through the Python API."""

import contextlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import audio_core as ac


def tone(rate: int, n: int, freq: float = 440.0, amp: float = 8000.0, start: int = 0) -> bytes:
    t = (np.arange(n) + start) / rate
    return (np.sin(2 * np.pi * freq * t) * amp).astype("<i2").tobytes()


def test_g711_reference_points_and_roundtrip() -> None:
    codes = bytes(range(256))
    ulaw = ac.pcm16_array(ac.ulaw_decode(codes))
    alaw = ac.pcm16_array(ac.alaw_decode(codes))
    assert (ulaw[0x00], ulaw[0x80], ulaw[0xFF]) == (-32124, 32124, 0)
    assert (alaw[0xD5], alaw[0x55], alaw[0xAA], alaw[0x2A]) == (8, -8, 32256, -32256)
    assert ac.alaw_encode(ac.alaw_decode(codes)) == codes
    re = ac.ulaw_encode(ac.ulaw_decode(codes))
    assert re == codes.replace(b"\x7f", b"\xff")


def test_g711_accepts_numpy_and_rejects_odd_lengths() -> None:
    pcm = np.array([0, 1000, -1000, 32767], dtype=np.int16)
    assert ac.ulaw_encode(pcm) == ac.ulaw_encode(pcm.tobytes())
    with pytest.raises(ValueError, match="odd length"):
        ac.ulaw_encode(b"\x00\x01\x02")


def test_rtp_roundtrip_and_dtmf() -> None:
    pkt = ac.build_rtp(
        111, 65535, 2**32 - 1, 0xABCDEF, b"xyz", marker=True, csrcs=[5], extension=(0xBEDE, b"\0" * 4)
    )
    p = ac.parse_rtp(pkt)
    assert (p.payload_type, p.sequence, p.timestamp, p.ssrc, p.marker) == (
        111,
        65535,
        2**32 - 1,
        0xABCDEF,
        True,
    )
    assert p.csrcs == [5] and p.extension_profile == 0xBEDE and p.payload == b"xyz"
    ev = ac.parse_dtmf(bytes([5, 0x80 | 10, 0, 160]))
    assert (ev.digit, ev.end, ev.volume, ev.duration) == ("5", True, 10, 160)
    with pytest.raises(ValueError, match="needs 4"):
        ac.parse_dtmf(b"\x01")


@pytest.mark.parametrize(
    "bad", [b"", b"\x80" * 11, b"\x40" + b"\0" * 11, b"\x8f" + b"\0" * 11, b"\xb0" + b"\0" * 13]
)
def test_rtp_bad_input_raises(bad: bytes) -> None:
    with pytest.raises(ValueError, match="RTP"):
        ac.parse_rtp(bad)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_rtp_parse_garbage_never_crashes(data: bytes) -> None:
    try:
        p = ac.parse_rtp(data)
    except ValueError:
        return
    assert len(p.payload) <= len(data)


@pytest.mark.parametrize("rate", [8000, 12000, 16000, 24000, 48000])
@pytest.mark.parametrize("ms", [10, 20, 40, 60])
def test_opus_rates_and_frames(rate: int, ms: int) -> None:
    enc = ac.OpusEncoder(sample_rate=rate, complexity=3)
    dec = ac.OpusDecoder(sample_rate=rate)
    n = rate * ms // 1000
    pkt = enc.encode(tone(rate, n))
    assert ac.opus_packet_samples(pkt, rate) == n
    assert len(dec.decode(pkt)) == 2 * n
    assert len(dec.conceal(n)) == 2 * n


def test_opus_fec_plc_and_errors() -> None:
    enc = ac.OpusEncoder(bitrate=24000, fec=True, packet_loss_perc=20)
    pkts = [enc.encode(tone(48000, 960, 200.0, start=k * 960)) for k in range(20)]
    assert any(ac.opus_packet_has_fec(p) for p in pkts[5:])
    dec = ac.OpusDecoder()
    for p in pkts[:10]:
        dec.decode(p)
    rec = ac.pcm16_array(dec.decode_fec(pkts[11], 960))
    assert len(rec) == 960 and np.abs(rec).max() > 0
    assert dec.decode_many(pkts[12:]) == 8 * 960
    with pytest.raises(ValueError, match="codec error"):
        dec.decode(b"\x03")
    with pytest.raises(ValueError, match="valid Opus frame"):
        enc.encode(b"\0" * 100)
    with pytest.raises(ValueError, match="unsupported"):
        ac.OpusDecoder(sample_rate=44100)
    with pytest.raises(ValueError, match="complexity"):
        ac.OpusEncoder(complexity=12)


def test_opus_corrupt_packets_never_crash() -> None:
    rng = np.random.default_rng(1)
    dec = ac.OpusDecoder()
    for n in range(1, 300, 3):
        with contextlib.suppress(ValueError):
            dec.decode(rng.integers(0, 256, n, dtype=np.uint8).tobytes())


def test_frame_helpers() -> None:
    pcm = np.array([0, 16384, -32768, 32767], dtype=np.int16).tobytes()
    f = ac.float32_array(pcm)
    assert f.tolist() == [0.0, 0.5, -1.0, 32767 / 32768]
    assert ac.float32_to_pcm16(f.tobytes()) == pcm
    assert ac.pcm16_array(ac.apply_gain(pcm, 2.0)).tolist() == [0, 32767, -32768, 32767]
    assert ac.pcm16_array(ac.mix(pcm, pcm)).tolist() == [0, 32767, -32768, 32767]
    with pytest.raises(ValueError, match="equal lengths"):
        ac.mix(pcm, pcm[:2])
    assert ac.rms_dbfs(b"") == -120.0
    assert abs(ac.rms_dbfs(tone(16000, 1600, 1000.0, amp=32767.0)) + 3.01) < 0.05
