//! The two composed call legs: one call per 20 ms frame does all the work.
//!
//! * Inbound: RTP (Opus or PCMU/PCMA) -> jitter buffer -> decode / PLC / FEC -> resample -> PCM16.
//! * Outbound: PCM16 (e.g. TTS at 24 kHz) -> resample -> encode -> RTP packets with sequence and
//!   timestamp.

use crate::error::{invalid, Error, Result};
use crate::jitter::{InsertResult, JitterBuffer, JitterConfig, JitterStats, PacketInfo, Playout};
use crate::tsm::{Wsola, MAX_RATE};
use crate::opus::{self, Decoder, Encoder, EncoderConfig};
use crate::resample::Resampler;
use crate::{frame, g711, rtp};

/// Payload codec of a leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// Opus (RTP clock 48 kHz).
    Opus,
    /// G.711 μ-law (8 kHz).
    Pcmu,
    /// G.711 A-law (8 kHz).
    Pcma,
}

impl Codec {
    /// Parse "opus" / "pcmu" / "pcma" (case-insensitive).
    pub fn parse(name: &str) -> Result<Self> {
        match name.to_ascii_lowercase().as_str() {
            "opus" => Ok(Codec::Opus),
            "pcmu" | "ulaw" | "g711u" => Ok(Codec::Pcmu),
            "pcma" | "alaw" | "g711a" => Ok(Codec::Pcma),
            _ => invalid(format!("unknown codec {name:?} (use opus, pcmu or pcma)")),
        }
    }

    /// RTP clock rate.
    pub fn clock_rate(self) -> u32 {
        match self {
            Codec::Opus => 48000,
            _ => 8000,
        }
    }

    /// Static/default payload type.
    pub fn default_payload_type(self) -> u8 {
        match self {
            Codec::Opus => 111,
            Codec::Pcmu => 0,
            Codec::Pcma => 8,
        }
    }
}

/// What a popped frame mostly contains (the most severe unit wins).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum FrameKind {
    /// Decoded audio.
    Normal,
    /// Silence before playout started.
    Buffering,
    /// DTX / comfort noise between talk spurts.
    Silence,
    /// Contains audio rebuilt from FEC.
    Fec,
    /// Contains concealment of a lost packet.
    Concealed,
    /// Contains concealment because the buffer ran dry (or an expand).
    Underrun,
}

impl FrameKind {
    /// Short name for Python.
    pub fn as_str(self) -> &'static str {
        match self {
            FrameKind::Normal => "normal",
            FrameKind::Buffering => "buffering",
            FrameKind::Silence => "silence",
            FrameKind::Fec => "fec",
            FrameKind::Concealed => "concealed",
            FrameKind::Underrun => "underrun",
        }
    }
}

/// Inbound leg settings.
#[derive(Debug, Clone, Copy)]
pub struct InboundConfig {
    /// Payload codec.
    pub codec: Codec,
    /// Accept only this payload type for audio. `None`: lock onto the first audio payload type
    /// seen (never onto telephone-events).
    pub payload_type: Option<u8>,
    /// RFC 4733 telephone-event payload type: such packets go to [`InboundLeg::take_dtmf`], never
    /// to the decoder.
    pub dtmf_payload_type: Option<u8>,
    /// Output rate of the PCM16 frames.
    pub output_rate: u32,
    /// Opus decode rate; `None` = the output rate when libopus supports it (no extra resampler).
    pub decode_rate: Option<u32>,
    /// Jitter buffer settings (clock rate and frame are filled in from the codec).
    pub jitter: JitterConfig,
}

impl Default for InboundConfig {
    fn default() -> Self {
        Self {
            codec: Codec::Opus,
            payload_type: None,
            dtmf_payload_type: Some(101),
            output_rate: 16000,
            decode_rate: None,
            jitter: JitterConfig::default(),
        }
    }
}

/// Leg-level insert outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LegInsert {
    /// From the jitter buffer.
    Jitter(InsertResult),
    /// Not audio for this leg: a telephone-event (queued for [`InboundLeg::take_dtmf`]), another
    /// payload type, or a stray packet of a replaced source.
    Ignored,
}

impl LegInsert {
    /// Short name for Python.
    pub fn as_str(self) -> &'static str {
        match self {
            LegInsert::Jitter(InsertResult::Accepted) => "accepted",
            LegInsert::Jitter(InsertResult::Late) => "late",
            LegInsert::Jitter(InsertResult::Duplicate) => "duplicate",
            LegInsert::Jitter(InsertResult::Reset) => "reset",
            LegInsert::Ignored => "ignored",
        }
    }
}

/// A telephone-event packet received on an inbound leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DtmfPacket {
    /// RTP timestamp (the event's start; retransmitted end packets repeat it).
    pub timestamp: u32,
    /// The event block.
    pub event: rtp::DtmfEvent,
}

