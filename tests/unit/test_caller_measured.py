"""The benchmark's caller-side measures on a hand-made call record: end of speech from the audio, first
agent audio after it, gaps only inside a reply, the loop-lag quantile from histogram buckets."""

from __future__ import annotations

import math
import struct

from benchmarks.agent import caller_measured as cm
from services.softphone.caller import CallRecord

LOUD = struct.pack("<320h", *([3000, -3000] * 160))
QUIET = bytes(640)


def record() -> CallRecord:
    rec = CallRecord("c")
    # Greeting frames 0.10-0.50 s (one straggler arrives after the caller starts), one 100 ms stall.
    rec.agent_audio = [(0.10 + 0.02 * i, b"") for i in range(10)] + [(0.40, b""), (0.42, b""), (1.01, b"")]
    # The caller: loud 1.00-1.40 s, then 0.2 s of its voice's trailing silence.
    rec.caller_audio = [(1.00 + 0.02 * i, LOUD) for i in range(20)] + [
        (1.40 + 0.02 * i, QUIET) for i in range(10)
    ]
    # The answer starts 0.75 s after the end of speech (1.42 s).
    rec.agent_audio += [(2.17 + 0.02 * i, b"") for i in range(5)]
    return rec


def test_end_of_speech_and_first_audio_as_the_caller_hears_them() -> None:
    rec = record()
    [(start, end)] = cm.speech_ends(rec)
    assert start == 1.00 and math.isclose(end, 1.40)
    [e2e] = cm.caller_e2e_ms(rec)
    assert math.isclose(e2e, 770.0, abs_tol=0.01)


def test_gaps_only_inside_replies() -> None:
    gaps = cm.frame_gaps_ms(record())
    # The greeting's stall (0.28 -> 0.40) and its straggler count; the wait for the answer does not.
    assert max(gaps) < 700 and any(math.isclose(g, 590.0, abs_tol=0.01) for g in gaps)
    assert sum(g > cm.LATE_GAP_MS for g in gaps) == 2


def test_histogram_quantile_between_scrapes() -> None:
    name = "agent_event_loop_lag_seconds"

    def scrape(*counts: float) -> str:
        bounds = ("0.001", "0.01", "+Inf")
        return "".join(f'{name}_bucket{{le="{b}"}} {c}\n' for b, c in zip(bounds, counts, strict=True))

    before, after = scrape(10, 10, 10), scrape(60, 109, 110)
    assert cm.histogram_quantile(after, name, 0.5, before) == 0.001
    assert cm.histogram_quantile(after, name, 0.99, before) == 0.01
    assert math.isnan(cm.histogram_quantile(before, name, 0.99, before))
