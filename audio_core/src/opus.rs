//! Safe wrappers over libopus (statically built by `opusic-sys`).

use crate::error::{Error, Result};
use opusic_sys as sys;
use std::ffi::{c_int, CStr};
use std::ptr::NonNull;

/// Sample rates libopus accepts for encoding and decoding.
pub const OPUS_RATES: [u32; 5] = [8000, 12000, 16000, 24000, 48000];

/// Largest packet we ever produce (RFC 6716 allows up to 1275 bytes per frame, 3 frames in 60 ms).
pub const MAX_PACKET: usize = 4000;

fn strerror(code: c_int) -> String {
    // SAFETY: opus_strerror returns a pointer to a static, NUL-terminated string for any code.
    let s = unsafe { CStr::from_ptr(sys::opus_strerror(code)) };
    s.to_string_lossy().into_owned()
}

fn check(code: c_int, what: &str) -> Result<c_int> {
    if code < 0 {
        Err(Error::Codec(format!("{what}: {}", strerror(code))))
    } else {
        Ok(code)
    }
}

fn check_rate_channels(rate: u32, channels: u8) -> Result<()> {
    if !OPUS_RATES.contains(&rate) {
        return Err(Error::InvalidArgument(format!(
            "Opus sample rate {rate} unsupported (use 8000, 12000, 16000, 24000 or 48000)"
        )));
    }
    if channels != 1 && channels != 2 {
        return Err(Error::InvalidArgument(format!("Opus channels must be 1 or 2, got {channels}")));
    }
    Ok(())
}

/// Is `samples` (per channel) a legal Opus frame size at `rate` (2.5/5/10/20/40/60 ms)?
pub fn is_valid_frame_size(rate: u32, samples: usize) -> bool {
    let per_2_5ms = rate as usize / 400;
    [1, 2, 4, 8, 16, 24].iter().any(|m| m * per_2_5ms == samples)
}

/// Encoder application mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Application {
    /// Speech (SILK-favouring), the telephony default.
    Voip,
    /// Music / general audio.
    Audio,
    /// Lowest delay, CELT only.
    LowDelay,
}

/// Encoder settings.
#[derive(Debug, Clone, Copy)]
pub struct EncoderConfig {
    /// Input sample rate.
    pub sample_rate: u32,
    /// 1 or 2.
    pub channels: u8,
    /// Application mode.
    pub application: Application,
    /// Target bitrate in bit/s (500..=512000).
    pub bitrate: i32,
    /// 0..=10; telephony default 5 (cheap, still good for speech).
    pub complexity: i32,
    /// In-band FEC (LBRR) so the receiver can rebuild a lost packet from the next one.
    pub fec: bool,
    /// Expected packet loss in percent (0..=100); FEC only engages when > 0.
    pub packet_loss_perc: i32,
    /// Discontinuous transmission during silence.
    pub dtx: bool,
}

impl Default for EncoderConfig {
    fn default() -> Self {
        Self {
            sample_rate: 48000,
            channels: 1,
            application: Application::Voip,
            bitrate: 32000,
            complexity: 5,
            fec: true,
            packet_loss_perc: 10,
            dtx: false,
        }
    }
}

/// An Opus encoder.
pub struct Encoder {
    st: NonNull<sys::OpusEncoder>,
    cfg: EncoderConfig,
}

// SAFETY: the encoder state is plain heap memory owned exclusively by this value; libopus keeps
// no thread-local or global mutable state for it, so moving it to another thread is sound.
unsafe impl Send for Encoder {}
// SAFETY: every method that touches the state takes `&mut self`; `&Encoder` only reads `cfg`,
// so shared references across threads cannot race on the libopus state.
unsafe impl Sync for Encoder {}