/// Extra inbound counters (the jitter buffer's are in [`JitterStats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LegStats {
    /// Milliseconds of input removed by time compression.
    pub accelerated_ms: f64,
    /// Milliseconds of input repeated by time stretching.
    pub expanded_ms: f64,
    /// Current time-scale change (positive: faster than real time), fraction.
    pub time_scale: f64,
    /// Resampler ratio adjustment in use for clock drift (1.0 = none).
    pub drift_ratio: f64,
    /// Packets with a payload type that is neither the audio nor the telephone-event one.
    pub unknown_payload_type: u64,
    /// Telephone-event packets received.
    pub dtmf_packets: u64,
    /// Packets of a replaced source arriving after the switch (dropped).
    pub stray_ssrc: u64,
    /// Source (SSRC) changes.
    pub ssrc_changes: u64,
}

/// Inbound: RTP in, fixed-size PCM16 frames out.
pub struct InboundLeg {
    cfg: InboundConfig,
    jb: JitterBuffer,
    ssrc: Option<u32>,
    old_ssrc: Option<u32>,
    audio_pt: Option<u8>,
    opus: Option<Decoder>,
    decode_rate: u32,
    resampler: Option<Resampler>,
    dec: Vec<i16>,
    rs_out: Vec<i16>,
    produced: Vec<i16>,
    tsm: Wsola,
    frame_out: usize,
    low_energy: bool,
    g711_last: Vec<i16>,
    g711_plc: u32,
    mode: i8,
    drift_applied: f64,
    dtmf: std::collections::VecDeque<DtmfPacket>,
    leg_stats: LegStats,
    current_delay_ms: f64,
    playout_delay_ms: f64,
    /// Opus decode errors (corrupt packets concealed instead).
    pub decode_errors: u64,
    /// Packets not decoded as audio (telephone-events, other payload types, stray sources).
    pub ignored: u64,
}

const LOW_ENERGY_RMS: f64 = 330.0; // about -40 dBFS
const DTMF_QUEUE: usize = 256;

impl InboundLeg {
    /// Create an inbound leg.
    pub fn new(cfg: InboundConfig) -> Result<Self> {
        if !crate::resample::RATES.contains(&cfg.output_rate) {
            return invalid(format!("unsupported output rate {}", cfg.output_rate));
        }
        let mut jc = cfg.jitter;
        jc.clock_rate = cfg.codec.clock_rate();
        let mut jb = JitterBuffer::new(jc)?;
        jb.set_time_stretch(true);
        let (opus, decode_rate) = match cfg.codec {
            Codec::Opus => {
                let rate = match cfg.decode_rate {
                    Some(r) => r,
                    None if opus::OPUS_RATES.contains(&cfg.output_rate) => cfg.output_rate,
                    None => 48000,
                };
                (Some(Decoder::new(rate, 1)?), rate)
            }
            _ => (None, 8000),
        };
        let resampler = if decode_rate != cfg.output_rate { Some(Resampler::new(decode_rate, cfg.output_rate)?) } else { None };
        let frame_out = (cfg.output_rate * jc.frame_ms / 1000) as usize;
        Ok(Self {
            cfg,
            jb,
            ssrc: None,
            old_ssrc: None,
            audio_pt: cfg.payload_type,
            opus,
            decode_rate,
            resampler,
            dec: vec![0; decode_rate as usize * 120 / 1000],
            rs_out: Vec::with_capacity(frame_out * 8),
            produced: Vec::with_capacity(frame_out * 2),
            tsm: Wsola::new(cfg.output_rate),
            frame_out,
            low_energy: true,
            g711_last: Vec::new(),
            g711_plc: 0,
            mode: 0,
            drift_applied: 0.0,
            dtmf: std::collections::VecDeque::new(),
            leg_stats: LegStats { drift_ratio: 1.0, ..Default::default() },
            current_delay_ms: 0.0,
            playout_delay_ms: 0.0,
            decode_errors: 0,
            ignored: 0,
        })
    }

    /// Samples per output frame.
    pub fn frame_samples(&self) -> usize {
        self.frame_out
    }

    /// Rate the codec decodes at before any resampling.
    pub fn decode_rate(&self) -> u32 {
        self.decode_rate
    }

    /// Constant algorithmic delay added by resampling, seconds (0 when libopus decodes at the
    /// output rate).
    pub fn resampler_delay_seconds(&self) -> f64 {
        self.resampler.as_ref().map_or(0.0, |r| r.delay_seconds())
    }

    /// Jitter buffer counters; the delay fields describe the whole leg (packets plus decoded audio
    /// waiting to be played).
    pub fn stats(&self) -> JitterStats {
        let mut s = self.jb.stats();
        s.current_delay_ms = self.current_delay_ms;
        s.playout_delay_ms = self.playout_delay_ms;
        s
    }

    /// Leg counters (time scaling, payload types, sources).
    pub fn leg_stats(&self) -> LegStats {
        let mut s = self.leg_stats;
        let ms = 1000.0 / self.cfg.output_rate as f64;
        s.accelerated_ms = self.tsm.removed as f64 * ms;
        s.expanded_ms = self.tsm.repeated as f64 * ms;
        s
    }

    /// Telephone-events received since the last call, oldest first.
    pub fn take_dtmf(&mut self) -> Vec<DtmfPacket> {
        self.dtmf.drain(..).collect()
    }

