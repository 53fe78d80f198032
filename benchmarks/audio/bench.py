"""`make bench-audio`: audio_core legs against the Python baselines, per 20 ms frame.

Prints one JSON object on stdout (progress on stderr). Medians over many frames; the libopus floor
is the mean cost per frame of a tight native loop (no Python per frame). Never run as a test.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import platform
import statistics
import struct
import sys
import time
from collections.abc import Callable
from typing import Any

import av
import numpy as np
import numpy.typing as npt
import soxr

import audio_core as ac
from benchmarks.audio import schedules

FRAMES = 500  # 10 s of 20 ms frames
PASSES = 3
COMPLEXITY = 5
BITRATE = 32000


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def speech_like(rate: int, seconds: float) -> npt.NDArray[np.int16]:
    t = np.arange(int(rate * seconds)) / rate
    env = 0.6 + 0.4 * np.sin(2 * np.pi * 3 * t)
    x = (
        np.sin(2 * np.pi * 180 * t) * 6000
        + np.sin(2 * np.pi * 360 * t) * 3000
        + np.sin(2 * np.pi * 900 * t) * 800
    )
    y: npt.NDArray[np.int16] = (x * env).astype(np.int16)
    return y


def per_frame_median_us(setup: Callable[[], Callable[[int], object]]) -> float:
    """Median wall time of one call of the per-frame step, over PASSES x FRAMES frames."""
    samples: list[int] = []
    for _ in range(PASSES):
        step = setup()
        for k in range(20):  # warm-up
            step(k)
        step = setup()
        for k in range(FRAMES):
            t0 = time.perf_counter_ns()
            step(k)
            samples.append(time.perf_counter_ns() - t0)
    return statistics.median(samples) / 1000.0


def mean_batch_us(run: Callable[[], object], frames: int) -> float:
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter_ns()
        run()
        best = min(best, (time.perf_counter_ns() - t0) / frames)
    return best / 1000.0


class CtypesOpus:
    """libopus through ctypes (the system libopus.so, as opuslib would use it)."""

    def __init__(self) -> None:
        name = ctypes.util.find_library("opus")
        if name is None:
            raise RuntimeError("libopus.so not found (Debian: apt-get install libopus0)")
        lib = ctypes.CDLL(name)
        lib.opus_decoder_create.restype = ctypes.c_void_p
        lib.opus_decoder_create.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.POINTER(ctypes.c_int)]
        lib.opus_decode.argtypes = [
            ctypes.c_void_p,
            ctypes.c_char_p,
            ctypes.c_int32,
            ctypes.c_void_p,
            ctypes.c_int,
            ctypes.c_int,
        ]
        lib.opus_encoder_create.restype = ctypes.c_void_p
        lib.opus_encoder_create.argtypes = [
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.POINTER(ctypes.c_int),
        ]
        lib.opus_encode.argtypes = [
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_int,
            ctypes.c_char_p,
            ctypes.c_int32,
        ]
        lib.opus_encoder_ctl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
        self.lib = lib

    def decoder(self, rate: int) -> Callable[[bytes], npt.NDArray[np.int16]]:
        err = ctypes.c_int()
        st = self.lib.opus_decoder_create(rate, 1, ctypes.byref(err))
        buf = np.zeros(rate * 120 // 1000, dtype=np.int16)
        ptr = buf.ctypes.data
        dec = self.lib.opus_decode

        def decode(pkt: bytes) -> npt.NDArray[np.int16]:
            n = dec(st, pkt, len(pkt), ptr, len(buf), 0)
            return buf[:n]

        return decode

    def encoder(self, rate: int) -> Callable[[npt.NDArray[np.int16]], bytes]:
        err = ctypes.c_int()
        st = self.lib.opus_encoder_create(rate, 1, 2048, ctypes.byref(err))
        self.lib.opus_encoder_ctl(st, 4002, BITRATE)
        self.lib.opus_encoder_ctl(st, 4010, COMPLEXITY)
        self.lib.opus_encoder_ctl(st, 4012, 1)
        self.lib.opus_encoder_ctl(st, 4014, 10)
        out = ctypes.create_string_buffer(4000)
        enc = self.lib.opus_encode

        def encode(pcm: npt.NDArray[np.int16]) -> bytes:
            n = enc(st, pcm.ctypes.data, len(pcm), out, 4000)
            return out.raw[:n]

        return encode


RTP_HDR = struct.Struct("!BBHII")


def python_rtp(pt: int, seq: int, ts: int, payload: bytes) -> bytes:
    return RTP_HDR.pack(0x80, pt, seq & 0xFFFF, ts & 0xFFFFFFFF, 0x1234) + payload


def main() -> None:
    log("preparing signals and packets")
    pcm48 = speech_like(48000, FRAMES / 50)
    pcm24 = speech_like(24000, FRAMES / 50)
    enc = ac.OpusEncoder(sample_rate=48000, bitrate=BITRATE, complexity=COMPLEXITY)
    payloads = [enc.encode(pcm48[k * 960 : (k + 1) * 960]) for k in range(FRAMES)]
    rtp = [ac.build_rtp(111, k, k * 960, 0x1234, p) for k, p in enumerate(payloads)]
    ulaw = ac.ulaw_encode(speech_like(8000, FRAMES / 50))
    rtp_pcmu = [ac.build_rtp(0, k, k * 160, 0x1234, ulaw[k * 160 : (k + 1) * 160]) for k in range(FRAMES)]
    frames24 = [pcm24[k * 480 : (k + 1) * 480].tobytes() for k in range(FRAMES)]
    copus = CtypesOpus()
    result: dict[str, Any] = {}

    # ---------------------------------------------------------------- inbound
    log("inbound: ours")

    def ours_inbound(decode_rate: int | None) -> Callable[[], Callable[[int], object]]:
        def setup() -> Callable[[int], object]:
            leg = ac.InboundLeg(
                codec="opus", output_rate=16000, decode_rate=decode_rate, initial_delay_ms=20.0
            )

            def step(k: int) -> object:
                k %= FRAMES
                leg.insert(rtp[k], k * 20.0)
                return leg.pop(k * 20.0)

            return step

        return setup

    in_ours = per_frame_median_us(ours_inbound(None))
    in_ours48 = per_frame_median_us(ours_inbound(48000))

    log("inbound: PyAV (aiortc path)")

    def pyav_setup() -> Callable[[int], object]:
        codec = av.CodecContext.create("libopus", "r")
        codec.sample_rate = 48000
        codec.layout = "mono"
        codec.format = "s16"
        res = av.AudioResampler(format="s16", layout="mono", rate=16000)

        def step(k: int) -> object:
            k %= FRAMES
            pkt = rtp[k]
            _, _, _seq, _ts, _ = RTP_HDR.unpack_from(pkt)
            out = []
            for frame in codec.decode(av.Packet(pkt[12:])):
                out += res.resample(frame)
            return out

        return step

    in_pyav = per_frame_median_us(pyav_setup)

    log("inbound: best Python composition (ctypes libopus + soxr + dict reorder buffer)")

    def pybest_in_setup() -> Callable[[int], object]:
        decode = copus.decoder(48000)
        rs = soxr.ResampleStream(48000, 16000, 1, dtype="int16", quality="HQ")
        buf: dict[int, bytes] = {}
        state = {"next": 0}

        def step(k: int) -> object:
            k %= FRAMES
            pkt = rtp[k]
            _, _, seq, _ts, _ = RTP_HDR.unpack_from(pkt)
            buf[seq] = pkt[12:]
            payload = buf.pop(state["next"], None)
            state["next"] = (state["next"] + 1) & 0xFFFF
            if payload is None:
                return None
            return rs.resample_chunk(decode(payload))

        return step

    in_pybest = per_frame_median_us(pybest_in_setup)

    log("inbound: best Python composition with soxr LQ (the quality matching our filter)")

    def pybest_lq_in_setup() -> Callable[[int], object]:
        # soxr "LQ" = SoX -l: 80 % bandwidth, ~100 dB rejection; ours: 80 % passband, >= 80 dB.
        decode = copus.decoder(48000)
        rs = soxr.ResampleStream(48000, 16000, 1, dtype="int16", quality="LQ")

        def step(k: int) -> object:
            return rs.resample_chunk(decode(rtp[k % FRAMES][12:]))

        return step

    in_pybest_lq = per_frame_median_us(pybest_lq_in_setup)

    log("inbound: libopus floor (native batch loop)")
    floor16 = ac.OpusDecoder(16000)
    in_floor = mean_batch_us(lambda: floor16.decode_many(payloads), FRAMES)
    floor48 = ac.OpusDecoder(48000)
    in_floor48 = mean_batch_us(lambda: floor48.decode_many(payloads), FRAMES)
    big48 = pcm48.astype("<f4").tobytes()
    rs_floor = ac.Resampler(48000, 16000)
    rs48_cost = mean_batch_us(lambda: rs_floor.process_float(big48), FRAMES)
    result["inbound_us_per_frame"] = {
        "ours": in_ours,
        "pyav": in_pyav,
        "python_best": in_pybest,
        "libopus_floor": in_floor,
        "ours_decode48k_plus_resampler": in_ours48,
        "libopus_floor_decode48k_plus_resample": in_floor48 + rs48_cost,
        "libopus_floor_decode48k": in_floor48,
        "python_best_soxr_lq": in_pybest_lq,
    }

    # ---------------------------------------------------------------- outbound
    log("outbound: ours")

    def ours_outbound(encode_rate: int | None) -> Callable[[], Callable[[int], object]]:
        def setup() -> Callable[[int], object]:
            leg = ac.OutboundLeg(
                input_rate=24000, encode_rate=encode_rate, bitrate=BITRATE, complexity=COMPLEXITY
            )
            return lambda k: leg.push(frames24[k % FRAMES])

        return setup

    out_ours = per_frame_median_us(ours_outbound(None))
    out_ours48 = per_frame_median_us(ours_outbound(48000))

    log("outbound: PyAV")

    def pyav_out_setup() -> Callable[[int], object]:
        codec = av.CodecContext.create("libopus", "w")
        codec.sample_rate = 48000
        codec.layout = "mono"
        codec.format = "s16"
        codec.bit_rate = BITRATE
        # Same settings as ours: VoIP mode, in-band FEC tuned for 10 % loss.
        codec.options = {
            "compression_level": str(COMPLEXITY),
            "application": "voip",
            "fec": "1",
            "packet_loss": "10",
        }
        res = av.AudioResampler(format="s16", layout="mono", rate=48000, frame_size=960)
        state = {"seq": 0}

        def step(k: int) -> object:
            arr = pcm24[(k % FRAMES) * 480 : (k % FRAMES + 1) * 480].reshape(1, -1)
            frame = av.AudioFrame.from_ndarray(arr, format="s16", layout="mono")
            frame.sample_rate = 24000
            out = []
            for f in res.resample(frame):
                for p in codec.encode(f):
                    out.append(python_rtp(111, state["seq"], state["seq"] * 960, bytes(p)))
                    state["seq"] += 1
            return out

        return step

    out_pyav = per_frame_median_us(pyav_out_setup)

    log("outbound: best Python composition (soxr + ctypes libopus + struct RTP)")

    def pybest_out_setup() -> Callable[[int], object]:
        encode = copus.encoder(48000)
        rs = soxr.ResampleStream(24000, 48000, 1, dtype="int16", quality="HQ")
        pending: list[npt.NDArray[np.int16]] = []
        state = {"seq": 0, "have": 0}

        def step(k: int) -> object:
            y = rs.resample_chunk(pcm24[(k % FRAMES) * 480 : (k % FRAMES + 1) * 480])
            pending.append(y)
            state["have"] += len(y)
            out = []
            if state["have"] >= 960:
                allpcm = np.concatenate(pending)
                while len(allpcm) >= 960:
                    pkt = encode(np.ascontiguousarray(allpcm[:960]))
                    out.append(python_rtp(111, state["seq"], state["seq"] * 960, pkt))
                    state["seq"] += 1
                    allpcm = allpcm[960:]
                pending.clear()
                pending.append(allpcm)
                state["have"] = len(allpcm)
            return out

        return step

    out_pybest = per_frame_median_us(pybest_out_setup)

    log("outbound: libopus floor")
    e24 = ac.OpusEncoder(sample_rate=24000, bitrate=BITRATE, complexity=COMPLEXITY)
    out_floor = mean_batch_us(lambda: e24.encode_many(pcm24, 480), FRAMES)
    e48 = ac.OpusEncoder(sample_rate=48000, bitrate=BITRATE, complexity=COMPLEXITY)
    out_floor48 = mean_batch_us(lambda: e48.encode_many(pcm48, 960), FRAMES)
    big24 = pcm24.astype("<f4").tobytes()
    rs_up = ac.Resampler(24000, 48000)
    rs24_cost = mean_batch_us(lambda: rs_up.process_float(big24), FRAMES)
    result["outbound_us_per_frame"] = {
        "ours": out_ours,
        "pyav": out_pyav,
        "python_best": out_pybest,
        "libopus_floor": out_floor,
        "ours_resample48k_plus_encode48k": out_ours48,
        "libopus_floor_resample48k_plus_encode48k": out_floor48 + rs24_cost,
    }

    # ---------------------------------------------------------------- G.711
    log("g711: ours vs numpy table + soxr")

    def ours_g711() -> Callable[[int], object]:
        leg = ac.InboundLeg(codec="pcmu", output_rate=16000, initial_delay_ms=20.0)

        def step(k: int) -> object:
            k %= FRAMES
            leg.insert(rtp_pcmu[k], k * 20.0)
            return leg.pop(k * 20.0)

        return step

    table = ac.pcm16_array(ac.ulaw_decode(bytes(range(256))))

    def numpy_g711() -> Callable[[int], object]:
        rs = soxr.ResampleStream(8000, 16000, 1, dtype="int16", quality="HQ")

        def step(k: int) -> object:
            pkt = rtp_pcmu[k % FRAMES]
            codes = np.frombuffer(pkt, dtype=np.uint8, offset=12)
            return rs.resample_chunk(table[codes])

        return step

    result["g711_us_per_frame"] = {
        "ours": per_frame_median_us(ours_g711),
        "python_best": per_frame_median_us(numpy_g711),
    }

    # ---------------------------------------------------------------- resampler delay
    log("resampler delay")

    def soxr_held_back_ms(a: int, b: int, quality: str = "HQ") -> float:
        rs = soxr.ResampleStream(a, b, 1, dtype="int16", quality=quality)
        chunk = np.zeros(a // 50, dtype=np.int16)
        produced = 0
        held = []
        for k in range(1, 51):
            produced += len(rs.resample_chunk(chunk))
            held.append(k * (b // 50) - produced)
        return 1000.0 * statistics.median(held) / b

    def ours_held_back_ms(a: int, b: int) -> float:
        rs = ac.Resampler(a, b)
        chunk = np.zeros(a // 50, dtype=np.int16).tobytes()
        produced = 0
        held = []
        for k in range(1, 51):
            produced += len(rs.process(chunk)) // 2
            held.append(k * (b // 50) - produced)
        return 1000.0 * statistics.median(held) / b

    result["resampler_delay_ms"] = {
        "ours": ac.Resampler(48000, 16000).delay_ms,
        "soxr_hq": soxr_held_back_ms(48000, 16000),
        "soxr_lq": soxr_held_back_ms(48000, 16000, "LQ"),
        "ours_held_back_48k_16k": ours_held_back_ms(48000, 16000),
        "ours_16k_48k": ac.Resampler(16000, 48000).delay_ms,
        "soxr_hq_16k_48k": soxr_held_back_ms(16000, 48000),
        "ours_8k_16k": ac.Resampler(8000, 16000).delay_ms,
        "soxr_hq_8k_16k": soxr_held_back_ms(8000, 16000),
        "ours_24k_48k": ac.Resampler(24000, 48000).delay_ms,
        "soxr_hq_24k_48k": soxr_held_back_ms(24000, 48000),
    }

    # ---------------------------------------------------------------- latency under schedules
    log("inbound leg latency and splices over the fixed-seed schedule corpus")
    result.update(leg_quality())

    # ---------------------------------------------------------------- derived
    frame_us = 20_000.0
    result["legs_per_core"] = {
        "receive_only": frame_us / in_ours,
        "full_duplex": frame_us / (in_ours + out_ours),
    }
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    result["machine"] = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "libopus": ac.libopus_version(),
        "pyav": av.__version__,
        "soxr": soxr.__version__,
        "frames": FRAMES * PASSES,
    }
    ratios = {
        "inbound_vs_floor": in_ours / in_floor,
        "outbound_vs_floor": out_ours / out_floor,
        "inbound_pyav_over_ours": in_pyav / in_ours,
        "outbound_pyav_over_ours": out_pyav / out_ours,
        "inbound_python_best_over_ours": in_pybest / in_ours,
        "outbound_python_best_over_ours": out_pybest / out_ours,
        # Like for like: the same work on both sides. Direct 16 kHz decode vs libopus decoding at
        # 16 kHz; our 48 kHz path (decode at 48 kHz + our resampler) vs the 48 kHz floor plus the
        # resampler's own cost, vs PyAV (48 kHz decode + swresample) and vs ctypes libopus at
        # 48 kHz + python-soxr at LQ (the quality matching our filter) or HQ (stricter than ours).
        "inbound_48k_path_vs_floor": in_ours48 / (in_floor48 + rs48_cost),
        "inbound_pyav_over_ours_48k_path": in_pyav / in_ours48,
        "inbound_python_best_lq_over_ours_48k_path": in_pybest_lq / in_ours48,
        "inbound_python_best_hq_over_ours_48k_path": in_pybest / in_ours48,
        "outbound_48k_path_vs_floor": out_ours48 / (out_floor48 + rs24_cost),
        "outbound_pyav_over_ours_48k_path": out_pyav / out_ours48,
        "outbound_python_best_hq_over_ours_48k_path": out_pybest / out_ours48,
    }
    result["ratios"] = ratios
    print(json.dumps(result, indent=2))


def xcorr_latency(s: schedules.Schedule, payloads: list[bytes]) -> float:
    """Median latency of what the leg plays, found by locating its output in the source signal."""
    r = schedules.replay(s, payloads)
    src = schedules.voice(16000, s.seconds + 1.0).astype(np.float64)
    y = r.pcm.astype(np.float64)
    win, fs = 8000, r.frame_samples
    lats = []
    for k in range(150, len(r.kinds) - 40, 25):
        seg = y[k * fs : k * fs + win]
        lo = max(0, k * fs - 16000)
        ref = src[lo : k * fs + win + 100]
        n = len(ref) + win
        corr = np.fft.irfft(np.fft.rfft(ref, n) * np.conj(np.fft.rfft(seg, n)), n)[: len(ref) - win]
        energy = np.sqrt(np.convolve(ref**2, np.ones(win), "valid")[: len(corr)]) + 1e-9
        m = lo + int(np.argmax(corr / energy))
        media_ms = m / 16.0
        lats.append(k * schedules.FRAME_MS - (media_ms / (1.0 + s.drift) + 5.0))
    return float(np.median(lats))


def leg_quality() -> dict[str, Any]:
    """Latency and splice smoothness of the inbound leg over ``benchmarks/audio/corpus.json``."""
    corpus = {s.name: s for s in schedules.load_corpus()}
    opus = schedules.encode("opus", 25.0)
    pcmu = schedules.encode("pcmu", 25.0)
    tail = 21  # pops after each stream ended
    paths = {"16k_direct": (None, 16000), "48k_decode_16k": (48000, 16000), "48k_out": (None, 48000)}
    refs = {rate: schedules.p99_step(schedules.voice(rate, 4.0)) for rate in (16000, 48000)}
    steady: dict[tuple[str, str], list[float]] = {}
    worst_ratio = {name: 0.0 for name in paths} | {"pcmu_16k": 0.0}
    spike: dict[str, float] = {}
    spike_lost: dict[str, int] = {}
    for name, s in corpus.items():
        for path, (dec, out) in paths.items():
            r = schedules.replay(s, opus, output_rate=out, decode_rate=dec)
            steady[(name, path)] = r.delays[100:-tail]
            ratio = float(r.boundary_steps(skip_end=tail).max()) / refs[out]
            worst_ratio[path] = max(worst_ratio[path], ratio)
            if s.spike_at_ms is not None:
                spike[f"{name}/{path}"] = schedules.spike_recovery_s(r, s)
                spike_lost[f"{name}/{path}"] = int(r.stats["lost"])
        r = schedules.replay(s, pcmu, codec="pcmu")
        pcmu_ratio = float(r.boundary_steps(skip_end=tail).max()) / refs[16000]
        worst_ratio["pcmu_16k"] = max(worst_ratio["pcmu_16k"], pcmu_ratio)
    drift = [d for (name, _), ds in steady.items() if name.startswith("drift") for d in ds]
    # What time-scaling costs when it works: whole replays (Python driving included), per pop.
    cost = {}
    for name in ("clean", "jitter40", "drift_fast_1"):
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter_ns()
            r = schedules.replay(corpus[name], opus)
            best = min(best, (time.perf_counter_ns() - t0) / len(r.kinds) / 1000.0)
        cost[name] = best
    return {
        "leg_latency_ms": {
            "clean_p50": statistics.median(steady[("clean", "16k_direct")]),
            "jitter40_p50": statistics.median(steady[("jitter40", "16k_direct")]),
            "spike_recovery_s": spike["spike300/16k_direct"],
            "drift_max": max(drift),
            "target": 20.0,
            "clean_p50_48k_path": statistics.median(steady[("clean", "48k_decode_16k")]),
            "spike_recovery_s_worst": max(spike.values()),
            # Packets held by a spike arrive after their time was concealed: dropped, not played
            # late, which is why the delay does not balloon.
            "spike300_lost_packets": spike_lost["spike300/16k_direct"],
            "measured_as": "playout delay of the audio at each pop relative to the fastest recent packet",
            # Ground truth for the same quantity: where the played audio sits in the source
            # signal (cross-correlation), minus the earliest arrival; includes Opus' own codec
            # delay (6.5 ms), which the leg's figure does not.
            "clean_p50_xcorr": xcorr_latency(corpus["clean"], opus),
            "jitter40_p50_xcorr": xcorr_latency(corpus["jitter40"], opus),
        },
        "leg_replay_us_per_frame": cost,
        "max_boundary_step_ratio": max(worst_ratio.values()),
        "boundary_step_ratio_by_path": worst_ratio,
        "schedules": sorted(corpus),
    }


if __name__ == "__main__":
    main()
