"""The WAV container both TTS front ends (HTTP facade and gRPC TtsService) put PCM16 mono audio in."""

from __future__ import annotations

import struct


def wav_header(sample_rate: int, data_bytes: int | None) -> bytes:
    """RIFF header for PCM16 mono; `None` = unknown length (streaming), sizes set to the maximum."""
    data_len = 0xFFFFFFFF if data_bytes is None else data_bytes
    riff_len = 0xFFFFFFFF if data_bytes is None else 36 + data_bytes
    return (
        b"RIFF"
        + struct.pack("<I", riff_len)
        + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 1, 1, sample_rate, sample_rate * 2, 2, 16)
        + b"data"
        + struct.pack("<I", data_len)
    )