    fn looks_like_telephone_event(pt: u8, payload: &[u8]) -> bool {
        // RFC 4733 blocks are 4 bytes, event codes 0..=255 but DTMF is 0..=15; dynamic types only.
        pt >= 96 && !payload.is_empty() && payload.len() % 4 == 0 && payload.len() <= 16 && payload[0] <= 16
    }

    /// Insert one RTP datagram that arrived at `arrival_ms`.
    pub fn insert(&mut self, packet: &[u8], arrival_ms: f64) -> Result<LegInsert> {
        let p = rtp::parse(packet)?;
        if Some(p.payload_type) == self.cfg.dtmf_payload_type && Some(p.payload_type) != self.audio_pt {
            let event = rtp::parse_dtmf(p.payload)?;
            self.leg_stats.dtmf_packets += 1;
            if self.dtmf.len() >= DTMF_QUEUE {
                self.dtmf.pop_front();
            }
            self.dtmf.push_back(DtmfPacket { timestamp: p.timestamp, event });
            self.ignored += 1;
            return Ok(LegInsert::Ignored);
        }
        match self.audio_pt {
            Some(pt) if pt != p.payload_type => {
                self.leg_stats.unknown_payload_type += 1;
                self.ignored += 1;
                return Ok(LegInsert::Ignored);
            }
            Some(_) => {}
            None => {
                // Before locking: static payload types belong to their codecs (0 PCMU, 8 PCMA,
                // 13 comfort noise...), Opus is always dynamic (96-127), and a dynamic type
                // carrying what looks like telephone-events is not audio.
                let default = self.cfg.codec.default_payload_type();
                let plausible = match self.cfg.codec {
                    Codec::Opus => (96..=127).contains(&p.payload_type),
                    _ => p.payload_type == default,
                };
                if !plausible || (p.payload_type != default && Self::looks_like_telephone_event(p.payload_type, p.payload)) {
                    self.leg_stats.unknown_payload_type += 1;
                    self.ignored += 1;
                    return Ok(LegInsert::Ignored);
                }
            }
        }
        if p.payload.is_empty() {
            return Err(Error::Rtp("empty payload".into()));
        }
        let (samples, fec) = match self.cfg.codec {
            Codec::Opus => {
                let n = opus::packet_samples(p.payload, 48000)?;
                if n > 5760 {
                    return Err(Error::Codec(format!("Opus packet of {n} samples exceeds 120 ms")));
                }
                (n as u32, opus::packet_has_fec(p.payload))
            }
            _ => {
                if p.payload.len() > 960 {
                    return Err(Error::Rtp(format!("G.711 payload of {} bytes exceeds 120 ms", p.payload.len())));
                }
                (p.payload.len() as u32, false)
            }
        };
        // Lock onto the audio payload type only once a packet has proved to be audio.
        self.audio_pt.get_or_insert(p.payload_type);
        if self.ssrc != Some(p.ssrc) {
            if self.old_ssrc == Some(p.ssrc) {
                // A late packet of the source we switched away from: not part of the new timeline.
                self.leg_stats.stray_ssrc += 1;
                self.ignored += 1;
                return Ok(LegInsert::Ignored);
            }
            if self.ssrc.is_some() {
                self.jb.new_source();
                self.leg_stats.ssrc_changes += 1;
            }
            self.old_ssrc = self.ssrc;
            self.ssrc = Some(p.ssrc);
        }
        let info = PacketInfo { seq: p.sequence, timestamp: p.timestamp, arrival_ms, samples, has_fec: fec, marker: p.marker };
        let r = self.jb.insert_packet(info, p.payload)?;
        Ok(LegInsert::Jitter(r))
    }

    fn to_dec_rate(&self, clock_samples: u32) -> usize {
        (clock_samples as u64 * self.decode_rate as u64 / self.cfg.codec.clock_rate() as u64) as usize
    }

    fn opus_conceal(&mut self, n: usize) -> usize {
        let Some(d) = self.opus.as_mut() else { return 0 };
        let unit = self.decode_rate as usize / 400;
        let n = n - n % unit;
        if n == 0 {
            return 0;
        }
        match d.conceal(n, &mut self.dec) {
            Ok(k) => k,
            Err(_) => {
                self.dec[..n].fill(0);
                n
            }
        }
    }

    fn g711_conceal(&mut self, n: usize) -> usize {
        // Repeat the last pitch-sized stretch of the last good frame, fading out over three frames;
        // silence after that. The fade is per sample so repetition never steps.
        let len = self.g711_last.len();
        let total = 3 * n.max(1);
        for i in 0..n {
            let k = self.g711_plc as usize * n + i;
            let s = if len > 0 && k < total {
                let period = Self::g711_period(&self.g711_last);
                let src = len - period + (k % period);
                self.g711_last[src] as f32 * (1.0 - k as f32 / total as f32)
            } else {
                0.0
            };
            self.dec[i] = s as i16;
        }
        self.g711_plc += 1;
        n
    }