impl Encoder {
    /// Create an encoder.
    pub fn new(cfg: EncoderConfig) -> Result<Self> {
        check_rate_channels(cfg.sample_rate, cfg.channels)?;
        if !(0..=10).contains(&cfg.complexity) {
            return Err(Error::InvalidArgument(format!("complexity must be 0..=10, got {}", cfg.complexity)));
        }
        if !(500..=512_000).contains(&cfg.bitrate) {
            return Err(Error::InvalidArgument(format!("bitrate must be 500..=512000, got {}", cfg.bitrate)));
        }
        if !(0..=100).contains(&cfg.packet_loss_perc) {
            return Err(Error::InvalidArgument(format!(
                "packet_loss_perc must be 0..=100, got {}",
                cfg.packet_loss_perc
            )));
        }
        let app = match cfg.application {
            Application::Voip => sys::OPUS_APPLICATION_VOIP,
            Application::Audio => sys::OPUS_APPLICATION_AUDIO,
            Application::LowDelay => sys::OPUS_APPLICATION_RESTRICTED_LOWDELAY,
        };
        let mut err: c_int = 0;
        // SAFETY: arguments were validated above; `err` is a valid out-pointer.
        let st = unsafe { sys::opus_encoder_create(cfg.sample_rate as i32, cfg.channels as c_int, app, &mut err) };
        check(err, "opus_encoder_create")?;
        let st = NonNull::new(st).ok_or_else(|| Error::Codec("opus_encoder_create returned NULL".into()))?;
        let mut enc = Encoder { st, cfg };
        enc.ctl(sys::OPUS_SET_BITRATE_REQUEST, cfg.bitrate)?;
        enc.ctl(sys::OPUS_SET_COMPLEXITY_REQUEST, cfg.complexity)?;
        enc.ctl(sys::OPUS_SET_INBAND_FEC_REQUEST, cfg.fec as i32)?;
        enc.ctl(sys::OPUS_SET_PACKET_LOSS_PERC_REQUEST, cfg.packet_loss_perc)?;
        enc.ctl(sys::OPUS_SET_DTX_REQUEST, cfg.dtx as i32)?;
        Ok(enc)
    }

    fn ctl(&mut self, req: c_int, value: i32) -> Result<()> {
        // SAFETY: `st` is a live encoder; every request we pass is a SET taking one opus_int32.
        let r = unsafe { sys::opus_encoder_ctl(self.st.as_ptr(), req, value) };
        check(r, "opus_encoder_ctl").map(|_| ())
    }

    /// Current configuration.
    pub fn config(&self) -> &EncoderConfig {
        &self.cfg
    }

    /// Change the bitrate at run time.
    pub fn set_bitrate(&mut self, bitrate: i32) -> Result<()> {
        if !(500..=512_000).contains(&bitrate) {
            return Err(Error::InvalidArgument(format!("bitrate must be 500..=512000, got {bitrate}")));
        }
        self.ctl(sys::OPUS_SET_BITRATE_REQUEST, bitrate)?;
        self.cfg.bitrate = bitrate;
        Ok(())
    }

    /// Change the expected packet loss (drives FEC strength).
    pub fn set_packet_loss_perc(&mut self, perc: i32) -> Result<()> {
        if !(0..=100).contains(&perc) {
            return Err(Error::InvalidArgument(format!("packet_loss_perc must be 0..=100, got {perc}")));
        }
        self.ctl(sys::OPUS_SET_PACKET_LOSS_PERC_REQUEST, perc)?;
        self.cfg.packet_loss_perc = perc;
        Ok(())
    }

    /// Encode one frame of interleaved PCM16; returns the packet length written into `out`.
    pub fn encode(&mut self, pcm: &[i16], out: &mut [u8]) -> Result<usize> {
        let ch = self.cfg.channels as usize;
        if pcm.len() % ch != 0 || !is_valid_frame_size(self.cfg.sample_rate, pcm.len() / ch) {
            return Err(Error::InvalidArgument(format!(
                "{} samples is not a valid Opus frame at {} Hz x{} (2.5/5/10/20/40/60 ms)",
                pcm.len(),
                self.cfg.sample_rate,
                ch
            )));
        }
        let cap = out.len().min(i32::MAX as usize) as i32;
        // SAFETY: `pcm` holds frame_size*channels samples (checked above), `out` is writable for
        // `cap` bytes, and `st` is a live encoder.
        let n = unsafe {
            sys::opus_encode(self.st.as_ptr(), pcm.as_ptr(), (pcm.len() / ch) as c_int, out.as_mut_ptr(), cap)
        };
        check(n, "opus_encode").map(|n| n as usize)
    }
}

impl Drop for Encoder {
    fn drop(&mut self) {
        // SAFETY: `st` came from opus_encoder_create and is destroyed exactly once.
        unsafe { sys::opus_encoder_destroy(self.st.as_ptr()) }
    }
}

/// Number of samples (per channel, at `rate`) a packet decodes to, validating its TOC/framing.
pub fn packet_samples(packet: &[u8], rate: u32) -> Result<usize> {
    if packet.is_empty() {
        return Err(Error::Codec("empty Opus packet".into()));
    }
    if packet.len() > i32::MAX as usize {
        return Err(Error::Codec("Opus packet too large".into()));
    }
    // SAFETY: the pointer/length pair describes `packet`; libopus only reads within it.
    let n = unsafe { sys::opus_packet_get_nb_samples(packet.as_ptr(), packet.len() as i32, rate as i32) };
    check(n, "invalid Opus packet").map(|n| n as usize)
}

