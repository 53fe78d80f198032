"""What the softphone shows and saves after a call: the latency table and a WAV of both sides."""

from __future__ import annotations

import wave
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from google.protobuf.duration_pb2 import Duration

import audio_core
from services.softphone.caller import CALLER_RATE, CallRecord
from voice.v1 import agent_session_pb2 as pb


def _ms(duration: Duration) -> float:
    return duration.ToNanoseconds() / 1e6


# A 20 ms frame counts as speech above this RMS (PCM16); the line-level hiss of a phone stays far below.
VOICED_RMS = 300.0
# Agent audio after this much silence starts a new reply (sentence gaps inside a reply are shorter).
REPLY_GAP_S = 0.6


def voiced(pcm: bytes) -> bool:
    samples = np.frombuffer(pcm[: len(pcm) // 2 * 2], dtype="<i2").astype(np.float64)
    return bool(samples.size) and float(np.sqrt(np.mean(samples**2))) > VOICED_RMS


def caller_e2e_ms(record: CallRecord) -> list[float]:
    """Latency as the caller hears it, per agent reply that follows caller speech: from the last voiced
    frame the caller sent to the first voiced frame of the agent's reply, on the softphone's own clock
    (network, jitter and the agent's pacing included; independent of the server's marks)."""
    caller = [t for t, pcm in record.caller_audio if voiced(pcm)]
    agent = [t for t, pcm in record.agent_audio if voiced(pcm)]
    starts, last = [], -1e9
    for t in agent:
        if t - last > REPLY_GAP_S:
            starts.append(t)
        last = t
    out, previous_start = [], -1e9
    for start in starts:
        spoken = [t for t in caller if previous_start < t < start]
        if spoken:
            out.append((start - (spoken[-1] + 0.02)) * 1000)  # the frame's end, not its start
        previous_start = start
    return out


def latency_table(latencies: list[pb.TurnLatency], caller_ms: Sequence[float] = ()) -> str:
    """One row per answered turn, milliseconds from the end of the caller's speech; `caller_ms` (as
    measured at the caller, caller_e2e_ms) adds a column beside the server's first-frame figure."""
    header = (
        f"{'turn':>4} {'stt final':>9} {'llm 1st':>8} {'to tts':>7} {'tts 1st':>8} {'1st frame':>9} "
        f"{'providers':>9} {'waits':>6} {'overhead':>8}" + (f" {'at caller':>9}" if caller_ms else "")
    )
    rows = [header, "-" * len(header)]
    for n, lat in enumerate(latencies):
        e2e = _ms(lat.first_audio_frame_sent)
        overhead = e2e - _ms(lat.provider_time) - _ms(lat.endpointing)
        heard = f" {caller_ms[n]:>9.0f}" if n < len(caller_ms) else (f" {'-':>9}" if caller_ms else "")
        rows.append(
            f"{lat.turn_index:>4} {_ms(lat.stt_final):>9.0f} {_ms(lat.llm_first_token):>8.0f} "
            f"{_ms(lat.first_sentence_to_tts):>7.0f} {_ms(lat.tts_first_audio):>8.0f} {e2e:>9.0f} "
            f"{_ms(lat.provider_time):>9.0f} {_ms(lat.endpointing):>6.0f} {overhead:>8.1f}{heard}"
        )
    rows.append(
        "(ms after the caller stopped speaking; waits = silence detection + grace period; "
        "overhead = 1st frame - providers - waits"
        + (
            "; at caller = last caller frame sent -> first agent frame heard, on the softphone's clock)"
            if caller_ms
            else ")"
        )
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