    fn g711_period(x: &[i16]) -> usize {
        // Pitch period of the last good frame by autocorrelation (2.5 to 15 ms at 8 kHz).
        let n = x.len();
        if n < 160 {
            return n.max(1);
        }
        let (mut best, mut best_c) = (n.min(120), f64::NEG_INFINITY);
        for lag in 20..=120.min(n / 2) {
            let mut c = 0f64;
            let mut e = 1.0f64;
            for i in n - lag..n {
                c += x[i] as f64 * x[i - lag] as f64;
                e += x[i - lag] as f64 * x[i - lag] as f64;
            }
            let c = c / e.sqrt();
            if c > best_c {
                best_c = c;
                best = lag;
            }
        }
        best
    }

    /// Decode the next unit of playout into the time-scale queue; returns its kind.
    fn pull(&mut self, now_ms: f64) -> FrameKind {
        let decision = self.jb.pop(now_ms, self.low_energy);
        let (n, k) = match decision {
            Playout::Buffering { samples } => {
                let n = self.to_dec_rate(samples);
                self.dec[..n].fill(0);
                (n, FrameKind::Buffering)
            }
            Playout::Silence { samples } => {
                let n = self.to_dec_rate(samples);
                let got = if self.opus.is_some() { self.opus_conceal(n) } else { self.g711_conceal(n) };
                self.dec[got..n].fill(0);
                (n, FrameKind::Silence)
            }
            Playout::Conceal { samples, lost } => {
                let n = self.to_dec_rate(samples);
                let got = if self.opus.is_some() { self.opus_conceal(n) } else { self.g711_conceal(n) };
                self.dec[got..n].fill(0);
                (n, if lost { FrameKind::Concealed } else { FrameKind::Underrun })
            }
            Playout::Fec { samples, slot, .. } => {
                let n = self.to_dec_rate(samples);
                let r = match self.opus.as_mut() {
                    Some(d) => d.decode_fec(self.jb.payload(slot), n, &mut self.dec),
                    None => Err(Error::Codec("FEC without Opus".into())),
                };
                let got = match r {
                    Ok(k) => k,
                    Err(_) => {
                        self.decode_errors += 1;
                        self.opus_conceal(n)
                    }
                };
                self.dec[got..n].fill(0);
                (n, FrameKind::Fec)
            }
            Playout::Packet { slot, samples, .. } => {
                let payload = self.jb.payload(slot);
                let n = match (self.cfg.codec, self.opus.as_mut()) {
                    (Codec::Opus, Some(d)) => match d.decode(payload, &mut self.dec) {
                        Ok(k) => k,
                        Err(_) => {
                            self.decode_errors += 1;
                            let n = self.to_dec_rate(samples);
                            let got = self.opus_conceal(n);
                            self.dec[got..n].fill(0);
                            n
                        }
                    },
                    (Codec::Pcmu, _) => {
                        for (d, &c) in self.dec.iter_mut().zip(payload) {
                            *d = g711::ulaw_decode_sample(c);
                        }
                        payload.len()
                    }
                    _ => {
                        for (d, &c) in self.dec.iter_mut().zip(payload) {
                            *d = g711::alaw_decode_sample(c);
                        }
                        payload.len()
                    }
                };
                if self.opus.is_none() {
                    if self.g711_plc > 0 {
                        // Back from concealment: fade the real audio in over 2.5 ms.
                        let m = 20.min(n);
                        for (i, d) in self.dec[..m].iter_mut().enumerate() {
                            *d = (*d as f32 * (i as f32 + 0.5) / m as f32) as i16;
                        }
                    }
                    self.g711_last.clear();
                    self.g711_last.extend_from_slice(&self.dec[..n]);
                    self.g711_plc = 0;
                }
                (n, FrameKind::Normal)
            }
        };
        let n = n.min(self.dec.len());
        if matches!(k, FrameKind::Normal | FrameKind::Fec) {
            self.low_energy = frame::rms(&self.dec[..n]) < LOW_ENERGY_RMS;
        }
        match self.resampler.as_mut() {
            Some(r) => {
                self.rs_out.clear();
                r.process_i16(&self.dec[..n], &mut self.rs_out);
                self.tsm.push_i16(&self.rs_out);
            }
            None => self.tsm.push_i16(&self.dec[..n]),
        }
        k
    }

    fn pending_ms(&self) -> f64 {
        self.tsm.pending() as f64 * 1000.0 / self.cfg.output_rate as f64
    }

