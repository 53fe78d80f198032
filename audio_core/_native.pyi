"""Typed stubs for the compiled Rust audio core (``audio_core._native``).

All PCM is mono (unless stated) 16-bit signed little-endian. Every argument documented as
``Buffer`` accepts ``bytes``, ``bytearray``, ``memoryview`` or a C-contiguous numpy array, read
without copying. Invalid input raises ``ValueError`` with a clear message; nothing panics.
"""

from typing import Any, Literal, TypeAlias

import numpy as np
from typing_extensions import Buffer as _Buffer

#: bytes, bytearray, memoryview or a C-contiguous numpy array.
Buffer: TypeAlias = _Buffer | np.ndarray[Any, Any]

FrameKind = Literal["normal", "buffering", "silence", "fec", "concealed", "underrun"]
InsertStatus = Literal["accepted", "late", "duplicate", "reset", "ignored"]
JitterKind = Literal["buffering", "silence", "concealed", "underrun", "fec", "packet", "discard"]

def native_version() -> str:
    """Version of the compiled Rust core."""

def libopus_version() -> str:
    """Version string of the statically linked libopus."""

# G.711
def ulaw_encode(pcm: Buffer) -> bytes:
    """PCM16 -> G.711 mu-law (PCMU), one byte per sample, bit-exact with ITU-T G.711."""

def ulaw_decode(data: Buffer) -> bytes:
    """G.711 mu-law -> PCM16."""

def alaw_encode(pcm: Buffer) -> bytes:
    """PCM16 -> G.711 A-law (PCMA)."""

def alaw_decode(data: Buffer) -> bytes:
    """G.711 A-law -> PCM16."""

# Frame helpers
def pcm16_to_float32(pcm: Buffer) -> bytes:
    """PCM16 -> little-endian float32 samples in [-1, 1)."""

def float32_to_pcm16(samples: Buffer) -> bytes:
    """Little-endian float32 -> PCM16 (rounded, saturated, NaN -> 0)."""

def apply_gain(pcm: Buffer, gain: float) -> bytes:
    """Multiply PCM16 by a linear gain, saturating."""

def mix(a: Buffer, b: Buffer) -> bytes:
    """Saturating sum of two PCM16 buffers of equal length."""

def rms_dbfs(pcm: Buffer) -> float:
    """RMS level in dBFS (full scale 32768); -120.0 for silence or empty input."""

# RTP
class RtpPacket:
    """A parsed RTP packet (RFC 3550); padding already removed from ``payload``."""

    @property
    def marker(self) -> bool:
        """Marker bit (audio: first packet of a talk spurt)."""
    @property
    def payload_type(self) -> int:
        """Payload type, 0..127."""
    @property
    def sequence(self) -> int:
        """Sequence number, 0..65535."""
    @property
    def timestamp(self) -> int:
        """RTP timestamp in the payload clock."""
    @property
    def ssrc(self) -> int:
        """Synchronisation source."""
    @property
    def csrcs(self) -> list[int]:
        """Contributing sources."""
    @property
    def extension_profile(self) -> int | None:
        """Header-extension profile word, if the X bit was set."""
    @property
    def extension(self) -> bytes | None:
        """Header-extension data, if present."""
    @property
    def payload(self) -> bytes:
        """Payload bytes."""

def parse_rtp(data: Buffer) -> RtpPacket:
    """Parse an RTP datagram with strict bounds checks (version, CSRCs, extension, padding)."""

def build_rtp(
    payload_type: int,
    sequence: int,
    timestamp: int,
    ssrc: int,
    payload: Buffer,
    marker: bool = False,
    csrcs: list[int] = ...,
    extension: tuple[int, bytes] | None = None,
) -> bytes:
    """Build an RTP packet (no padding); extension data length must be a multiple of 4."""

class DtmfEvent:
    """An RFC 4733 telephone event."""

    @property
    def event(self) -> int:
        """Event code (0-9, 10='*', 11='#', 12-15=A-D, ...)."""
    @property
    def digit(self) -> str | None:
        """The DTMF character for events 0..15."""
    @property
    def end(self) -> bool:
        """End-of-event bit."""
    @property
    def volume(self) -> int:
        """Volume in -dBm0."""
    @property
    def duration(self) -> int:
        """Duration so far in timestamp units."""

def parse_dtmf(payload: Buffer) -> DtmfEvent:
    """Parse the first event block of a telephone-event payload (needs 4 bytes)."""

# Opus
def opus_packet_samples(packet: Buffer, sample_rate: int = 48000) -> int:
    """Samples per channel the packet decodes to at ``sample_rate``; ValueError if malformed."""

def opus_packet_has_fec(packet: Buffer) -> bool:
    """Whether the packet carries in-band FEC (LBRR) for the previous frame."""

