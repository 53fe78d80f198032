//! Low-delay streaming polyphase resampler (Kaiser-windowed sinc).
//!
//! Design, per rate pair: passband edge `fp = 0.8 x min(fs_in, fs_out)/2`; stopband edge at the lower
//! Nyquist frequency, moved up only as far as needed to keep the group delay under ~2.7 ms (this
//! matters for 8 kHz, whose 800 Hz transition band would otherwise need a 3.4 ms filter). Kaiser
//! window for 88 dB, so passband ripple is ~0.0007 dB and stopband attenuation >= 80 dB with margin.
//!
//! Streaming: output sample `j` estimates the input at time `j*step - D` with `D = K/2` input samples
//! (the filter's half length, reported by [`Resampler::delay_seconds`]); it is emitted as soon as
//! input sample `floor(j*step)` has arrived, so each input chunk yields its share of output with no
//! held-back bursts. Every output is computed from the same samples in the same order whatever the
//! chunking, so results are bit-identical for any split of the input. The position is kept as an
//! exact fraction; the ratio can be nudged at run time (clock-drift correction) and coefficients for
//! in-between phases are interpolated linearly from a finely sampled table.

use crate::error::{invalid, Result};

/// Rates the resampler accepts.
/// (22050 Hz is espeak-ng's native rate, the offline TTS engine's.)
pub const RATES: [u32; 8] = [8000, 12000, 16000, 22050, 24000, 32000, 44100, 48000];

const ATTEN_DB: f64 = 88.0;
const MAX_DELAY_S: f64 = 0.0027;
const Q: u64 = 1 << 20;
const MIN_TABLE_PHASES: u64 = 256;

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

fn bessel_i0(x: f64) -> f64 {
    let mut sum = 1.0;
    let mut term = 1.0;
    let y = x * x / 4.0;
    for k in 1..200 {
        term *= y / (k as f64 * k as f64);
        sum += term;
        if term < sum * 1e-17 {
            break;
        }
    }
    sum
}

/// Filter parameters for a rate pair (all frequencies in Hz).
#[derive(Debug, Clone, Copy)]
pub struct FilterSpec {
    /// Passband edge.
    pub passband_hz: f64,
    /// Stopband edge.
    pub stopband_hz: f64,
    /// Taps (in input samples) of the prototype filter.
    pub taps: usize,
}

/// Filter design used for `in_rate -> out_rate`.
pub fn filter_spec(in_rate: u32, out_rate: u32) -> FilterSpec {
    let nyq = in_rate.min(out_rate) as f64 / 2.0;
    let fp = 0.8 * nyq;
    // Kaiser: N ~= (A - 7.95) / (2.285 * 2pi * df/fs_in); delay = N/2 / fs_in  =>  df >= ...
    let kaiser = (ATTEN_DB - 7.95) / (2.285 * 2.0 * std::f64::consts::PI);
    let min_df = kaiser / (2.0 * MAX_DELAY_S);
    let fs = nyq.max(fp + min_df);
    let n = kaiser / ((fs - fp) / in_rate as f64);
    let mut taps = n.ceil() as usize + 1;
    taps += taps % 2;
    FilterSpec { passband_hz: fp, stopband_hz: fs, taps }
}

/// A stateful streaming resampler for mono `f32` (any scale; PCM16 helpers provided).
pub struct Resampler {
    in_rate: u32,
    out_rate: u32,
    spec: FilterSpec,
    /// real taps (even)
    k: usize,
    /// padded row length (multiple of 8), padding sits at the old end of the window
    kp: usize,
    /// table oversampling: `l * r` phases, rows `0..=l*r`
    r: u64,
    table: Vec<f32>,
    l: u64,
    m: u64,
    den: u64,
    step: u64,
    base_step: u64,
    /// history + pending input; `buf[n]` is the sample at window position n
    buf: Vec<f32>,
    /// integer part of the next output position (index into buf)
    pos: usize,
    /// fractional part, in 1/den
    frac: u64,
    total_in: u64,
    total_out: u64,
    adjusted: bool,
}

