"""What the softphone shows and saves after a call: the latency table and a WAV of both sides."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
from google.protobuf.duration_pb2 import Duration

import audio_core
from services.softphone.caller import CALLER_RATE, CallRecord
from voice.v1 import agent_session_pb2 as pb


def _ms(duration: Duration) -> float:
    return duration.ToNanoseconds() / 1e6


def latency_table(latencies: list[pb.TurnLatency]) -> str:
    """One row per answered turn, milliseconds from the end of the caller's speech."""
    header = (
        f"{'turn':>4} {'stt final':>9} {'llm 1st':>8} {'to tts':>7} {'tts 1st':>8} {'1st frame':>9} "
        f"{'providers':>9} {'waits':>6} {'overhead':>8}"
    )
    rows = [header, "-" * len(header)]
    for lat in latencies:
        e2e = _ms(lat.first_audio_frame_sent)
        overhead = e2e - _ms(lat.provider_time) - _ms(lat.endpointing)
        rows.append(
            f"{lat.turn_index:>4} {_ms(lat.stt_final):>9.0f} {_ms(lat.llm_first_token):>8.0f} "
            f"{_ms(lat.first_sentence_to_tts):>7.0f} {_ms(lat.tts_first_audio):>8.0f} {e2e:>9.0f} "
            f"{_ms(lat.provider_time):>9.0f} {_ms(lat.endpointing):>6.0f} {overhead:>8.1f}"
        )
    rows.append(
        "(ms after the caller stopped speaking; waits = silence detection + grace period; "
        "overhead = 1st frame - providers - waits)"
    )
    return "\n".join(rows)


def write_wav(record: CallRecord, path: Path) -> float:
    """Mixes caller and agent onto one timeline (mono, the agent's rate); returns the length in seconds."""
    rate = record.agent_rate
    end = max([t for t, _ in record.agent_audio] + [t for t, _ in record.caller_audio] + [0.0]) + 0.1
    track = np.zeros(int(end * rate) + rate, dtype=np.int32)
    upsample = audio_core.Resampler(CALLER_RATE, rate)
    for sources, convert in (
        (record.caller_audio, upsample.process),
        (record.agent_audio, lambda pcm: pcm),
    ):
        for t, pcm in sources:
            samples = np.frombuffer(convert(pcm), dtype="<i2")
            start = int(t * rate)
            track[start : start + len(samples)] += samples[: max(0, len(track) - start)]
    pcm16 = np.clip(track, -32768, 32767).astype("<i2").tobytes()
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pcm16)
    return len(pcm16) / 2 / rate