class OpusEncoder:
    """libopus encoder. Frames must be 2.5/5/10/20/40/60 ms at ``sample_rate``."""

    def __init__(
        self,
        sample_rate: int = 48000,
        channels: int = 1,
        application: Literal["voip", "audio", "lowdelay"] = "voip",
        bitrate: int = 32000,
        complexity: int = 5,
        fec: bool = True,
        packet_loss_perc: int = 10,
        dtx: bool = False,
    ) -> None:
        """Rates 8/12/16/24/48 kHz; complexity 0..10 (telephony default 5); in-band FEC driven by
        ``packet_loss_perc``; DTX emits tiny packets during silence."""
    def encode(self, pcm: Buffer) -> bytes:
        """Encode exactly one frame of interleaved PCM16; returns the Opus packet."""
    def encode_many(self, pcm: Buffer, frame_samples: int) -> int:
        """Encode consecutive frames with the GIL released; returns total packet bytes (dropped)."""
    def set_bitrate(self, bitrate: int) -> None:
        """Change the target bitrate (500..512000 bit/s)."""
    def set_packet_loss_perc(self, perc: int) -> None:
        """Change the expected loss percentage (drives FEC)."""
    @property
    def sample_rate(self) -> int:
        """Input rate."""
    @property
    def channels(self) -> int:
        """Channels."""
    @property
    def complexity(self) -> int:
        """Complexity 0..10."""
    @property
    def bitrate(self) -> int:
        """Target bitrate."""

class OpusDecoder:
    """libopus decoder with packet-loss concealment and FEC recovery."""

    def __init__(self, sample_rate: int = 48000, channels: int = 1) -> None:
        """Output rate 8/12/16/24/48 kHz (libopus resamples internally)."""
    def decode(self, packet: Buffer) -> bytes:
        """Decode one packet to PCM16."""
    def conceal(self, samples: int) -> bytes:
        """PLC for a lost packet: ``samples`` per channel, a multiple of 2.5 ms up to 120 ms."""
    def decode_fec(self, next_packet: Buffer, samples: int) -> bytes:
        """Rebuild the lost frame before ``next_packet`` from its FEC (PLC if it has none)."""
    def decode_many(self, packets: list[bytes]) -> int:
        """Decode a batch with the GIL released; returns total samples per channel (output dropped)."""
    @property
    def sample_rate(self) -> int:
        """Output rate."""
    @property
    def channels(self) -> int:
        """Channels."""

# Resampler
class Resampler:
    """Streaming low-delay polyphase resampler (mono).

    Rates: 8000, 12000, 16000, 22050, 24000, 32000, 44100, 48000. Output per chunk is steady and
    chunk-size independent (bit-identical for any split of the input); the delay is constant
    (``delay_ms``, <= 3 ms for all pairs among 8/16/24/48 kHz).
    """

    def __init__(self, in_rate: int, out_rate: int) -> None:
        """Create a resampler; ValueError for unsupported rates."""
    def process(self, pcm: Buffer) -> bytes:
        """Feed PCM16, get all PCM16 output available now."""
    def process_float(self, samples: Buffer) -> bytes:
        """Feed little-endian float32, get float32 output (GIL released for long buffers)."""
    def flush(self) -> bytes:
        """End of stream: the delayed tail as PCM16, then reset. The whole output then covers the
        whole input: total = ceil((input + delay) x ratio), the leading ``delay_ms`` being the
        filter's constant latency."""
    def flush_float(self) -> bytes:
        """End of stream for the float32 path."""
    def reset(self) -> None:
        """Drop all history."""
    def set_ratio_adjust(self, factor: float) -> None:
        """Clock-drift correction: factor 0.95..1.05 (>1 = more output), applied click-free."""
    @property
    def in_rate(self) -> int:
        """Input rate."""
    @property
    def out_rate(self) -> int:
        """Output rate."""
    @property
    def delay_ms(self) -> float:
        """Constant algorithmic delay in milliseconds."""
    @property
    def delay_output_samples(self) -> float:
        """The same delay in output samples."""
    @property
    def passband_hz(self) -> float:
        """Passband edge (0.8 x the lower Nyquist frequency)."""
    @property
    def stopband_hz(self) -> float:
        """Stopband edge (attenuation >= 80 dB beyond it)."""