    /// Time-scale rate for this frame: a proportional controller on the playout delay with a
    /// dead band from 4 ms below the target to half a frame above it, plus the sender's clock
    /// drift when no resampler can absorb it.
    fn choose_rate(&mut self, now_ms: f64) -> f64 {
        if !self.jb.started() || self.jb.played() == 0 {
            self.mode = 0;
            return 0.0;
        }
        let delay = self.jb.playout_delay_ms(now_ms) + self.pending_ms();
        let target = self.jb.target_ms();
        let err = delay - target;
        let half = self.cfg.jitter.frame_ms as f64 / 2.0;
        // Asymmetric band: below the target packets start arriving too late, so stretch as soon
        // as the delay is 4 ms short; above it only latency is at stake, so allow half a frame.
        self.mode = match self.mode {
            _ if err > half => 1,
            _ if err < -4.0 => -1,
            1 if err < 4.0 => 0,
            -1 if err > 0.0 => 0,
            m => m,
        };
        let ctrl = match self.mode {
            1 => (0.002 * err).clamp(0.01, MAX_RATE),
            -1 => {
                // Grow fast only when lateness is scattered (real jitter), slowly after one spike.
                let cap = if self.jb.late_spread(now_ms) >= 3 { MAX_RATE } else { 0.01 };
                -(0.002 * -err).clamp(0.005, cap)
            }
            _ => 0.0,
        };
        let drift = self.jb.drift();
        if let Some(r) = self.resampler.as_mut() {
            // Clock drift goes to the resampler's ratio (a constant, inaudible varispeed).
            let d = if drift.abs() < 2e-4 { 0.0 } else { drift };
            if (d - self.drift_applied).abs() > 2e-5 {
                let factor = 1.0 / (1.0 + d);
                if r.set_ratio_adjust(factor).is_ok() {
                    self.drift_applied = d;
                    self.leg_stats.drift_ratio = factor;
                }
            }
            ctrl
        } else if drift.abs() >= 2e-4 && self.mode == 0 {
            drift.clamp(-MAX_RATE, MAX_RATE)
        } else {
            ctrl
        }
    }

    /// Produce exactly one output frame into `out` (`frame_samples()` long) for time `now_ms`.
    pub fn pop(&mut self, now_ms: f64, out: &mut [i16]) -> Result<FrameKind> {
        if out.len() != self.frame_out {
            return invalid(format!("output frame must be {} samples, got {}", self.frame_out, out.len()));
        }
        if !now_ms.is_finite() {
            return invalid("now_ms must be finite");
        }
        self.current_delay_ms = self.jb.buffered_ms() + self.pending_ms();
        let rate = self.choose_rate(now_ms);
        self.leg_stats.time_scale = rate;
        self.playout_delay_ms = if self.jb.started() { self.jb.playout_delay_ms(now_ms) + self.pending_ms() } else { 0.0 };
        let (removed, repeated) = (self.tsm.removed, self.tsm.repeated);
        let mut kind: Option<FrameKind> = None;
        let mut produced = std::mem::take(&mut self.produced);
        produced.clear();
        let hop = self.tsm.hop();
        let mut guard = 0;
        while produced.len() < self.frame_out {
            guard += 1;
            if guard > 64 {
                // Cannot happen (every unit yields audio); never loop forever on odd input.
                produced.resize(self.frame_out, 0);
                break;
            }
            while self.tsm.pending() < hop {
                let k = self.pull(now_ms);
                kind = Some(kind.map_or(k, |p: FrameKind| p.max(k)));
                guard += 1;
                if guard > 64 {
                    break;
                }
            }
            // Read ahead for the splice search only when the data is already here.
            while rate > 0.0 && self.tsm.pending() < self.tsm.lookahead(rate) && self.jb.next_is_ready() {
                let k = self.pull(now_ms);
                kind = Some(kind.map_or(k, |p: FrameKind| p.max(k)));
            }
            if !self.tsm.hop_into(rate, &mut produced) {
                continue;
            }
        }
        out.copy_from_slice(&produced[..self.frame_out]);
        self.produced = produced;
        if self.tsm.removed > removed {
            self.jb.note_time_scale(true);
        } else if self.tsm.repeated > repeated {
            self.jb.note_time_scale(false);
        }
        Ok(kind.unwrap_or(FrameKind::Normal))
    }
}

/// Outbound leg settings.
#[derive(Debug, Clone, Copy)]
pub struct OutboundConfig {
    /// Payload codec.
    pub codec: Codec,
    /// Rate of the PCM16 pushed in.
    pub input_rate: u32,
    /// RTP payload type.
    pub payload_type: u8,
    /// RTP SSRC.
    pub ssrc: u32,
    /// Packet duration, ms (10, 20, 40, 60).
    pub frame_ms: u32,
    /// First sequence number.
    pub sequence: u16,
    /// First timestamp.
    pub timestamp: u32,
    /// Opus encode rate; `None` = the input rate when libopus supports it (no extra resampler).
    pub encode_rate: Option<u32>,
    /// Opus settings (sample_rate is overridden).
    pub opus: EncoderConfig,
}

impl Default for OutboundConfig {
    fn default() -> Self {
        Self {
            codec: Codec::Opus,
            input_rate: 24000,
            payload_type: 111,
            ssrc: 0,
            frame_ms: 20,
            sequence: 0,
            timestamp: 0,
            encode_rate: None,
            opus: EncoderConfig::default(),
        }
    }
}

/// Outbound: PCM16 in, RTP packets out.
pub struct OutboundLeg {
    cfg: OutboundConfig,
    encoder: Option<Encoder>,
    enc_rate: u32,
    resampler: Option<Resampler>,
    pending: Vec<i16>,
    scratch: Vec<i16>,
    frame_enc: usize,
    ts_step: u32,
    seq: u16,
    ts: u32,
    marker: bool,
    payload: Vec<u8>,
    packet: Vec<u8>,
    /// Last sample handed to the encoder, and samples of fade-in still owed after a clear.
    last: i16,
    fade_in: usize,
}

