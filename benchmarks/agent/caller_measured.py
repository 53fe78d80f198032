"""What a caller measures on its own side of a call: per turn, end of its speech to the first agent audio
as received, and every gap between agent frames inside a reply. Pure functions over a softphone
CallRecord (arrival times are the softphone's, taken when a response came off the stream), plus a
histogram quantile for the agent's Prometheus loop-lag buckets."""

from __future__ import annotations

import math
import re

from services.softphone.caller import CallRecord

FRAME_S = 0.020
# A caller frame louder than this (RMS of 16-bit samples, about -36 dBFS) is speech; the end of speech
# is the end of the last such frame of a line (trailing silence of the voice does not count).
SPEECH_RMS = 500.0
# Caller frames further apart than this belong to different lines (turns).
TURN_GAP_S = 0.5
# An agent frame arriving more than this after the previous one of the same reply is late: two frame
# periods, the bound the "frame gaps under 40 ms" uses.
LATE_GAP_MS = 40.0


def _rms(frame: bytes) -> float:
    samples = memoryview(frame).cast("h") if len(frame) % 2 == 0 else memoryview(b"").cast("h")
    if not samples:
        return 0.0
    return math.sqrt(sum(s * s for s in samples) / len(samples))


def speech_ends(record: CallRecord) -> list[tuple[float, float]]:
    """(start, end of speech) per caller line, in call time."""
    turns: list[tuple[float, float]] = []
    start = last_sent = last_loud = -1.0
    for t, frame in record.caller_audio:
        if last_sent >= 0 and t - last_sent > TURN_GAP_S:
            if last_loud >= 0:
                turns.append((start, last_loud + FRAME_S))
            start, last_loud = -1.0, -1.0
        if start < 0:
            start = t
        if _rms(frame) >= SPEECH_RMS:
            last_loud = t
        last_sent = t
    if last_loud >= 0:
        turns.append((start, last_loud + FRAME_S))
    return turns


def caller_e2e_ms(record: CallRecord) -> list[float]:
    """Per caller line: end of speech to the first agent audio frame received after it (lines the agent
    never answered before the next line began are left out)."""
    turns = speech_ends(record)
    arrivals = [t for t, _ in record.agent_audio]
    out = []
    for i, (_, end) in enumerate(turns):
        next_start = turns[i + 1][0] if i + 1 < len(turns) else math.inf
        first = next((t for t in arrivals if t > end), None)
        if first is not None and first < next_start:
            out.append((first - end) * 1000)
    return out


def frame_gaps_ms(record: CallRecord) -> list[float]:
    """Gaps between consecutive agent frames of one reply (the greeting or an answer); the wait across
    a caller's end of speech (the caller's line, then the agent's thinking) is not a gap."""
    bounds = [end for _, end in speech_ends(record)]
    gaps = []
    previous: float | None = None
    for t, _ in record.agent_audio:
        if previous is not None and not any(previous < b <= t for b in bounds):
            gaps.append((t - previous) * 1000)
        previous = t
    return gaps


def server_vs_caller_ms(record: CallRecord) -> list[float]:
    """Caller-measured minus server-reported (TurnLatency.first_audio_frame_sent) per answered turn,
    pairing the last turns of each list."""
    caller = caller_e2e_ms(record)
    server = [lat.first_audio_frame_sent.ToNanoseconds() / 1e6 for lat in record.latencies]
    n = min(len(caller), len(server))
    if n == 0:
        return []
    return [c - s for c, s in zip(caller[-n:], server[-n:], strict=True)]


def agent_audio_seconds(record: CallRecord) -> float:
    return len(record.agent_audio) * FRAME_S


def histogram_quantile(text: str, name: str, q: float, before: str = "") -> float:
    """The q-quantile (upper bucket bound, in the metric's unit) of Prometheus histogram `name` in
    exposition `text`, summed over label sets; minus the counts in `before` (an earlier scrape)."""

    def buckets(body: str) -> dict[float, float]:
        out: dict[float, float] = {}
        for le, value in re.findall(rf'^{name}_bucket{{[^}}]*le="([^"]+)"[^}}]*}} ([0-9.e+-]+)$', body, re.M):
            bound = math.inf if le == "+Inf" else float(le)
            out[bound] = out.get(bound, 0.0) + float(value)
        return out

    now, then = buckets(text), buckets(before) if before else {}
    counts = sorted((b, c - then.get(b, 0.0)) for b, c in now.items())
    if not counts or counts[-1][1] <= 0:
        return math.nan
    wanted = q * counts[-1][1]
    for bound, cumulative in counts:
        if cumulative >= wanted:
            return bound
    return math.inf
