"""The agent's voice in the format the caller side asked for in SessionStart.

TTS produces PCM16 at its own rate (24 kHz); the bridge may want PCM16 at another rate, G.711 at
8 kHz or Opus. Each 20 ms frame is converted with audio_core (one streaming resampler and one encoder
per call, so there are no clicks at frame boundaries).
"""

from __future__ import annotations

import grpc

import audio_core
from services.agent.pipeline.errors import SessionError
from services.agent.pipeline.inbound import codec_name
from voice.v1 import media_pb2

SUPPORTED = "PCM16 at 8/16/24/48 kHz, PCMU/PCMA at 8 kHz or Opus at 8-48 kHz; mono"


class OutboundAudio:
    def __init__(self, requested: media_pb2.AudioFormat, source_rate: int) -> None:
        codec = requested.codec or media_pb2.AUDIO_CODEC_PCM16
        defaults = {
            media_pb2.AUDIO_CODEC_OPUS: 48000,
            media_pb2.AUDIO_CODEC_PCMU: 8000,
            media_pb2.AUDIO_CODEC_PCMA: 8000,
        }
        rate = requested.sample_rate or defaults.get(codec, source_rate)
        valid = {
            media_pb2.AUDIO_CODEC_PCM16: (8000, 16000, 24000, 48000),
            media_pb2.AUDIO_CODEC_PCMU: (8000,),
            media_pb2.AUDIO_CODEC_PCMA: (8000,),
            media_pb2.AUDIO_CODEC_OPUS: (8000, 12000, 16000, 24000, 48000),
        }.get(codec, ())
        if rate not in valid or (requested.channels or 1) != 1:
            raise SessionError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"unsupported output format {codec_name(codec)} {rate} Hz {requested.channels or 1} ch "
                f"(supported: {SUPPORTED})",
            )
        self.codec = codec
        self.rate = rate
        self.source_rate = source_rate
        self._resampler = audio_core.Resampler(source_rate, rate) if rate != source_rate else None
        self._opus = audio_core.OpusEncoder(rate, 1) if codec == media_pb2.AUDIO_CODEC_OPUS else None

    def encode(self, pcm: bytes) -> bytes:
        """One frame of source-rate PCM16 -> one frame payload in the requested format."""
        if self._resampler is not None:
            pcm = self._resampler.process(pcm)
        if self.codec == media_pb2.AUDIO_CODEC_PCMU:
            return audio_core.ulaw_encode(pcm)
        if self.codec == media_pb2.AUDIO_CODEC_PCMA:
            return audio_core.alaw_encode(pcm)
        if self._opus is not None:
            return self._opus.encode(pcm)
        return pcm

    def timestamp(self, source_timestamp: int) -> int:
        """A sample-clock position at the source rate, at the output rate."""
        return source_timestamp * self.rate // self.source_rate