impl OutboundLeg {
    /// Create an outbound leg.
    pub fn new(cfg: OutboundConfig) -> Result<Self> {
        if !crate::resample::RATES.contains(&cfg.input_rate) {
            return invalid(format!("unsupported input rate {}", cfg.input_rate));
        }
        if ![10, 20, 40, 60].contains(&cfg.frame_ms) {
            return invalid(format!("frame_ms must be 10, 20, 40 or 60, got {}", cfg.frame_ms));
        }
        if cfg.payload_type > 127 {
            return invalid(format!("payload type {} > 127", cfg.payload_type));
        }
        let (encoder, enc_rate) = match cfg.codec {
            Codec::Opus => {
                let rate = match cfg.encode_rate {
                    Some(r) => r,
                    None if opus::OPUS_RATES.contains(&cfg.input_rate) => cfg.input_rate,
                    None => 48000,
                };
                let mut oc = cfg.opus;
                oc.sample_rate = rate;
                oc.channels = 1;
                (Some(Encoder::new(oc)?), rate)
            }
            _ => (None, 8000),
        };
        let resampler = if enc_rate != cfg.input_rate { Some(Resampler::new(cfg.input_rate, enc_rate)?) } else { None };
        let frame_enc = (enc_rate * cfg.frame_ms / 1000) as usize;
        Ok(Self {
            encoder,
            enc_rate,
            resampler,
            pending: Vec::with_capacity(frame_enc * 4),
            scratch: Vec::with_capacity(frame_enc * 4),
            frame_enc,
            ts_step: cfg.codec.clock_rate() * cfg.frame_ms / 1000,
            seq: cfg.sequence,
            ts: cfg.timestamp,
            marker: true,
            payload: vec![0; opus::MAX_PACKET],
            packet: Vec::with_capacity(opus::MAX_PACKET + 12),
            last: 0,
            fade_in: 0,
            cfg,
        })
    }

    /// Rate the encoder runs at.
    pub fn encode_rate(&self) -> u32 {
        self.enc_rate
    }

    /// Next sequence number.
    pub fn sequence(&self) -> u16 {
        self.seq
    }

    /// Next timestamp.
    pub fn timestamp(&self) -> u32 {
        self.ts
    }

    /// Constant algorithmic delay added by resampling, seconds.
    pub fn resampler_delay_seconds(&self) -> f64 {
        self.resampler.as_ref().map_or(0.0, |r| r.delay_seconds())
    }

    /// Mark the next packet as the start of a talk spurt.
    pub fn set_marker(&mut self) {
        self.marker = true;
    }

    fn fade_len(&self) -> usize {
        (self.enc_rate / 200) as usize // 5 ms
    }

    /// Drop buffered, not yet encoded audio (barge-in). The audio already encoded is not cut off:
    /// it continues for 5 ms fading to zero (from the dropped audio itself where there is some),
    /// and whatever is pushed next fades in over 5 ms, so the splice never clicks.
    pub fn clear(&mut self) {
        let n = self.fade_len();
        let keep = self.pending.len().min(n);
        self.pending.truncate(keep);
        let hold = self.pending.last().copied().unwrap_or(self.last) as f32;
        self.pending.resize(n, 0);
        for (i, s) in self.pending.iter_mut().enumerate() {
            let src = if i < keep { *s as f32 } else { hold };
            *s = (src * (1.0 - (i as f32 + 0.5) / n as f32)) as i16;
        }
        if let Some(r) = self.resampler.as_mut() {
            r.reset();
        }
        self.fade_in = n;
        self.marker = true;
    }

    fn apply_fade_in(&mut self, from: usize) {
        if self.fade_in == 0 {
            return;
        }
        let n = self.fade_len();
        for s in self.pending[from..].iter_mut().take(self.fade_in) {
            let done = n - self.fade_in;
            *s = (*s as f32 * (done as f32 + 0.5) / n as f32) as i16;
            self.fade_in -= 1;
        }
    }

    fn encode_frames(&mut self, emit: &mut dyn FnMut(&[u8])) -> Result<()> {
        let mut off = 0;
        while self.pending.len() - off >= self.frame_enc {
            let pcm = &self.pending[off..off + self.frame_enc];
            off += self.frame_enc;
            self.last = pcm[pcm.len() - 1];
            let len = match self.encoder.as_mut() {
                Some(e) => e.encode(pcm, &mut self.payload)?,
                None => {
                    let codec = self.cfg.codec;
                    for (d, &s) in self.payload.iter_mut().zip(pcm) {
                        *d = if codec == Codec::Pcmu { g711::ulaw_encode_sample(s) } else { g711::alaw_encode_sample(s) };
                    }
                    pcm.len()
                }
            };
            if self.encoder.is_some() && self.cfg.opus.dtx && len <= 2 {
                // DTX: nothing to send; time moves on, the next real packet starts a talk spurt.
                self.ts = self.ts.wrapping_add(self.ts_step);
                self.marker = true;
                continue;
            }
            self.packet.clear();
            let h = rtp::RtpHeader {
                marker: self.marker,
                payload_type: self.cfg.payload_type,
                sequence: self.seq,
                timestamp: self.ts,
                ssrc: self.cfg.ssrc,
                csrcs: &[],
                extension: None,
            };
            rtp::build(&h, &self.payload[..len], &mut self.packet)?;
            emit(&self.packet);
            self.marker = false;
            self.seq = self.seq.wrapping_add(1);
            self.ts = self.ts.wrapping_add(self.ts_step);
        }
        self.pending.drain(..off);
        Ok(())
    }

