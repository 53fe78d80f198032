"""Validation and decoding of the caller's frames into 16 kHz PCM16 for VAD and STT."""

from __future__ import annotations

import grpc

from services.agent.pipeline.errors import SessionError
from voice.v1 import media_pb2

PIPELINE_RATE = 16000
MAX_FRAME_MS = 120
SUPPORTED = "PCM16 16000 Hz mono, frames of 10-120 ms"


def _codec_name(codec: int) -> str:
    if codec in media_pb2.AudioCodec.values():
        return str(media_pb2.AudioCodec.Name(media_pb2.AudioCodec.ValueType(codec)))
    return str(codec)


class InboundAudio:
    """Checks each frame against the format announced in SessionStart and returns its PCM."""

    def __init__(self, announced: media_pb2.AudioFormat) -> None:
        codec = announced.codec or media_pb2.AUDIO_CODEC_PCM16
        rate = announced.sample_rate or PIPELINE_RATE
        channels = announced.channels or 1
        if codec != media_pb2.AUDIO_CODEC_PCM16 or rate != PIPELINE_RATE or channels != 1:
            raise SessionError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"unsupported input format {_codec_name(codec)} {rate} Hz {channels} ch "
                f"(supported: {SUPPORTED}; the bridge decodes Opus/G.711 with audio_core before streaming)",
            )
        self.codec = codec
        self.rate = rate
        self.frames = 0

    def decode(self, frame: media_pb2.AudioFrame) -> bytes:
        if frame.codec not in (0, self.codec):
            raise SessionError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"frame {frame.sequence_number}: codec {_codec_name(frame.codec)} differs from "
                f"the announced {_codec_name(self.codec)}",
            )
        if frame.sample_rate not in (0, self.rate):
            raise SessionError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"frame {frame.sequence_number}: sample rate {frame.sample_rate} Hz differs from "
                f"the announced {self.rate} Hz",
            )
        if frame.channels not in (0, 1):
            raise SessionError(grpc.StatusCode.INVALID_ARGUMENT, f"frame {frame.sequence_number}: mono only")
        payload = frame.payload
        max_bytes = self.rate * MAX_FRAME_MS // 1000 * 2
        if not payload or len(payload) % 2 or len(payload) > max_bytes:
            raise SessionError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"frame {frame.sequence_number}: {len(payload)} bytes is not PCM16 audio of "
                f"1-{MAX_FRAME_MS} ms at {self.rate} Hz (20 ms = {self.rate // 50 * 2} bytes)",
            )
        self.frames += 1
        return bytes(payload)
