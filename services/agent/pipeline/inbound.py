"""Validation and decoding of the caller's frames into 16 kHz PCM16 for VAD and STT.

The bridge normally sends PCM16 16 kHz (it decodes with audio_core at the edge), but a caller side may
announce Opus, G.711 or PCM16 at another rate in SessionStart; those are decoded and resampled here
with audio_core. Lost Opus frames (a gap in sequence numbers) are concealed by libopus PLC.
"""

from __future__ import annotations

import grpc

import audio_core
from services.agent.pipeline.errors import SessionError
from voice.v1 import media_pb2

PIPELINE_RATE = 16000
MAX_FRAME_MS = 120
MAX_CONCEALED_FRAMES = 5  # a longer gap is a new talk spurt, not loss worth concealing
PCM_RATES = (8000, 16000, 24000, 48000)
OPUS_RATES = (8000, 12000, 16000, 24000, 48000)
SUPPORTED = "PCM16 at 8/16/24/48 kHz, Opus (8-48 kHz) or PCMU/PCMA at 8 kHz; mono; frames of 10-120 ms"


def codec_name(codec: int) -> str:
    if codec in media_pb2.AudioCodec.values():
        return str(media_pb2.AudioCodec.Name(media_pb2.AudioCodec.ValueType(codec)))
    return str(codec)


def _invalid(message: str) -> SessionError:
    return SessionError(grpc.StatusCode.INVALID_ARGUMENT, message)


class InboundAudio:
    """Checks each frame against the format announced in SessionStart and returns 16 kHz PCM16."""

    def __init__(self, announced: media_pb2.AudioFormat) -> None:
        codec = announced.codec or media_pb2.AUDIO_CODEC_PCM16
        channels = announced.channels or 1
        default_rate = {
            media_pb2.AUDIO_CODEC_OPUS: 48000,
            media_pb2.AUDIO_CODEC_PCMU: 8000,
            media_pb2.AUDIO_CODEC_PCMA: 8000,
        }.get(codec, PIPELINE_RATE)
        rate = announced.sample_rate or default_rate
        valid_rates = {
            media_pb2.AUDIO_CODEC_PCM16: PCM_RATES,
            media_pb2.AUDIO_CODEC_OPUS: OPUS_RATES,
            media_pb2.AUDIO_CODEC_PCMU: (8000,),
            media_pb2.AUDIO_CODEC_PCMA: (8000,),
        }.get(codec, ())
        if rate not in valid_rates or channels != 1:
            raise _invalid(
                f"unsupported input format {codec_name(codec)} {rate} Hz {channels} ch "
                f"(supported: {SUPPORTED})"
            )
        self.codec = codec
        self.rate = rate
        self.frames = 0
        self.concealed = 0
        self._last_sequence: int | None = None
        # Opus decodes straight to 16 kHz (libopus resamples inside); the others go through audio_core.
        self._opus = audio_core.OpusDecoder(PIPELINE_RATE, 1) if codec == media_pb2.AUDIO_CODEC_OPUS else None
        decoded_rate = PIPELINE_RATE if self._opus else rate
        self._resampler = (
            audio_core.Resampler(decoded_rate, PIPELINE_RATE) if decoded_rate != PIPELINE_RATE else None
        )

    def decode(self, frame: media_pb2.AudioFrame) -> bytes:
        seq = frame.sequence_number
        if frame.codec not in (0, self.codec):
            raise _invalid(
                f"frame {seq}: codec {codec_name(frame.codec)} differs from the announced "
                f"{codec_name(self.codec)}"
            )
        if frame.sample_rate not in (0, self.rate):
            raise _invalid(
                f"frame {seq}: sample rate {frame.sample_rate} Hz differs from the announced {self.rate} Hz"
            )
        if frame.channels not in (0, 1):
            raise _invalid(f"frame {seq}: mono only, got {frame.channels} channels")
        payload = frame.payload
        if self._opus is not None:
            pcm = self._concealment(seq) + self._decode_opus(seq, payload)
        else:
            width = 2 if self.codec == media_pb2.AUDIO_CODEC_PCM16 else 1
            max_bytes = self.rate * MAX_FRAME_MS // 1000 * width
            if not payload or len(payload) % width or len(payload) > max_bytes:
                raise _invalid(
                    f"frame {seq}: {len(payload)} bytes is not {codec_name(self.codec)} audio of "
                    f"1-{MAX_FRAME_MS} ms at {self.rate} Hz (20 ms = {self.rate // 50 * width} bytes)"
                )
            if self.codec == media_pb2.AUDIO_CODEC_PCMU:
                pcm = audio_core.ulaw_decode(payload)
            elif self.codec == media_pb2.AUDIO_CODEC_PCMA:
                pcm = audio_core.alaw_decode(payload)
            else:
                pcm = bytes(payload)
        self._last_sequence = seq
        self.frames += 1
        return self._resampler.process(pcm) if self._resampler is not None else pcm

    def _decode_opus(self, seq: int, packet: bytes) -> bytes:
        assert self._opus is not None
        if not packet:
            raise _invalid(f"frame {seq}: empty Opus packet")
        try:
            samples = audio_core.opus_packet_samples(packet, PIPELINE_RATE)
            if samples > PIPELINE_RATE * MAX_FRAME_MS // 1000:
                raise ValueError(f"{samples} samples is longer than {MAX_FRAME_MS} ms")
            return self._opus.decode(packet)
        except ValueError as exc:
            raise _invalid(f"frame {seq}: corrupt Opus packet ({exc})") from None

    def _concealment(self, seq: int) -> bytes:
        """PLC audio for frames lost just before `seq` (20 ms each), so the recogniser hears no holes."""
        assert self._opus is not None
        if self._last_sequence is None:
            return b""
        missing = (seq - self._last_sequence - 1) % 2**32
        if not 0 < missing <= MAX_CONCEALED_FRAMES:
            return b""
        self.concealed += missing
        return b"".join(self._opus.conceal(PIPELINE_RATE // 50) for _ in range(missing))
