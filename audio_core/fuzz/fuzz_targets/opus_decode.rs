#![no_main]
//! The inbound Opus path (RTP -> jitter -> decode/FEC/PLC) with arbitrary packets: errors only,
//! never a panic or a hang.
use audio_core::legs::{InboundConfig, InboundLeg};
use audio_core::opus::Decoder;
use audio_core::rtp;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut dec = Decoder::new(48000, 1).unwrap();
    let mut out = vec![0i16; 5760];
    for chunk in data.chunks(61) {
        let _ = dec.decode(chunk, &mut out);
        let _ = dec.decode_fec(chunk, 960, &mut out);
    }
    let mut leg = InboundLeg::new(InboundConfig::default()).unwrap();
    let mut frame = vec![0i16; leg.frame_samples()];
    for (k, chunk) in data.chunks(40).enumerate() {
        let mut pkt = Vec::new();
        let h = rtp::RtpHeader { payload_type: 111, sequence: k as u16, timestamp: k as u32 * 960, ..Default::default() };
        rtp::build(&h, chunk, &mut pkt).unwrap();
        let _ = leg.insert(&pkt, k as f64 * 20.0);
        let _ = leg.insert(chunk, k as f64 * 20.0);
        leg.pop(k as f64 * 20.0, &mut frame).unwrap();
    }
});