impl Resampler {
    /// Create a resampler from `in_rate` to `out_rate` (each one of [`RATES`]).
    pub fn new(in_rate: u32, out_rate: u32) -> Result<Self> {
        if !RATES.contains(&in_rate) || !RATES.contains(&out_rate) {
            return invalid(format!(
                "unsupported resampling {in_rate} -> {out_rate} Hz (rates: 8000, 12000, 16000, 22050, 24000, 32000, 44100, 48000)"
            ));
        }
        let g = gcd(in_rate as u64, out_rate as u64);
        let l = out_rate as u64 / g;
        let m = in_rate as u64 / g;
        let spec = filter_spec(in_rate, out_rate);
        let k = spec.taps;
        let kp = k.div_ceil(8) * 8;
        let mut r = 1u64;
        while l * r < MIN_TABLE_PHASES {
            r *= 2;
        }
        let t_phases = l * r;
        let fc = (spec.passband_hz + spec.stopband_hz) / 2.0 / in_rate as f64; // cycles / input sample
        let beta = 0.1102 * (ATTEN_DB - 8.7);
        let i0b = bessel_i0(beta);
        let half = k as f64 / 2.0;
        let h = |t: f64| -> f64 {
            if t.abs() >= half {
                return 0.0;
            }
            let x = 2.0 * fc * t;
            let sinc = if x.abs() < 1e-12 { 1.0 } else { (std::f64::consts::PI * x).sin() / (std::f64::consts::PI * x) };
            let w = bessel_i0(beta * (1.0 - (t / half).powi(2)).max(0.0).sqrt()) / i0b;
            2.0 * fc * sinc * w
        };
        let rows = (t_phases + 1) as usize;
        let mut table = vec![0f32; rows * kp];
        let mut row = vec![0f64; kp];
        for p in 0..rows {
            let phi = p as f64 / t_phases as f64;
            // coefficient i <-> input index n + K/2 - Kp + 1 + i, t = x - index
            for (i, c) in row.iter_mut().enumerate() {
                let t = phi + (kp as f64 - half - 1.0) - i as f64;
                *c = h(t);
            }
            let sum: f64 = row.iter().sum();
            for (dst, c) in table[p * kp..(p + 1) * kp].iter_mut().zip(&row) {
                *dst = (c / sum) as f32;
            }
        }
        let den = l * Q;
        let step = m * Q;
        let mut rs = Resampler {
            in_rate,
            out_rate,
            spec,
            k,
            kp,
            r,
            table,
            l,
            m,
            den,
            step,
            base_step: step,
            buf: Vec::with_capacity(kp + 48000),
            pos: 0,
            frac: 0,
            total_in: 0,
            total_out: 0,
            adjusted: false,
        };
        rs.reset();
        Ok(rs)
    }

    /// Forget all state (history, position, ratio adjustment stays).
    pub fn reset(&mut self) {
        self.buf.clear();
        // K-1 zeros of history, padded with Kp-K more so the padded window start is in range.
        self.buf.resize(self.kp - 1, 0.0);
        self.pos = self.kp - self.k / 2 - 1;
        self.frac = 0;
        self.total_in = 0;
        self.total_out = 0;
    }

    /// Input rate.
    pub fn in_rate(&self) -> u32 {
        self.in_rate
    }

    /// Output rate.
    pub fn out_rate(&self) -> u32 {
        self.out_rate
    }

    /// The filter design in use.
    pub fn spec(&self) -> FilterSpec {
        self.spec
    }

    /// Constant algorithmic delay in seconds (K/2 input samples).
    pub fn delay_seconds(&self) -> f64 {
        (self.k / 2) as f64 / self.in_rate as f64
    }

    /// Constant delay expressed in output samples (may be fractional).
    pub fn delay_output_samples(&self) -> f64 {
        self.delay_seconds() * self.out_rate as f64
    }