# Jitter buffer and legs
class JitterBuffer:
    """Packet-level adaptive jitter buffer (RTP semantics, no codec): says what to play."""

    def __init__(
        self,
        clock_rate: int = 48000,
        frame_ms: int = 20,
        min_delay_ms: float = 20.0,
        max_delay_ms: float = 400.0,
        initial_delay_ms: float = 60.0,
        capacity: int = 512,
        time_stretch: bool = False,
    ) -> None:
        """``capacity`` (power of two) bounds how far ahead a sequence number may be. With
        ``time_stretch`` the buffer never drops or inserts whole frames: the caller time-scales
        its audio toward ``target_delay_ms`` using ``playout_delay_ms`` (as ``InboundLeg`` does);
        without it the buffer falls back to dropping/concealing frames on quiet audio."""
    def insert(
        self,
        sequence: int,
        timestamp: int,
        payload: Buffer,
        arrival_ms: float,
        samples: int = 0,
        has_fec: bool = False,
    ) -> InsertStatus:
        """Insert a packet that arrived at ``arrival_ms``; ``samples`` = duration in clock units
        (0 = one frame)."""
    def pop(self, now_ms: float, low_energy: bool = True) -> tuple[JitterKind, int | None, int, bytes | None]:
        """Next unit to play: (kind, sequence, samples in clock units, payload)."""
    def stats(self) -> dict[str, float]:
        """received, lost, late, duplicated, concealed, fec_recovered, underruns, played,
        accelerated, expanded, dtx_frames, resets, reanchors, buffered, current_delay_ms (media
        buffered ahead of the cursor), target_delay_ms, playout_delay_ms, drift_ppm.
        ``lost == concealed + fec_recovered``; late packets are counted in ``lost``."""
    def reset(self) -> None:
        """Forget the stream (counters kept)."""

class InboundLeg:
    """RTP (Opus or PCMU/PCMA) -> jitter buffer -> decode/PLC/FEC -> resample -> PCM16 frames."""

    def __init__(
        self,
        codec: str = "opus",
        output_rate: int = 16000,
        payload_type: int | None = None,
        frame_ms: int = 20,
        min_delay_ms: float = 20.0,
        max_delay_ms: float = 400.0,
        initial_delay_ms: float = 60.0,
        decode_rate: int | None = None,
        dtmf_payload_type: int | None = 101,
    ) -> None:
        """``payload_type`` filters audio (None: lock onto the first audio payload type seen);
        ``dtmf_payload_type`` packets go to :meth:`dtmf_events`, never to the decoder; other types
        are counted (``unknown_payload_type``) and dropped. ``decode_rate`` forces the Opus decode
        rate (default: the output rate, so libopus does the rate change).

        Delay is held at the target by time-scale modification (WSOLA, at most 5 %), never by
        cutting frames; timestamp jumps and SSRC changes re-anchor without silence; sender clock
        drift goes to the resampler's ratio (or the time-scaler when there is no resampler)."""
    def insert(self, packet: Buffer, arrival_ms: float) -> InsertStatus:
        """Insert one RTP datagram; ValueError for malformed RTP or Opus TOC."""
    def pop(self, now_ms: float) -> tuple[bytes, FrameKind]:
        """Exactly one frame (``frame_samples`` PCM16 samples) for time ``now_ms``."""
    def stats(self) -> dict[str, float]:
        """Jitter-buffer counters (current_delay_ms and playout_delay_ms include decoded audio
        waiting to play) plus decode_errors, ignored, accelerated_ms, expanded_ms, time_scale,
        drift_ratio, unknown_payload_type, dtmf_packets, stray_ssrc, ssrc_changes."""
    def dtmf_events(self) -> list[tuple[int, DtmfEvent]]:
        """Telephone-events received since the last call, oldest first: (RTP timestamp, event)."""
    @property
    def frame_samples(self) -> int:
        """Samples per output frame."""
    @property
    def decode_rate(self) -> int:
        """Rate the codec decodes at."""
    @property
    def resampler_delay_ms(self) -> float:
        """Delay added by resampling (0 when the codec decodes at the output rate)."""

class OutboundLeg:
    """PCM16 (e.g. TTS at 24 kHz) -> resample -> encode -> RTP packets."""

    def __init__(
        self,
        codec: str = "opus",
        input_rate: int = 24000,
        payload_type: int | None = None,
        ssrc: int = 0,
        frame_ms: int = 20,
        bitrate: int = 32000,
        complexity: int = 5,
        fec: bool = True,
        packet_loss_perc: int = 10,
        dtx: bool = False,
        encode_rate: int | None = None,
        sequence: int = 0,
        timestamp: int = 0,
    ) -> None:
        """``encode_rate`` forces the Opus input rate (default: the input rate when libopus
        supports it). Payload type defaults to 111 (Opus), 0 (PCMU), 8 (PCMA)."""
    def push(self, pcm: Buffer) -> list[bytes]:
        """Add PCM16; returns the RTP packets completed by it (any chunk size)."""
    def flush(self) -> list[bytes]:
        """Flush the resampler's tail, ramp to silence (5 ms), pad the last partial frame with
        silence and return the remaining packets."""
    def set_marker(self) -> None:
        """Mark the next packet as a talk-spurt start."""
    def clear(self) -> None:
        """Drop audio not yet encoded (barge-in): what was sent fades out over 5 ms and the next
        audio fades in over 5 ms, so the splice never clicks."""
    @property
    def sequence(self) -> int:
        """Next sequence number."""
    @property
    def timestamp(self) -> int:
        """Next RTP timestamp."""
    @property
    def encode_rate(self) -> int:
        """Rate the encoder runs at."""
    @property
    def resampler_delay_ms(self) -> float:
        """Delay added by resampling."""
