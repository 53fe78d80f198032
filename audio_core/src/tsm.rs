//! Time-scale modification: WSOLA (waveform-similarity overlap-add) on a sample queue.
//!
//! The leg decodes into this queue and takes exactly one frame out per pop, in hops of 10 ms. At
//! rate 0 a hop is a plain copy (bit-exact passthrough). At rate `r` (|r| <= 5 %) the nominal read
//! position advances `(1 + r)` hops per hop; the next segment starts where, within +-6 ms of that
//! nominal position (half the longest pitch period), it best matches the natural continuation of
//! the previous one (normalised cross-correlation), and the two are crossfaded over the whole hop
//! with complementary raised-cosine windows. So whole pitch periods are skipped (accelerate) or
//! repeated (expand) a little at a time, with no discontinuity and no pitch change; the long-run
//! rate is `1 + r` and never more than 5 % away from real time.

/// Largest time-scale change, as a fraction of real time.
pub const MAX_RATE: f64 = 0.05;

/// WSOLA state over an `f32` sample queue at one rate.
pub struct Wsola {
    hop: usize,
    search: usize,
    min_shift: f64,
    stride: usize,
    buf: Vec<f32>,
    /// Start of the natural continuation of the last emitted segment (next input to play).
    cont: usize,
    /// Nominal read position (fractional); equals `cont` while not stretching.
    nominal: f64,
    rise: Vec<f32>,
    /// Input samples skipped by splices (accelerate), in total.
    pub removed: u64,
    /// Input samples repeated by splices (expand), in total.
    pub repeated: u64,
}

impl Wsola {
    /// WSOLA for a stream at `rate` Hz.
    pub fn new(rate: u32) -> Self {
        let hop = (rate / 100) as usize;
        let search = (rate as usize * 6) / 1000;
        let stride = (rate as usize / 8000).max(1);
        let rise = (0..hop)
            .map(|i| {
                let x = (i as f64 + 0.5) / hop as f64;
                (0.5 - 0.5 * (std::f64::consts::PI * x).cos()) as f32
            })
            .collect();
        Self {
            hop,
            search,
            min_shift: rate as f64 / 1000.0,
            stride,
            buf: Vec::with_capacity(hop * 16),
            cont: 0,
            nominal: 0.0,
            rise,
            removed: 0,
            repeated: 0,
        }
    }

    /// Samples per hop (10 ms).
    pub fn hop(&self) -> usize {
        self.hop
    }

    /// Append decoded samples.
    pub fn push_i16(&mut self, x: &[i16]) {
        self.buf.extend(x.iter().map(|&s| s as f32));
    }