    /// Nudge the conversion ratio for clock-drift correction: `factor` > 1 produces more output
    /// samples per input sample (output clock faster). Allowed range 0.95..=1.05. Takes effect at
    /// the next output sample without discontinuity.
    pub fn set_ratio_adjust(&mut self, factor: f64) -> Result<()> {
        if !(0.95..=1.05).contains(&factor) || !factor.is_finite() {
            return invalid(format!("ratio adjustment {factor} outside 0.95..=1.05"));
        }
        self.step = ((self.base_step as f64) / factor).round().max(1.0) as u64;
        self.adjusted = self.step != self.base_step;
        Ok(())
    }

    /// Upper bound of output samples produced for `n` more input samples.
    pub fn max_output_for(&self, n: usize) -> usize {
        ((n as u128 * self.den as u128) / self.step as u128) as usize + 2
    }

    #[inline]
    fn dot(a: &[f32], b: &[f32]) -> f32 {
        let mut acc = [0f32; 8];
        for (x, y) in a.chunks_exact(8).zip(b.chunks_exact(8)) {
            for j in 0..8 {
                acc[j] += x[j] * y[j];
            }
        }
        (acc[0] + acc[4]) + (acc[1] + acc[5]) + ((acc[2] + acc[6]) + (acc[3] + acc[7]))
    }

    fn run(&mut self, mut emit: impl FnMut(f32), limit: Option<u64>) {
        let half = self.k / 2;
        let kp = self.kp;
        while self.pos + half < self.buf.len() {
            if let Some(lim) = limit {
                if self.total_out >= lim {
                    break;
                }
            }
            let start = self.pos + half + 1 - kp;
            let win = &self.buf[start..start + kp];
            // table position = frac * T / den = frac * r / Q
            let tp = self.frac * self.r;
            let p = (tp / Q) as usize;
            let rem = tp % Q;
            let row = &self.table[p * kp..(p + 1) * kp];
            let mut y = Self::dot(row, win);
            if rem != 0 {
                let w = rem as f32 / Q as f32;
                let row2 = &self.table[(p + 1) * kp..(p + 2) * kp];
                let y2 = Self::dot(row2, win);
                y += (y2 - y) * w;
            }
            emit(y);
            self.total_out += 1;
            self.frac += self.step;
            self.pos += (self.frac / self.den) as usize;
            self.frac %= self.den;
        }
        // Drop what no future window needs.
        let keep_from = (self.pos + half + 1).saturating_sub(kp);
        if keep_from > 0 {
            self.buf.drain(..keep_from);
            self.pos -= keep_from;
        }
    }

    /// Feed `input`, appending every output sample now available to `out`.
    pub fn process_f32(&mut self, input: &[f32], out: &mut Vec<f32>) {
        self.total_in += input.len() as u64;
        self.buf.extend_from_slice(input);
        self.run(|y| out.push(y), None);
    }

    /// PCM16 in, PCM16 out (rounded, saturated).
    pub fn process_i16(&mut self, input: &[i16], out: &mut Vec<i16>) {
        self.total_in += input.len() as u64;
        self.buf.extend(input.iter().map(|&s| s as f32));
        self.run(|y| out.push(to_i16(y)), None);
    }

    /// PCM16 little-endian bytes in (length must be even), PCM16 out.
    pub fn process_le_bytes(&mut self, input: &[u8], out: &mut Vec<i16>) -> Result<()> {
        if input.len() % 2 != 0 {
            return invalid(format!("PCM16 buffer has odd length {}", input.len()));
        }
        self.total_in += (input.len() / 2) as u64;
        self.buf.extend(input.chunks_exact(2).map(|c| i16::from_le_bytes([c[0], c[1]]) as f32));
        self.run(|y| out.push(to_i16(y)), None);
        Ok(())
    }

    /// Output samples a flush completes to: every input sample is represented, i.e. the stream
    /// covers input time up to `total_in` although each output lags the input by `K/2` samples.
    fn flush_target(&self) -> u64 {
        if self.total_in == 0 {
            return 0;
        }
        ((self.total_in + (self.k / 2) as u64) * self.l).div_ceil(self.m)
    }