    /// Push PCM16 samples at the input rate; `emit` receives each finished RTP packet.
    pub fn push(&mut self, pcm: &[i16], emit: &mut dyn FnMut(&[u8])) -> Result<()> {
        let from = self.pending.len();
        match self.resampler.as_mut() {
            Some(r) => r.process_i16(pcm, &mut self.pending),
            None => self.pending.extend_from_slice(pcm),
        }
        self.apply_fade_in(from);
        self.encode_frames(emit)
    }

    /// Push little-endian PCM16 bytes.
    pub fn push_le_bytes(&mut self, pcm: &[u8], emit: &mut dyn FnMut(&[u8])) -> Result<()> {
        let mut s = std::mem::take(&mut self.scratch);
        s.clear();
        let r = frame::le_bytes_to_i16(pcm, &mut s).and_then(|_| self.push(&s, emit));
        self.scratch = s;
        r
    }

    /// End of utterance: flush the resampler tail, pad the last frame with silence, encode.
    pub fn flush(&mut self, emit: &mut dyn FnMut(&[u8])) -> Result<()> {
        if let Some(r) = self.resampler.as_mut() {
            r.flush_i16(&mut self.pending);
        }
        // The padding is silence: ramp down to it rather than step (5 ms, only if not silent).
        let hold = self.pending.last().copied().unwrap_or(self.last) as f32;
        if hold != 0.0 {
            let n = self.fade_len();
            self.pending.extend((0..n).map(|i| (hold * (1.0 - (i as f32 + 0.5) / n as f32)) as i16));
        }
        let rem = self.pending.len() % self.frame_enc;
        if rem != 0 {
            self.pending.resize(self.pending.len() + self.frame_enc - rem, 0);
        }
        self.encode_frames(emit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn speech_like(rate: u32, n: usize, start: usize) -> Vec<i16> {
        (0..n)
            .map(|i| {
                let t = (i + start) as f32 / rate as f32;
                ((t * 2.0 * std::f32::consts::PI * 200.0).sin() * 5000.0
                    + (t * 2.0 * std::f32::consts::PI * 420.0).sin() * 2500.0) as i16
            })
            .collect()
    }

    #[test]
    fn outbound_then_inbound_opus() {
        let mut out = OutboundLeg::new(OutboundConfig { ssrc: 7, ..Default::default() }).unwrap();
        let mut pkts: Vec<Vec<u8>> = Vec::new();
        for k in 0..50 {
            out.push(&speech_like(24000, 480, k * 480), &mut |p| pkts.push(p.to_vec())).unwrap();
        }
        assert_eq!(pkts.len(), 50);
        let first = rtp::parse(&pkts[0]).unwrap();
        assert!(first.marker);
        assert_eq!(rtp::parse(&pkts[1]).unwrap().timestamp, 960);
        let mut inb = InboundLeg::new(InboundConfig::default()).unwrap();
        let mut frame = vec![0i16; 320];
        let mut kinds = Vec::new();
        for (k, p) in pkts.iter().enumerate() {
            let now = k as f64 * 20.0;
            assert_eq!(inb.insert(p, now).unwrap(), LegInsert::Jitter(InsertResult::Accepted));
            kinds.push(inb.pop(now, &mut frame).unwrap());
        }
        assert!(kinds.iter().filter(|k| **k == FrameKind::Normal).count() >= 45, "{kinds:?}");
        assert!(frame::rms(&frame) > 1000.0);
    }

    #[test]
    fn pcmu_inbound_resamples_to_16k() {
        let mut out = OutboundLeg::new(OutboundConfig { codec: Codec::Pcmu, input_rate: 16000, payload_type: 0, ..Default::default() }).unwrap();
        let mut pkts: Vec<Vec<u8>> = Vec::new();
        for k in 0..20 {
            out.push(&speech_like(16000, 320, k * 320), &mut |p| pkts.push(p.to_vec())).unwrap();
        }
        assert_eq!(rtp::parse(&pkts[0]).unwrap().payload.len(), 160);
        let mut inb = InboundLeg::new(InboundConfig { codec: Codec::Pcmu, ..Default::default() }).unwrap();
        let mut frame = vec![0i16; 320];
        for (k, p) in pkts.iter().enumerate() {
            inb.insert(p, k as f64 * 20.0).unwrap();
            inb.pop(k as f64 * 20.0, &mut frame).unwrap();
        }
        assert!(frame::rms(&frame) > 1000.0);
        assert!(inb.resampler_delay_seconds() <= 0.003);
    }

    #[test]
    fn bad_input_is_an_error_not_a_crash() {
        let mut inb = InboundLeg::new(InboundConfig::default()).unwrap();
        assert!(inb.insert(&[0x80, 111], 0.0).is_err());
        let mut pkt = Vec::new();
        rtp::build(&rtp::RtpHeader { payload_type: 111, ..Default::default() }, &[0x03], &mut pkt).unwrap();
        assert!(inb.insert(&pkt, 0.0).is_err());
        let mut frame = vec![0i16; 319];
        assert!(inb.pop(0.0, &mut frame).is_err());
        assert!(InboundLeg::new(InboundConfig { output_rate: 11025, ..Default::default() }).is_err());
    }

    fn max_step(x: &[i16]) -> i32 {
        x.windows(2).map(|w| (w[1] as i32 - w[0] as i32).abs()).max().unwrap_or(0)
    }

    #[test]
    fn outbound_clear_fades_instead_of_clicking() {
        for input_rate in [8000u32, 16000] {
            let cfg = OutboundConfig { codec: Codec::Pcmu, input_rate, payload_type: 0, ..Default::default() };
            let mut out = OutboundLeg::new(cfg).unwrap();
            let mut pcm = Vec::new();
            let mut take = |p: &[u8]| pcm.extend(rtp::parse(p).unwrap().payload.iter().map(|&c| g711::ulaw_decode_sample(c)));
            let a = speech_like(input_rate, input_rate as usize, 0);
            // Barge-in in the middle of a frame, then new audio at a different phase.
            out.push(&a[..input_rate as usize / 50 * 7 + 37], &mut take).unwrap();
            out.clear();
            out.push(&speech_like(input_rate, input_rate as usize / 2, 1234), &mut take).unwrap();
            out.flush(&mut take).unwrap();
            let own = max_step(&speech_like(8000, 8000, 0));
            let got = max_step(&pcm);
            assert!(got as f64 <= own as f64 * 1.2 + 64.0, "{input_rate}: step {got} vs signal {own}");
        }
    }

    #[test]
    fn telephone_events_go_to_their_own_queue() {
        let mut inb = InboundLeg::new(InboundConfig::default()).unwrap();
        let mut pkt = Vec::new();
        rtp::build(&rtp::RtpHeader { payload_type: 101, sequence: 5, timestamp: 800, ..Default::default() }, &[5, 0x8a, 0, 160], &mut pkt).unwrap();
        assert_eq!(inb.insert(&pkt, 0.0).unwrap(), LegInsert::Ignored);
        let d = inb.take_dtmf();
        assert_eq!(d.len(), 1);
        assert_eq!((d[0].timestamp, d[0].event.digit(), d[0].event.end), (800, Some('5'), true));
        // With no telephone-event type configured, a packet that looks like one is still never
        // decoded as audio (and does not lock the leg onto its payload type).
        let mut inb = InboundLeg::new(InboundConfig { dtmf_payload_type: None, ..Default::default() }).unwrap();
        pkt.clear();
        rtp::build(&rtp::RtpHeader { payload_type: 100, ..Default::default() }, &[1, 0x0a, 0, 160], &mut pkt).unwrap();
        assert_eq!(inb.insert(&pkt, 0.0).unwrap(), LegInsert::Ignored);
        assert_eq!(inb.leg_stats().unknown_payload_type, 1);
        assert_eq!(inb.stats().received, 0);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 64, rng_seed: proptest::test_runner::RngSeed::Fixed(7), ..Default::default() })]
        /// Hostile headers and clocks (any sequence, timestamp, source, payload type, marker;
        /// arrival and playout times jumping both ways): never a panic, always one frame per pop,
        /// statistics that add up.
        #[test]
        fn hostile_streams_never_break_the_leg(ops in proptest::collection::vec(
            (proptest::prelude::any::<u16>(), proptest::prelude::any::<u32>(), 0u32..3, proptest::prelude::any::<bool>(),
             proptest::sample::select(vec![111u8, 101, 0, 13, 96]), -200.0f64..400.0, proptest::prelude::any::<bool>()), 1..300)) {
            let mut out = OutboundLeg::new(OutboundConfig { input_rate: 48000, ..Default::default() }).unwrap();
            let mut payloads = Vec::new();
            for k in 0..10 {
                out.push(&speech_like(48000, 960, k * 960), &mut |p| payloads.push(rtp::parse(p).unwrap().payload.to_vec())).unwrap();
            }
            let mut inb = InboundLeg::new(InboundConfig::default()).unwrap();
            let mut frame = vec![0i16; 320];
            let (mut now, mut pkt) = (0.0f64, Vec::new());
            for (i, (seq, ts, ssrc, marker, pt, dt, pop)) in ops.into_iter().enumerate() {
                now += dt;
                if pop {
                    proptest::prop_assert!(inb.pop(now, &mut frame).is_ok());
                } else {
                    pkt.clear();
                    let payload: &[u8] = if pt == 101 { &[1, 0x0a, 0, 160] } else { &payloads[i % payloads.len()] };
                    rtp::build(&rtp::RtpHeader { payload_type: pt, sequence: seq, timestamp: ts, ssrc, marker, ..Default::default() }, payload, &mut pkt).unwrap();
                    let _ = inb.insert(&pkt, now);
                }
                let st = inb.stats();
                proptest::prop_assert_eq!(st.lost, st.concealed + st.fec_recovered);
            }
        }
    }
}
