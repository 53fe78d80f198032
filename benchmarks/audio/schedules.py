"""Network schedules for the inbound leg: which packet arrives when, with which RTP header.

A schedule is generated from a seed and a few knobs (jitter, loss bursts, a delay spike, reordering,
duplication, sender clock drift, timestamp jumps with or without the marker bit, an SSRC change, a
DTX pause, sequence/timestamp wrap, late packets). ``corpus.json`` next to this file pins the
fixed-seed set that `make bench-audio` and the tests replay. ``replay`` drives an ``InboundLeg``
frame by frame (one pop per 20 ms of receiver time) and returns what it played and reported.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

import audio_core as ac

FRAME_MS = 20.0
CORPUS = Path(__file__).with_name("corpus.json")


def voice(rate: int, seconds: float) -> npt.NDArray[np.int16]:
    """Voiced, speech-like signal: gliding pitch, harmonics, a syllable envelope with pauses."""
    n = int(rate * seconds)
    t = np.arange(n) / rate
    f0 = 150.0 + 40.0 * np.sin(t * 1.3)
    ph = np.cumsum(2 * np.pi * f0 / rate)
    env = np.maximum(0.55 + 0.45 * np.sin(2 * np.pi * 2.5 * t), 0.0)
    x = np.sin(ph) * 5000 + np.sin(2 * ph) * 2500 + np.sin(3 * ph) * 1200 + np.sin(7 * ph) * 300
    y: npt.NDArray[np.int16] = (x * env).astype(np.int16)
    return y


def p99_step(x: npt.NDArray[np.int16]) -> float:
    """The signal's own 99th-percentile sample-to-sample step."""
    return float(np.percentile(np.abs(np.diff(x.astype(np.int32))), 99))


@dataclass(frozen=True)
class Schedule:
    name: str
    seed: int
    seconds: float = 10.0
    jitter_ms: float = 0.0
    loss: float = 0.0
    burst: int = 1
    spike_at_ms: float | None = None
    spike_ms: float = 0.0
    reorder: float = 0.0
    dup: float = 0.0
    drift: float = 0.0
    ts_jump: tuple[float, int, bool] | None = None  # (at ms, jump ms, marker)
    ssrc_change_ms: float | None = None
    dtx: tuple[float, float] | None = None  # sender pause (from ms, to ms)
    start_seq: int = 0
    start_ts: int = 0
    late_every: int = 0
    late_ms: float = 0.0


@dataclass
class Replay:
    delays: list[float] = field(default_factory=list)
    targets: list[float] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)
    pcm: npt.NDArray[np.int16] = field(default_factory=lambda: np.zeros(0, dtype=np.int16))
    stats: dict[str, float] = field(default_factory=dict)
    frame_samples: int = 0
    pops_per_frame_ok: bool = True
    stats_add_up: bool = True

    def boundary_steps(self, skip_end: int = 0) -> npt.NDArray[np.int32]:
        """Steps across frame boundaries once playout has started."""
        start = next((i for i, k in enumerate(self.kinds) if k != "buffering"), len(self.kinds)) + 2
        end = len(self.kinds) - skip_end
        idx = np.arange(start, end) * self.frame_samples
        y = self.pcm.astype(np.int32)
        steps: npt.NDArray[np.int32] = np.abs(y[idx] - y[idx - 1])
        return steps


def load_corpus() -> list[Schedule]:
    out = []
    for d in json.loads(CORPUS.read_text()):
        for k in ("ts_jump", "dtx"):
            if d.get(k) is not None:
                d[k] = tuple(d[k])
        out.append(Schedule(**d))
    return out


def dump_corpus(schedules: list[Schedule]) -> str:
    return json.dumps([asdict(s) for s in schedules], indent=1)