    fn flush_inner(&mut self, mut emit: impl FnMut(f32)) {
        let expected = if self.adjusted { None } else { Some(self.flush_target()) };
        if self.total_in > 0 {
            // Zeros to push the last K/2 input samples (the delayed tail) through the filter.
            let zeros = self.k + 1;
            self.buf.extend(std::iter::repeat_n(0.0, zeros));
            self.run(&mut emit, expected);
        }
        self.reset();
    }

    /// End of stream: emit the delayed tail and reset. The output then covers the whole input:
    /// its length is `ceil((input length + delay) x ratio)`, the leading `delay` being the filter's
    /// constant latency (see [`Resampler::delay_seconds`]).
    pub fn flush_f32(&mut self, out: &mut Vec<f32>) {
        self.flush_inner(|y| out.push(y));
    }

    /// End of stream for PCM16.
    pub fn flush_i16(&mut self, out: &mut Vec<i16>) {
        self.flush_inner(|y| out.push(to_i16(y)));
    }
}

/// Round and saturate to i16.
#[inline]
pub fn to_i16(y: f32) -> i16 {
    y.round().clamp(-32768.0, 32767.0) as i16
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::f64::consts::PI;

    const PAIRS: [(u32, u32); 12] = [
        (8000, 16000),
        (16000, 8000),
        (8000, 24000),
        (24000, 8000),
        (8000, 48000),
        (48000, 8000),
        (16000, 24000),
        (24000, 16000),
        (16000, 48000),
        (48000, 16000),
        (24000, 48000),
        (48000, 24000),
    ];

    fn run_all(rs: &mut Resampler, x: &[f32]) -> Vec<f32> {
        let mut out = Vec::new();
        rs.process_f32(x, &mut out);
        rs.flush_f32(&mut out);
        out
    }

    /// Least-squares amplitude of a known-frequency tone in `y` (skipping edges) and the RMS of
    /// what is left after removing it.
    fn fit(y: &[f32], f: f64, rate: u32, skip: usize) -> (f64, f64) {
        let seg = &y[skip..y.len() - skip];
        let (mut ss, mut sc, mut s2, mut c2, mut sc_) = (0.0, 0.0, 0.0, 0.0, 0.0);
        for (i, &v) in seg.iter().enumerate() {
            let w = 2.0 * PI * f * (i + skip) as f64 / rate as f64;
            let (s, c) = w.sin_cos();
            ss += v as f64 * s;
            sc += v as f64 * c;
            s2 += s * s;
            c2 += c * c;
            sc_ += s * c;
        }
        let det = s2 * c2 - sc_ * sc_;
        let a = (ss * c2 - sc * sc_) / det;
        let b = (sc * s2 - ss * sc_) / det;
        let mut res = 0.0;
        for (i, &v) in seg.iter().enumerate() {
            let w = 2.0 * PI * f * (i + skip) as f64 / rate as f64;
            let e = v as f64 - (a * w.sin() + b * w.cos());
            res += e * e;
        }
        ((a * a + b * b).sqrt(), (res / seg.len() as f64).sqrt())
    }

    fn tone(f: f64, rate: u32, n: usize) -> Vec<f32> {
        (0..n).map(|i| (2.0 * PI * f * i as f64 / rate as f64).sin() as f32).collect()
    }

    #[test]
    fn espeak_rate_converts_with_the_same_quality() {
        // 22050 Hz (the offline TTS engine) -> the platform's 24 kHz and the pipeline's 16 kHz.
        for (a, b) in [(22050u32, 24000u32), (22050, 16000)] {
            let rs = Resampler::new(a, b).unwrap();
            assert!(rs.delay_seconds() <= 0.003, "{a}->{b}: {} s", rs.delay_seconds());
            for f in [300.0, 1000.0, 3000.0, 0.75 * a.min(b) as f64 / 2.0] {
                let mut rs = Resampler::new(a, b).unwrap();
                let y = run_all(&mut rs, &tone(f, a, a as usize / 2));
                let skip = 2 * rs.k * b as usize / a as usize + 64;
                let (amp, res) = fit(&y, f, b, skip);
                assert!((20.0 * amp.log10()).abs() < 0.05, "{a}->{b} {f} Hz: gain {amp}");
                assert!(20.0 * (res * 2f64.sqrt()).log10() < -80.0, "{a}->{b} {f} Hz: residual {res}");
            }
        }
    }

    #[test]
    fn delay_is_at_most_3ms_for_every_pair() {
        for &(a, b) in &PAIRS {
            let rs = Resampler::new(a, b).unwrap();
            assert!(rs.delay_seconds() <= 0.003, "{a}->{b}: {} s", rs.delay_seconds());
        }
    }

    #[test]
    fn passband_ripple_below_0_1_db_and_images_below_80_db() {
        for &(a, b) in &PAIRS {
            let spec = filter_spec(a, b);
            let n = a as usize / 2; // 0.5 s
            for frac in [0.02, 0.1, 0.25, 0.4, 0.55, 0.7, 0.8] {
                let f = frac * a.min(b) as f64 / 2.0;
                if f > spec.passband_hz + 1e-6 {
                    continue;
                }
                let mut rs = Resampler::new(a, b).unwrap();
                let y = run_all(&mut rs, &tone(f, a, n));
                let skip = 2 * rs.k * b as usize / a as usize + 64;
                let (amp, res) = fit(&y, f, b, skip);
                let gain_db = 20.0 * amp.log10();
                assert!(gain_db.abs() < 0.05, "{a}->{b} {f} Hz: gain {gain_db} dB");
                // Everything that is not the tone (images, aliases, rounding) is >= 80 dB down.
                let res_db = 20.0 * (res * 2f64.sqrt()).log10();
                assert!(res_db < -80.0, "{a}->{b} {f} Hz: residual {res_db} dB");
            }
        }
    }

    #[test]
    fn stopband_tones_attenuated_80_db_when_downsampling() {
        for &(a, b) in PAIRS.iter().filter(|(a, b)| a > b) {
            let spec = filter_spec(a, b);
            let n = a as usize / 2;
            let mut f = spec.stopband_hz;
            while f < a as f64 / 2.0 {
                let mut rs = Resampler::new(a, b).unwrap();
                let y = run_all(&mut rs, &tone(f, a, n));
                let skip = 2 * rs.k * b as usize / a as usize + 64;
                let seg = &y[skip..y.len() - skip];
                let rms = (seg.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / seg.len() as f64).sqrt();
                let db = 20.0 * (rms * 2f64.sqrt()).log10();
                assert!(db < -80.0, "{a}->{b} tone {f} Hz leaks at {db} dB");
                f += (a as f64 / 2.0 - spec.stopband_hz) / 7.0 + 1.0;
            }
        }
    }

    #[test]
    fn sweep_through_passband_matches_ideal_delayed_chirp() {
        for &(a, b) in &PAIRS {
            let spec = filter_spec(a, b);
            let dur = 1.0;
            let (f0, f1) = (50.0, spec.passband_hz);
            let chirp = |t: f64| (2.0 * PI * (f0 * t + (f1 - f0) * t * t / (2.0 * dur))).sin();
            let x: Vec<f32> = (0..a as usize).map(|i| chirp(i as f64 / a as f64) as f32).collect();
            let mut rs = Resampler::new(a, b).unwrap();
            let d = rs.delay_seconds();
            let y = run_all(&mut rs, &x);
            let skip = b as usize / 50;
            let mut err = 0.0;
            let mut cnt = 0;
            for (j, &v) in y.iter().enumerate().skip(skip).take(y.len() - 3 * skip) {
                let t = j as f64 / b as f64 - d;
                let e = v as f64 - chirp(t);
                err += e * e;
                cnt += 1;
            }
            let db = 20.0 * ((err / cnt as f64).sqrt() * 2f64.sqrt()).log10();
            // 0.1 dB ripple alone would show as about -39 dB here.
            assert!(db < -70.0, "{a}->{b}: sweep error {db} dB");
        }
    }

    #[test]
    fn steady_output_per_20ms_chunk() {
        for &(a, b) in &PAIRS {
            let mut rs = Resampler::new(a, b).unwrap();
            let chunk = vec![0.5f32; a as usize / 50];
            for _ in 0..10 {
                let mut out = Vec::new();
                rs.process_f32(&chunk, &mut out);
                assert_eq!(out.len(), b as usize / 50, "{a}->{b}");
            }
        }
    }

    #[test]
    fn flush_gives_exact_length() {
        for &(a, b) in &PAIRS {
            for n in [0usize, 1, 7, 160, 1001] {
                let mut rs = Resampler::new(a, b).unwrap();
                let y = run_all(&mut rs, &vec![0.1; n]);
                let want = if n == 0 { 0 } else { ((n + rs.k / 2) as u64 * b as u64).div_ceil(a as u64) };
                assert_eq!(y.len() as u64, want, "{a}->{b} n={n}");
            }
        }
    }

    #[test]
    fn flush_returns_the_delayed_tail() {
        // An impulse within the last K/2 input samples: before the tail was emitted it never came
        // out; now all of it does (its output sums to the ratio, as any input sample's does).
        for &(a, b) in &PAIRS {
            let mut rs = Resampler::new(a, b).unwrap();
            let n = a as usize / 10;
            let mut x = vec![0.0f32; n];
            x[n - rs.k / 4] = 1.0;
            let mut y = Vec::new();
            rs.process_f32(&x, &mut y);
            let streamed = y.len();
            rs.flush_f32(&mut y);
            let tail = y.len() - streamed;
            let expect = rs.delay_output_samples();
            assert!((tail as f64 - expect).abs() <= 2.0, "{a}->{b}: tail {tail} vs delay {expect}");
            let sum: f32 = y.iter().sum();
            let ratio = b as f32 / a as f32;
            assert!((sum - ratio).abs() < 0.02 * ratio.max(1.0), "{a}->{b}: impulse sum {sum} vs {ratio}");
        }
    }

    #[test]
    fn ratio_adjust_changes_rate_without_clicks() {
        let mut rs = Resampler::new(48000, 16000).unwrap();
        let x = tone(440.0, 48000, 48000);
        let mut out = Vec::new();
        rs.process_f32(&x[..24000], &mut out);
        rs.set_ratio_adjust(1.01).unwrap();
        rs.process_f32(&x[24000..], &mut out);
        assert!(out.len() > 16000 + 70, "{}", out.len());
        let max_jump = out[200..].windows(2).map(|w| (w[1] - w[0]).abs()).fold(0.0, f32::max);
        // A 440 Hz unit sine at 16 kHz moves at most 2*pi*440/16000 ~ 0.173 per sample.
        assert!(max_jump < 0.18, "{max_jump}");
        assert!(rs.set_ratio_adjust(2.0).is_err());
    }

    #[test]
    fn unsupported_rates_rejected() {
        assert!(Resampler::new(11025, 16000).is_err());
        assert!(Resampler::new(16000, 0).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn chunk_independent(pair in 0usize..12, cuts in proptest::collection::vec(0usize..700, 1..12), adj in prop::bool::ANY) {
            let (a, b) = PAIRS[pair];
            let x: Vec<f32> = (0..3000).map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 500.0).collect();
            let mut whole = Resampler::new(a, b).unwrap();
            let mut parts = Resampler::new(a, b).unwrap();
            if adj {
                whole.set_ratio_adjust(1.003).unwrap();
                parts.set_ratio_adjust(1.003).unwrap();
            }
            let mut y1 = Vec::new();
            whole.process_f32(&x, &mut y1);
            whole.flush_f32(&mut y1);
            let mut y2 = Vec::new();
            let mut at = 0;
            for c in cuts {
                let end = (at + c).min(x.len());
                parts.process_f32(&x[at..end], &mut y2);
                at = end;
            }
            // one sample at a time for the rest
            for s in &x[at..] {
                parts.process_f32(std::slice::from_ref(s), &mut y2);
            }
            parts.flush_f32(&mut y2);
            prop_assert_eq!(y1, y2);
        }
    }
}