/// Does the packet carry in-band FEC (LBRR) data for the previous frame?
pub fn packet_has_fec(packet: &[u8]) -> bool {
    if packet.is_empty() || packet.len() > i32::MAX as usize {
        return false;
    }
    // SAFETY: the pointer/length pair describes `packet`; libopus only reads within it.
    let r = unsafe { sys::opus_packet_has_lbrr(packet.as_ptr(), packet.len() as i32) };
    r > 0
}

/// An Opus decoder with packet-loss concealment and FEC recovery.
pub struct Decoder {
    st: NonNull<sys::OpusDecoder>,
    rate: u32,
    channels: u8,
    last_frame: usize,
}

// SAFETY: as for `Encoder`: exclusively owned heap state with no thread affinity.
unsafe impl Send for Decoder {}
// SAFETY: all state-touching methods take `&mut self`.
unsafe impl Sync for Decoder {}

impl Decoder {
    /// Create a decoder producing `rate` Hz output (libopus resamples internally).
    pub fn new(rate: u32, channels: u8) -> Result<Self> {
        check_rate_channels(rate, channels)?;
        let mut err: c_int = 0;
        // SAFETY: arguments validated; `err` is a valid out-pointer.
        let st = unsafe { sys::opus_decoder_create(rate as i32, channels as c_int, &mut err) };
        check(err, "opus_decoder_create")?;
        let st = NonNull::new(st).ok_or_else(|| Error::Codec("opus_decoder_create returned NULL".into()))?;
        Ok(Decoder { st, rate, channels, last_frame: rate as usize / 50 })
    }

    /// Output sample rate.
    pub fn rate(&self) -> u32 {
        self.rate
    }

    /// Channels.
    pub fn channels(&self) -> u8 {
        self.channels
    }

    /// Largest frame (per channel) a packet can hold: 120 ms.
    pub fn max_frame(&self) -> usize {
        self.rate as usize * 120 / 1000
    }

    fn raw(&mut self, data: Option<&[u8]>, out: &mut [i16], frame: usize, fec: bool) -> Result<usize> {
        let ch = self.channels as usize;
        if out.len() < frame * ch {
            return Err(Error::InvalidArgument(format!("output buffer too small for {frame} samples")));
        }
        let (ptr, len) = match data {
            Some(d) if !d.is_empty() => {
                if d.len() > i32::MAX as usize {
                    return Err(Error::Codec("Opus packet too large".into()));
                }
                (d.as_ptr(), d.len() as i32)
            }
            _ => (std::ptr::null(), 0),
        };
        // SAFETY: `ptr/len` is either NULL/0 (PLC) or a live slice; `out` has room for
        // `frame * channels` samples (checked above); `st` is a live decoder.
        let n = unsafe { sys::opus_decode(self.st.as_ptr(), ptr, len, out.as_mut_ptr(), frame as c_int, fec as c_int) };
        let n = check(n, "opus_decode")? as usize;
        self.last_frame = n;
        Ok(n)
    }

    /// Decode a packet into `out` (interleaved); returns samples per channel.
    pub fn decode(&mut self, packet: &[u8], out: &mut [i16]) -> Result<usize> {
        let n = packet_samples(packet, self.rate)?;
        self.raw(Some(packet), out, n, false)
    }

    /// Packet-loss concealment for `samples` per channel (a multiple of 2.5 ms).
    pub fn conceal(&mut self, samples: usize, out: &mut [i16]) -> Result<usize> {
        if samples == 0 || samples % (self.rate as usize / 400) != 0 || samples > self.max_frame() {
            return Err(Error::InvalidArgument(format!("PLC length {samples} is not a multiple of 2.5 ms <= 120 ms")));
        }
        self.raw(None, out, samples, false)
    }

    /// Rebuild the lost frame *before* `next_packet` from its in-band FEC; `samples` is the lost
    /// frame's duration. Without FEC data libopus falls back to PLC.
    pub fn decode_fec(&mut self, next_packet: &[u8], samples: usize, out: &mut [i16]) -> Result<usize> {
        packet_samples(next_packet, self.rate)?;
        if samples == 0 || samples % (self.rate as usize / 400) != 0 || samples > self.max_frame() {
            return Err(Error::InvalidArgument(format!("FEC length {samples} is not a multiple of 2.5 ms <= 120 ms")));
        }
        self.raw(Some(next_packet), out, samples, true)
    }

    /// Samples per channel of the last decoded/concealed frame.
    pub fn last_frame(&self) -> usize {
        self.last_frame
    }
}

impl Drop for Decoder {
    fn drop(&mut self) {
        // SAFETY: `st` came from opus_decoder_create and is destroyed exactly once.
        unsafe { sys::opus_decoder_destroy(self.st.as_ptr()) }
    }
}

