"""The inbound leg replaying network schedules: the fixed-seed corpus and generated ones.

Every replay asserts one frame per pop, statistics that add up and frame boundaries no steeper than
1.5x the signal's own 99th-percentile step; each corpus entry adds what its scenario is about
(latency at the target, recovery after a spike, bounded delay under drift, no silence at
discontinuities).
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import audio_core as ac
from benchmarks.audio.schedules import (
    FRAME_MS,
    Replay,
    Schedule,
    encode,
    load_corpus,
    p99_step,
    replay,
    spike_recovery_s,
    voice,
)

CORPUS = {s.name: s for s in load_corpus()}
TAIL = 21  # pops after the stream ended


@functools.cache
def payloads(codec: str) -> list[bytes]:
    return encode(codec, 25.0)


@functools.cache
def reference_step(rate: int) -> float:
    return p99_step(voice(rate, 4.0))


def common_checks(r: Replay, output_rate: int) -> None:
    assert r.pops_per_frame_ok
    assert r.stats_add_up, r.stats
    ratio = float(r.boundary_steps(skip_end=TAIL).max()) / reference_step(output_rate)
    assert ratio <= 1.5, ratio
    assert max(r.delays) <= 400.0 + FRAME_MS, max(r.delays)


def steady(r: Replay) -> np.ndarray:
    return np.array(r.delays[100:-TAIL])


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_corpus(name: str) -> None:
    s = CORPUS[name]
    r = replay(s, payloads("opus"))
    common_checks(r, 16000)
    d = steady(r)
    target = r.targets[-TAIL - 1]
    if name in ("clean", "wrap", "ssrc_change") or name.startswith("ts_jump"):
        assert np.median(d) <= target + FRAME_MS
        assert d.max() <= target + FRAME_MS
    if name.startswith("ts_jump") or name == "ssrc_change":
        # Re-anchored within a frame: nothing but decoded audio, nothing lost.
        assert set(r.kinds[50:-TAIL]) == {"normal"}, r.kinds
        assert r.stats["lost"] == 0
    if name.startswith("spike"):
        assert spike_recovery_s(r, s) <= 2.0
    if name.startswith("drift"):
        assert d.max() <= 80.0
        assert r.stats["late"] <= 5, r.stats
    # Underruns are empty-buffer frames while packets keep arriving; the only ones on a stream
    # without lateness are the frames right after it ends (it is still "alive" for 60 ms).
    if name == "dtx_pause":
        assert r.stats["lost"] == 0 and r.stats["underruns"] <= 3, r.stats
        assert r.stats["dtx_frames"] >= 70, r.stats
    if name == "loss_bursts":
        # Losses are concealment, not underruns, and counted once.
        assert r.stats["late"] == 0 and r.stats["underruns"] <= 3, r.stats
        assert r.stats["concealed"] + r.stats["fec_recovered"] == r.stats["lost"] > 0, r.stats
    if name == "late_packets":
        assert r.stats["late"] == r.stats["lost"] > 0, r.stats
    if name == "clean":
        # From the 60 ms initial delay down to the 20 ms target, by time-scaling alone.
        net = r.stats["accelerated_ms"] - r.stats["expanded_ms"]
        assert 30 <= net <= 60 and r.stats["expanded_ms"] < 10, r.stats


@pytest.mark.parametrize(("decode_rate", "output_rate"), [(48000, 16000), (None, 48000)])
@pytest.mark.parametrize("name", ["jitter40", "drift_slow_1", "everything"])
def test_corpus_other_paths(name: str, decode_rate: int | None, output_rate: int) -> None:
    r = replay(CORPUS[name], payloads("opus"), output_rate=output_rate, decode_rate=decode_rate)
    common_checks(r, output_rate)


def test_corpus_pcmu() -> None:
    for name in ("clean", "loss_bursts", "jitter40"):
        r = replay(CORPUS[name], payloads("pcmu"), codec="pcmu")
        common_checks(r, 16000)


GENERATED = st.builds(
    Schedule,
    name=st.just("generated"),
    seed=st.integers(0, 2**32),
    seconds=st.just(6.0),
    jitter_ms=st.floats(0, 60),
    loss=st.floats(0, 0.08),
    burst=st.integers(1, 4),
    reorder=st.floats(0, 0.05),
    dup=st.floats(0, 0.05),
    drift=st.floats(-0.01, 0.01),
    start_seq=st.integers(0, 65535),
    start_ts=st.integers(0, 2**32 - 1),
    ts_jump=st.one_of(st.none(), st.tuples(st.just(2000.0), st.integers(-5000, 10000), st.booleans())),
    ssrc_change_ms=st.one_of(st.none(), st.just(4000.0)),
    dtx=st.one_of(st.none(), st.just((4500.0, 5000.0))),
)


@settings(max_examples=10, deadline=None, derandomize=True)
@given(GENERATED)
def test_generated_schedules(s: Schedule) -> None:
    r = replay(s, payloads("opus"))
    common_checks(r, 16000)
    # Steady state (the last 1.5 s of the stream): at the target plus one frame.
    excess = np.array(r.delays[-TAIL - 75 : -TAIL]) - np.array(r.targets[-TAIL - 75 : -TAIL])
    assert np.median(excess) <= FRAME_MS + 2.0, s
    assert excess.max() <= 4 * FRAME_MS, s


def test_telephone_events_never_reach_the_decoder() -> None:
    leg = ac.InboundLeg()  # no payload type given: the leg must still tell DTMF from Opus
    pkts = [ac.build_rtp(111, k, k * 960, 7, p) for k, p in enumerate(payloads("opus")[:50])]
    for k, p in enumerate(pkts):
        if k % 10 == 3:
            ev = bytes([7, 0x80 if k == 43 else 0x0A, 0, 160])
            assert leg.insert(ac.build_rtp(101, 1000 + k, 4000, 7, ev), k * FRAME_MS) == "ignored"
        assert leg.insert(ac.build_rtp(13, 5000 + k, 0, 7, b"\x00\x01"), k * FRAME_MS) == "ignored"
        assert leg.insert(p, k * FRAME_MS) == "accepted"
        leg.pop(k * FRAME_MS)
    events = leg.dtmf_events()
    assert [e.digit for _, e in events] == ["7"] * 5 and events[-1][1].end
    assert leg.dtmf_events() == []
    s = leg.stats()
    assert s["decode_errors"] == 0 and s["dtmf_packets"] == 5 and s["unknown_payload_type"] == 50
    assert s["received"] == 50


def test_outbound_clear_fades() -> None:
    out = ac.OutboundLeg(codec="pcmu", input_rate=8000)
    pcm = voice(8000, 1.0)
    pkts = out.push(pcm[: 160 * 7 + 53])
    out.clear()
    pkts += out.push(pcm[4000:6000]) + out.flush()
    y = np.frombuffer(ac.ulaw_decode(b"".join(ac.parse_rtp(p).payload for p in pkts)), dtype="<i2")
    steps = np.abs(np.diff(y.astype(np.int32)))
    assert steps.max() <= 1.2 * np.abs(np.diff(pcm.astype(np.int32))).max() + 64


@pytest.mark.parametrize("frame_ms", [10, 40, 60])
def test_other_frame_sizes_hold_a_clean_stream(frame_ms: int) -> None:
    # A pop takes a whole frame, so the target never drops below one frame.
    leg = ac.InboundLeg(frame_ms=frame_ms)
    pkts = [ac.build_rtp(111, k, k * 960, 1, p) for k, p in enumerate(payloads("opus")[:250])]
    pos, kinds = 0, []
    for k in range(5000 // frame_ms):
        now = float(k * frame_ms)
        while pos < len(pkts) and pos * FRAME_MS + 3 <= now:
            leg.insert(pkts[pos], pos * FRAME_MS + 3)
            pos += 1
        pcm, kind = leg.pop(now)
        assert len(pcm) == 2 * leg.frame_samples
        kinds.append(kind)
    s = leg.stats()
    assert set(kinds) == {"buffering", "normal"} and s["lost"] == 0, s
    assert s["target_delay_ms"] == max(20.0, frame_ms)
    assert s["playout_delay_ms"] <= s["target_delay_ms"] + FRAME_MS
