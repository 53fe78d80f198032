#![no_main]
//! Arbitrary insert/pop sequences (any seq/timestamp/time jumps): no panic, no hang, and played
//! sequence numbers never repeat between resets.
use audio_core::jitter::{JitterBuffer, JitterConfig, Playout};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut jb = JitterBuffer::new(JitterConfig::default()).unwrap();
    let mut now = 0.0f64;
    let mut last: Option<u16> = None;
    let mut resets = 0;
    for op in data.chunks_exact(8) {
        let seq = u16::from_le_bytes([op[0], op[1]]);
        let ts = u32::from_le_bytes([op[2], op[3], op[4], op[5]]);
        let dt = op[6] as f64;
        if op[7] & 1 == 0 {
            let samples = (op[7] as u32 >> 1) * 120;
            let _ = jb.insert(seq, ts, &op[..4], now + dt, samples, op[7] & 2 != 0);
        } else {
            now += dt;
            if let Playout::Packet { seq, .. } = jb.pop(now, op[7] & 2 != 0) {
                let r = jb.stats().resets;
                if r == resets {
                    if let Some(l) = last {
                        assert!(seq.wrapping_sub(l) as i16 > 0, "replayed {seq} after {l}");
                    }
                }
                resets = r;
                last = Some(seq);
            }
        }
    }
});
