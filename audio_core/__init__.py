"""Rust audio hot path for Voice by aiConnected (see audio_core/src).

The compiled extension lives in ``audio_core._native``; this package re-exports its API and adds
numpy conveniences. Sans-IO: no sockets, threads or clocks; callers pass time in milliseconds.
"""

import numpy as np
import numpy.typing as npt

from audio_core._native import (
    DtmfEvent,
    InboundLeg,
    JitterBuffer,
    OpusDecoder,
    OpusEncoder,
    OutboundLeg,
    Resampler,
    RtpPacket,
    alaw_decode,
    alaw_encode,
    apply_gain,
    build_rtp,
    float32_to_pcm16,
    libopus_version,
    mix,
    native_version,
    opus_packet_has_fec,
    opus_packet_samples,
    parse_dtmf,
    parse_rtp,
    pcm16_to_float32,
    rms_dbfs,
    ulaw_decode,
    ulaw_encode,
)


def pcm16_array(pcm: bytes) -> npt.NDArray[np.int16]:
    """View PCM16 bytes as an int16 numpy array (no copy)."""
    return np.frombuffer(pcm, dtype="<i2")


def float32_array(pcm: bytes) -> npt.NDArray[np.float32]:
    """PCM16 bytes -> float32 numpy array in [-1, 1)."""
    return np.frombuffer(pcm16_to_float32(pcm), dtype="<f4")


__all__ = [
    "DtmfEvent",
    "InboundLeg",
    "JitterBuffer",
    "OpusDecoder",
    "OpusEncoder",
    "OutboundLeg",
    "Resampler",
    "RtpPacket",
    "alaw_decode",
    "alaw_encode",
    "apply_gain",
    "build_rtp",
    "float32_array",
    "float32_to_pcm16",
    "libopus_version",
    "mix",
    "native_version",
    "opus_packet_has_fec",
    "opus_packet_samples",
    "parse_dtmf",
    "parse_rtp",
    "pcm16_array",
    "pcm16_to_float32",
    "rms_dbfs",
    "ulaw_decode",
    "ulaw_encode",
]