/// libopus version string.
pub fn version() -> String {
    // SAFETY: returns a pointer to a static NUL-terminated string.
    unsafe { CStr::from_ptr(sys::opus_get_version_string()) }.to_string_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(rate: u32, n: usize, f: f32, start: usize) -> Vec<i16> {
        (0..n)
            .map(|i| ((2.0 * std::f32::consts::PI * f * (i + start) as f32 / rate as f32).sin() * 8000.0) as i16)
            .collect()
    }

    #[test]
    fn all_rates_and_frame_sizes_roundtrip() {
        for &rate in &OPUS_RATES {
            for ms10 in [25usize, 50, 100, 200, 400, 600] {
                let n = rate as usize * ms10 / 10000;
                let mut enc = Encoder::new(EncoderConfig { sample_rate: rate, ..Default::default() }).unwrap();
                let mut dec = Decoder::new(rate, 1).unwrap();
                let mut pkt = [0u8; MAX_PACKET];
                let mut out = vec![0i16; dec.max_frame()];
                for k in 0..5 {
                    let len = enc.encode(&tone(rate, n, 440.0, k * n), &mut pkt).unwrap();
                    assert_eq!(packet_samples(&pkt[..len], rate).unwrap(), n);
                    assert_eq!(dec.decode(&pkt[..len], &mut out).unwrap(), n);
                }
            }
        }
    }

    #[test]
    fn stereo_accepted() {
        let mut enc = Encoder::new(EncoderConfig { channels: 2, ..Default::default() }).unwrap();
        let mut dec = Decoder::new(48000, 2).unwrap();
        let pcm = vec![100i16; 960 * 2];
        let mut pkt = [0u8; MAX_PACKET];
        let len = enc.encode(&pcm, &mut pkt).unwrap();
        let mut out = vec![0i16; 960 * 2];
        assert_eq!(dec.decode(&pkt[..len], &mut out).unwrap(), 960);
    }

    #[test]
    fn bad_arguments_are_errors() {
        assert!(Encoder::new(EncoderConfig { sample_rate: 44100, ..Default::default() }).is_err());
        assert!(Encoder::new(EncoderConfig { complexity: 11, ..Default::default() }).is_err());
        assert!(Decoder::new(22050, 1).is_err());
        assert!(Decoder::new(48000, 3).is_err());
        let mut enc = Encoder::new(EncoderConfig::default()).unwrap();
        let mut pkt = [0u8; MAX_PACKET];
        assert!(enc.encode(&[0; 961], &mut pkt).is_err());
        let mut dec = Decoder::new(48000, 1).unwrap();
        let mut out = vec![0i16; 5760];
        assert!(dec.decode(&[], &mut out).is_err());
        // TOC says code 3 with a frame count byte that is missing.
        assert!(dec.decode(&[0x03], &mut out).is_err());
        assert!(dec.conceal(7, &mut out).is_err());
    }

    #[test]
    fn fec_recovers_lost_frame() {
        let cfg = EncoderConfig { fec: true, packet_loss_perc: 20, bitrate: 24000, ..Default::default() };
        let mut enc = Encoder::new(cfg).unwrap();
        let mut pkts = Vec::new();
        for k in 0..20 {
            let mut pkt = [0u8; MAX_PACKET];
            // Speech-like harmonic signal so SILK (and LBRR) engages.
            let pcm: Vec<i16> = (0..960)
                .map(|i| {
                    let t = (k * 960 + i) as f32 / 48000.0;
                    ((t * 2.0 * std::f32::consts::PI * 180.0).sin() * 6000.0
                        + (t * 2.0 * std::f32::consts::PI * 360.0).sin() * 3000.0) as i16
                })
                .collect();
            let len = enc.encode(&pcm, &mut pkt).unwrap();
            pkts.push(pkt[..len].to_vec());
        }
        assert!(pkts[10..].iter().any(|p| packet_has_fec(p)), "encoder produced no LBRR data");
        let mut dec = Decoder::new(48000, 1).unwrap();
        let mut out = vec![0i16; 5760];
        for p in &pkts[..10] {
            dec.decode(p, &mut out).unwrap();
        }
        assert_eq!(dec.decode_fec(&pkts[11], 960, &mut out).unwrap(), 960);
        assert!(out[..960].iter().any(|&s| s != 0));
        assert_eq!(dec.conceal(960, &mut out).unwrap(), 960);
    }

    #[test]
    fn garbage_packets_never_panic() {
        let mut dec = Decoder::new(48000, 1).unwrap();
        let mut out = vec![0i16; 5760];
        let mut x: u32 = 12345;
        for len in 1..200usize {
            let pkt: Vec<u8> = (0..len)
                .map(|_| {
                    x = x.wrapping_mul(1664525).wrapping_add(1013904223);
                    (x >> 24) as u8
                })
                .collect();
            let _ = dec.decode(&pkt, &mut out);
        }
    }
}
