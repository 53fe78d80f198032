#![no_main]
//! RTP + RFC 4733 parsing must never panic; whatever parses must round-trip through `build`.
use audio_core::rtp;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = rtp::parse(data) {
        assert!(p.payload.len() <= data.len());
        let mut out = Vec::new();
        let h = rtp::RtpHeader {
            marker: p.marker,
            payload_type: p.payload_type,
            sequence: p.sequence,
            timestamp: p.timestamp,
            ssrc: p.ssrc,
            csrcs: &p.csrcs,
            extension: p.extension,
        };
        rtp::build(&h, p.payload, &mut out).unwrap();
        let q = rtp::parse(&out).unwrap();
        assert_eq!(q.payload, p.payload);
        let _ = rtp::parse_dtmf(p.payload);
    }
});
