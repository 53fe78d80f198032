"""Caller audio in any announced format becomes 16 kHz PCM16 (decoded and resampled by audio_core)."""

from __future__ import annotations

import math
from collections.abc import Callable

import grpc
import numpy as np
import pytest

import audio_core
from services.agent.pipeline.errors import SessionError
from services.agent.pipeline.inbound import InboundAudio
from services.agent.pipeline.outbound import OutboundAudio
from voice.v1 import media_pb2

OPUS, PCMU, PCMA, PCM16 = (
    media_pb2.AUDIO_CODEC_OPUS,
    media_pb2.AUDIO_CODEC_PCMU,
    media_pb2.AUDIO_CODEC_PCMA,
    media_pb2.AUDIO_CODEC_PCM16,
)


def tone(rate: int, ms: int, hz: float = 440.0) -> bytes:
    t = np.arange(rate * ms // 1000) / rate
    return (np.sin(2 * math.pi * hz * t) * 8000).astype("<i2").tobytes()


def frame(seq: int, payload: bytes, codec: int, rate: int) -> media_pb2.AudioFrame:
    f = media_pb2.AudioFrame(sequence_number=seq, sample_rate=rate, channels=1, payload=payload)
    f.codec = media_pb2.AudioCodec.ValueType(codec)
    return f


def fmt(codec: int, rate: int, channels: int = 1) -> media_pb2.AudioFormat:
    f = media_pb2.AudioFormat(sample_rate=rate, channels=channels)
    f.codec = media_pb2.AudioCodec.ValueType(codec)
    return f


@pytest.mark.parametrize("rate", [8000, 16000, 24000, 48000])
def test_pcm16_at_any_rate_becomes_16k(rate: int) -> None:
    inbound = InboundAudio(fmt(PCM16, rate))
    out = b"".join(inbound.decode(frame(i, tone(rate, 20), PCM16, rate)) for i in range(50))
    assert abs(len(out) // 2 - 16000) <= 64  # one second, minus the resampler's few-ms delay
    assert audio_core.rms_dbfs(out[3200:]) > -20


@pytest.mark.parametrize("codec, encode", [(PCMU, audio_core.ulaw_encode), (PCMA, audio_core.alaw_encode)])
def test_g711_becomes_16k(codec: int, encode: Callable[[bytes], bytes]) -> None:
    inbound = InboundAudio(fmt(codec, 8000))
    out = b"".join(inbound.decode(frame(i, encode(tone(8000, 20)), codec, 8000)) for i in range(25))
    assert abs(len(out) // 2 - 8000) <= 64
    assert audio_core.rms_dbfs(out[1600:]) > -20


def test_opus_decodes_to_16k_and_conceals_lost_frames() -> None:
    encoder = audio_core.OpusEncoder(48000, 1)
    packets = [encoder.encode(tone(48000, 20)) for _ in range(20)]
    inbound = InboundAudio(fmt(OPUS, 48000))
    out = b"".join(inbound.decode(frame(i, p, OPUS, 48000)) for i, p in enumerate(packets) if i not in (7, 8))
    assert inbound.concealed == 2
    assert len(out) == 20 * 320 * 2  # the two lost frames are filled in, the timeline stays intact


@pytest.mark.parametrize(
    "announced",
    [fmt(PCM16, 11025), fmt(PCMU, 16000), fmt(PCM16, 16000, channels=2), fmt(99, 16000)],
)
def test_unsupported_formats_are_refused(announced: media_pb2.AudioFormat) -> None:
    with pytest.raises(SessionError) as err:
        InboundAudio(announced)
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "unsupported input format" in err.value.message


@pytest.mark.parametrize("payload", [b"", b"\xff" * 40, b"\x0b" + b"\x00" * 3])
def test_corrupt_opus_is_a_clear_error(payload: bytes) -> None:
    inbound = InboundAudio(fmt(OPUS, 48000))
    with pytest.raises(SessionError) as err:
        inbound.decode(frame(0, payload, OPUS, 48000))
    assert "Opus packet" in err.value.message


def test_g711_frame_too_long_is_refused() -> None:
    inbound = InboundAudio(fmt(PCMU, 8000))
    with pytest.raises(SessionError, match="is not AUDIO_CODEC_PCMU audio"):
        inbound.decode(frame(0, b"\x7f" * 8000, PCMU, 8000))


@pytest.mark.parametrize(
    "codec, rate, frame_bytes",
    [(PCM16, 24000, 960), (PCM16, 16000, 640), (PCM16, 48000, 1920), (PCMU, 8000, 160), (PCMA, 8000, 160)],
)
def test_agent_voice_in_the_requested_format(codec: int, rate: int, frame_bytes: int) -> None:
    outbound = OutboundAudio(fmt(codec, rate), 24000)
    frames = [outbound.encode(tone(24000, 20)) for _ in range(10)]
    assert {len(f) for f in frames} == {frame_bytes}
    assert outbound.timestamp(480 * 10) == rate // 50 * 10


def test_agent_voice_as_opus_decodes_back() -> None:
    outbound = OutboundAudio(fmt(OPUS, 48000), 24000)
    decoder = audio_core.OpusDecoder(48000, 1)
    pcm = b"".join(decoder.decode(outbound.encode(tone(24000, 20))) for _ in range(25))
    assert len(pcm) == 25 * 960 * 2 and audio_core.rms_dbfs(pcm[9600:]) > -25


@pytest.mark.parametrize("requested", [fmt(PCMU, 16000), fmt(PCM16, 44100), fmt(PCM16, 24000, channels=2)])
def test_unsupported_output_formats_are_refused(requested: media_pb2.AudioFormat) -> None:
    with pytest.raises(SessionError, match="unsupported output format"):
        OutboundAudio(requested, 24000)