    /// Samples queued ahead of the play position.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.cont
    }

    /// Samples needed ahead of the play position for a hop at `rate` to have its full search range.
    pub fn lookahead(&self, rate: f64) -> usize {
        if rate > 0.0 {
            2 * self.hop + self.search + 2
        } else {
            self.hop
        }
    }

    /// Forget queued audio (history is kept so a later splice can still crossfade).
    pub fn clear(&mut self) {
        self.buf.truncate(self.cont);
        self.nominal = self.cont as f64;
    }

    fn score(&self, s: usize, stride: usize) -> f32 {
        // Normalised cross-correlation of the candidate with the natural continuation.
        let t = &self.buf[self.cont..self.cont + self.hop];
        let c = &self.buf[s..s + self.hop];
        let (mut xy, mut yy) = (0f32, 1e-3f32);
        let mut i = 0;
        while i < self.hop {
            xy += t[i] * c[i];
            yy += c[i] * c[i];
            i += stride;
        }
        xy / yy.sqrt()
    }

    /// Emit one hop at `rate` (clamped to +-[`MAX_RATE`]) into `out`. Needs `pending() >= hop()`;
    /// returns false (and emits nothing) otherwise. The search range is limited to what is queued.
    pub fn hop_into(&mut self, rate: f64, out: &mut Vec<i16>) -> bool {
        let h = self.hop;
        if self.pending() < h {
            return false;
        }
        let rate = rate.clamp(-MAX_RATE, MAX_RATE);
        if rate == 0.0 {
            // Not stretching: forget any sub-pitch offset and copy (exact passthrough).
            self.nominal = self.cont as f64;
        }
        let want = self.nominal + rate * h as f64;
        let centre = want.round() as i64;
        let lo = (centre - self.search as i64).max(0) as usize;
        let hi_avail = self.buf.len() - h;
        let hi = ((centre + self.search as i64).max(0) as usize).min(hi_avail);
        let mut best = self.cont;
        // A splice moves by about a pitch period (>= 2.5 ms) and is only taken when it brings the
        // position closer to nominal, which cannot happen until we are 1 ms or more off: skip the
        // search until then (at small rates, such as clock drift, most hops).
        let off = (want - self.cont as f64).abs();
        if rate != 0.0 && lo <= hi && off >= self.min_shift {
            // Coarse search on a decimated grid, then refine around the best lag.
            let st = self.stride;
            let mut best_score = f32::NEG_INFINITY;
            let mut s = lo;
            while s <= hi {
                let sc = self.score(s, st);
                if sc > best_score {
                    best_score = sc;
                    best = s;
                }
                s += st;
            }
            let (a, b) = (best.saturating_sub(st - 1).max(lo), (best + st - 1).min(hi));
            best_score = f32::NEG_INFINITY;
            for s in a..=b {
                let sc = self.score(s, 1);
                if sc > best_score {
                    best_score = sc;
                    best = s;
                }
            }
            // Only splice when it moves toward the nominal position.
            if (best as f64 - want).abs() >= (self.cont as f64 - want).abs() {
                best = self.cont;
            }
        }
        if best == self.cont {
            out.extend(self.buf[self.cont..self.cont + h].iter().map(|&y| y as i16));
        } else {
            for i in 0..h {
                let w = self.rise[i];
                let y = self.buf[self.cont + i] * (1.0 - w) + self.buf[best + i] * w;
                out.push(crate::resample::to_i16(y));
            }
            if best > self.cont {
                self.removed += (best - self.cont) as u64;
            } else {
                self.repeated += (self.cont - best) as u64;
            }
        }
        self.cont = best + h;
        self.nominal = want + h as f64;
        // Keep the rest of a search range's worth of history for expansion; drop older samples.
        let keep = self.search + 2 * h;
        if self.cont > keep * 4 {
            let drop = self.cont - keep;
            self.buf.drain(..drop);
            self.cont -= drop;
            self.nominal -= drop as f64;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn voice(rate: u32, n: usize) -> Vec<i16> {
        (0..n)
            .map(|i| {
                let t = i as f64 / rate as f64;
                let f0 = 140.0 + 30.0 * (t * 3.0).sin();
                let ph = 2.0 * std::f64::consts::PI * f0 * t;
                ((ph.sin() * 6000.0) + (2.0 * ph).sin() * 3000.0 + (5.0 * ph).sin() * 700.0) as i16
            })
            .collect()
    }

    #[test]
    fn passthrough_is_exact() {
        let x = voice(16000, 16000);
        let mut w = Wsola::new(16000);
        w.push_i16(&x);
        let mut out = Vec::new();
        while w.hop_into(0.0, &mut out) {}
        assert_eq!(&out[..], &x[..out.len()]);
        assert_eq!(out.len(), 16000);
    }

    #[test]
    fn rates_change_duration_smoothly() {
        for rate in [16000u32, 48000] {
            for r in [0.05, -0.05, 0.01] {
                let x = voice(rate, rate as usize * 2);
                let mut w = Wsola::new(rate);
                w.push_i16(&x);
                let mut out = Vec::new();
                while w.pending() >= w.lookahead(r) && w.hop_into(r, &mut out) {}
                let consumed = (x.len() - w.pending()) as f64;
                let got = consumed / out.len() as f64 - 1.0;
                assert!((got - r).abs() < 0.015, "{rate} {r}: {got}");
                let max_step = out.windows(2).map(|p| (p[1] as i32 - p[0] as i32).abs()).max().unwrap() as f64;
                let own_max = x.windows(2).map(|p| (p[1] as i32 - p[0] as i32).abs()).max().unwrap() as f64;
                // No splice steps beyond what the signal itself does anywhere.
                assert!(max_step <= 1.05 * own_max, "{rate} {r}: {max_step} vs {own_max}");
            }
        }
    }

    #[test]
    fn rate_stays_within_five_percent_over_any_second() {
        // Splices move by whole pitch periods, but only toward the nominal position: over any
        // second the consumed input stays within 5 % plus one pitch period of real time.
        for rate in [16000u32, 48000] {
            for r in [0.05, -0.05] {
                let x = voice(rate, rate as usize * 4);
                let mut w = Wsola::new(rate);
                w.push_i16(&x);
                let mut out = Vec::new();
                let mut consumed = vec![0usize];
                while w.pending() >= w.lookahead(r) && w.hop_into(r, &mut out) {
                    consumed.push(x.len() - w.pending());
                }
                let per_s = 100;
                for k in per_s..consumed.len() {
                    let used = (consumed[k] - consumed[k - per_s]) as f64 / rate as f64;
                    assert!((used - 1.0).abs() <= 0.05 + 0.0125, "{rate} {r}: {used} s of input in 1 s");
                }
            }
        }
    }
}