def arrivals(s: Schedule, payloads: list[bytes], pt: int, clock: int) -> list[tuple[float, bytes]]:
    """(arrival ms, RTP datagram) in arrival order."""
    rng = random.Random(s.seed)
    n = int(s.seconds * 1000 / FRAME_MS)
    step = clock // 50
    seq, ts, ssrc, marker = s.start_seq, s.start_ts, 0x12345678, True
    lose_left = 0
    out: list[tuple[float, bytes]] = []
    for i in range(n):
        t_send = i * FRAME_MS / (1.0 + s.drift)
        if s.ts_jump is not None and abs(t_send - s.ts_jump[0]) < FRAME_MS / 2:
            ts = (ts + s.ts_jump[1] * clock // 1000) % 2**32
            marker = s.ts_jump[2]
        if s.ssrc_change_ms is not None and abs(t_send - s.ssrc_change_ms) < FRAME_MS / 2:
            ssrc, seq, ts, marker = 0x0BADCAFE, (seq + 20000) % 65536, (ts + 2**30) % 2**32, True
        if s.dtx is not None and s.dtx[0] <= t_send < s.dtx[1]:
            ts = (ts + step) % 2**32  # paused: timestamps run on, sequence numbers do not
            marker = True
            continue
        pkt = ac.build_rtp(pt, seq, ts, ssrc, payloads[i % len(payloads)], marker=marker)
        seq, ts, marker = (seq + 1) % 65536, (ts + step) % 2**32, False
        if lose_left:
            lose_left -= 1
            continue
        if rng.random() < s.loss:
            lose_left = s.burst - 1
            continue
        arrival = t_send + 5.0 + rng.random() * s.jitter_ms
        if s.spike_at_ms is not None and s.spike_at_ms <= t_send < s.spike_at_ms + s.spike_ms:
            # Held by the network and released together at the end of the spike.
            arrival = max(arrival, s.spike_at_ms + s.spike_ms + 5.0)
        if rng.random() < s.reorder:
            arrival += FRAME_MS * 1.5
        if s.late_every and i % s.late_every == s.late_every // 2:
            arrival += s.late_ms
        out.append((arrival, pkt))
        if rng.random() < s.dup:
            out.append((arrival + rng.random() * 60.0, pkt))
    out.sort(key=lambda e: e[0])
    return out


def encode(codec: str, seconds: float) -> list[bytes]:
    """Payloads of the voice signal, 20 ms each."""
    rate = 48000 if codec == "opus" else 8000
    leg = ac.OutboundLeg(codec=codec, input_rate=rate)
    pcm = voice(rate, seconds)
    pkts: list[bytes] = []
    for k in range(0, len(pcm), rate // 50):
        pkts += leg.push(pcm[k : k + rate // 50])
    return [ac.parse_rtp(p).payload for p in pkts]


def replay(
    s: Schedule,
    payloads: list[bytes],
    codec: str = "opus",
    output_rate: int = 16000,
    decode_rate: int | None = None,
) -> Replay:
    clock = 48000 if codec == "opus" else 8000
    pt = {"opus": 111, "pcmu": 0, "pcma": 8}[codec]
    events = arrivals(s, payloads, pt, clock)
    leg = ac.InboundLeg(codec=codec, output_rate=output_rate, decode_rate=decode_rate)
    r = Replay(frame_samples=leg.frame_samples)
    frames: list[bytes] = []
    pos = 0
    for k in range(int(s.seconds * 1000 / FRAME_MS) + 20):
        now = k * FRAME_MS
        while pos < len(events) and events[pos][0] <= now:
            leg.insert(events[pos][1], events[pos][0])
            pos += 1
        pcm, kind = leg.pop(now)
        r.pops_per_frame_ok &= len(pcm) == 2 * leg.frame_samples
        frames.append(pcm)
        r.kinds.append(kind)
        st = leg.stats()
        r.delays.append(st["playout_delay_ms"])
        r.targets.append(st["target_delay_ms"])
        r.stats_add_up &= st["lost"] == st["concealed"] + st["fec_recovered"]
    r.pcm = np.frombuffer(b"".join(frames), dtype="<i2").astype(np.int16)
    r.stats = leg.stats()
    return r


def spike_recovery_s(r: Replay, s: Schedule) -> float:
    """Seconds from the end of the spike until the delay is back within one frame of where it was
    before, and stays there for a second."""
    assert s.spike_at_ms is not None
    k0 = int(s.spike_at_ms / FRAME_MS)
    before = float(np.median(r.delays[k0 - 60 : k0 - 5]))
    end = int((s.spike_at_ms + s.spike_ms) / FRAME_MS)
    hold = int(1000 / FRAME_MS)
    for k in range(end, len(r.delays) - hold):
        if all(d <= before + FRAME_MS for d in r.delays[k : k + hold]):
            return (k - end) * FRAME_MS / 1000.0
    return float("inf")
