//! G.711 μ-law (PCMU) and A-law (PCMA), bit-exact with the ITU-T G.711 / G.191 reference
//! (the classic Sun `g711.c` algorithm). Encoding uses compile-time tables indexed by the
//! 14-bit (μ-law) / 13-bit (A-law) magnitude the standard quantises, decoding a 256-entry table.

const SEG_UEND: [i32; 8] = [0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF];
const SEG_AEND: [i32; 8] = [0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF];

const fn search(val: i32, table: &[i32; 8]) -> usize {
    let mut i = 0;
    while i < 8 {
        if val <= table[i] {
            return i;
        }
        i += 1;
    }
    8
}

/// Reference μ-law encoder for one 16-bit sample.
pub const fn linear_to_ulaw_ref(sample: i16) -> u8 {
    const BIAS: i32 = 0x84;
    const CLIP: i32 = 8159;
    let mut pcm = (sample as i32) >> 2;
    let mask: i32;
    if pcm < 0 {
        pcm = -pcm;
        mask = 0x7F;
    } else {
        mask = 0xFF;
    }
    if pcm > CLIP {
        pcm = CLIP;
    }
    pcm += BIAS >> 2;
    let seg = search(pcm, &SEG_UEND);
    if seg >= 8 {
        (0x7F ^ mask) as u8
    } else {
        let uval = ((seg as i32) << 4) | ((pcm >> (seg + 1)) & 0xF);
        (uval ^ mask) as u8
    }
}

/// Reference μ-law decoder for one code.
pub const fn ulaw_to_linear_ref(code: u8) -> i16 {
    const BIAS: i32 = 0x84;
    let u = !code as i32 & 0xFF;
    let mut t = ((u & 0x0F) << 3) + BIAS;
    t <<= (u & 0x70) >> 4;
    (if u & 0x80 != 0 { BIAS - t } else { t - BIAS }) as i16
}

/// Reference A-law encoder for one 16-bit sample.
pub const fn linear_to_alaw_ref(sample: i16) -> u8 {
    let mut pcm = (sample as i32) >> 3;
    let mask: i32;
    if pcm >= 0 {
        mask = 0xD5;
    } else {
        mask = 0x55;
        pcm = -pcm - 1;
    }
    let seg = search(pcm, &SEG_AEND);
    if seg >= 8 {
        (0x7F ^ mask) as u8
    } else {
        let mut aval = (seg as i32) << 4;
        if seg < 2 {
            aval |= (pcm >> 1) & 0xF;
        } else {
            aval |= (pcm >> seg) & 0xF;
        }
        (aval ^ mask) as u8
    }
}

/// Reference A-law decoder for one code.
pub const fn alaw_to_linear_ref(code: u8) -> i16 {
    let a = (code ^ 0x55) as i32;
    let mut t = (a & 0xF) << 4;
    let seg = (a & 0x70) >> 4;
    match seg {
        0 => t += 8,
        1 => t += 0x108,
        _ => {
            t += 0x108;
            t <<= seg - 1;
        }
    }
    (if a & 0x80 != 0 { t } else { -t }) as i16
}

const fn build_ulaw_dec() -> [i16; 256] {
    let mut t = [0i16; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = ulaw_to_linear_ref(i as u8);
        i += 1;
    }
    t
}

const fn build_alaw_dec() -> [i16; 256] {
    let mut t = [0i16; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = alaw_to_linear_ref(i as u8);
        i += 1;
    }
    t
}

// μ-law only looks at sample >> 2 (14 bits), A-law at sample >> 3 (13 bits): a table over that
// index is exact for every 16-bit input.
const fn build_ulaw_enc() -> [u8; 16384] {
    let mut t = [0u8; 16384];
    let mut i = 0;
    while i < 16384 {
        let s = ((i as i32 - 8192) << 2) as i16;
        t[i] = linear_to_ulaw_ref(s);
        i += 1;
    }
    t
}

const fn build_alaw_enc() -> [u8; 8192] {
    let mut t = [0u8; 8192];
    let mut i = 0;
    while i < 8192 {
        let s = ((i as i32 - 4096) << 3) as i16;
        t[i] = linear_to_alaw_ref(s);
        i += 1;
    }
    t
}

static ULAW_DEC: [i16; 256] = build_ulaw_dec();
static ALAW_DEC: [i16; 256] = build_alaw_dec();
static ULAW_ENC: [u8; 16384] = build_ulaw_enc();
static ALAW_ENC: [u8; 8192] = build_alaw_enc();

/// μ-law encode one sample (table lookup, identical to [`linear_to_ulaw_ref`]).
#[inline]
pub fn ulaw_encode_sample(s: i16) -> u8 {
    ULAW_ENC[((s >> 2) as i32 + 8192) as usize]
}

/// A-law encode one sample (table lookup, identical to [`linear_to_alaw_ref`]).
#[inline]
pub fn alaw_encode_sample(s: i16) -> u8 {
    ALAW_ENC[((s >> 3) as i32 + 4096) as usize]
}

/// μ-law decode one code.
#[inline]
pub fn ulaw_decode_sample(c: u8) -> i16 {
    ULAW_DEC[c as usize]
}

/// A-law decode one code.
#[inline]
pub fn alaw_decode_sample(c: u8) -> i16 {
    ALAW_DEC[c as usize]
}

/// Encode PCM16 samples to μ-law, appending to `out`.
pub fn ulaw_encode(pcm: &[i16], out: &mut Vec<u8>) {
    out.extend(pcm.iter().map(|&s| ulaw_encode_sample(s)));
}

/// Encode PCM16 samples to A-law, appending to `out`.
pub fn alaw_encode(pcm: &[i16], out: &mut Vec<u8>) {
    out.extend(pcm.iter().map(|&s| alaw_encode_sample(s)));
}

/// Decode μ-law codes, appending PCM16 samples to `out`.
pub fn ulaw_decode(codes: &[u8], out: &mut Vec<i16>) {
    out.extend(codes.iter().map(|&c| ulaw_decode_sample(c)));
}

/// Decode A-law codes, appending PCM16 samples to `out`.
pub fn alaw_decode(codes: &[u8], out: &mut Vec<i16>) {
    out.extend(codes.iter().map(|&c| alaw_decode_sample(c)));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_reference_values() {
        // Values from the ITU-T G.711 tables (G.191 reference implementation).
        assert_eq!(ulaw_decode_sample(0x00), -32124);
        assert_eq!(ulaw_decode_sample(0x80), 32124);
        assert_eq!(ulaw_decode_sample(0xFF), 0);
        assert_eq!(ulaw_decode_sample(0x7F), 0);
        assert_eq!(ulaw_decode_sample(0xF0), 120);
        assert_eq!(alaw_decode_sample(0xD5), 8);
        assert_eq!(alaw_decode_sample(0x55), -8);
        assert_eq!(alaw_decode_sample(0xAA), 32256);
        assert_eq!(alaw_decode_sample(0x2A), -32256);
        assert_eq!(ulaw_encode_sample(0), 0xFF);
        assert_eq!(alaw_encode_sample(0), 0xD5);
        assert_eq!(ulaw_encode_sample(i16::MAX), 0x80);
        assert_eq!(ulaw_encode_sample(i16::MIN), 0x00);
        assert_eq!(alaw_encode_sample(i16::MAX), 0xAA);
        assert_eq!(alaw_encode_sample(i16::MIN), 0x2A);
    }

    #[test]
    fn tables_match_reference_for_every_sample() {
        for s in i16::MIN..=i16::MAX {
            assert_eq!(ulaw_encode_sample(s), linear_to_ulaw_ref(s), "ulaw {s}");
            assert_eq!(alaw_encode_sample(s), linear_to_alaw_ref(s), "alaw {s}");
        }
    }

    #[test]
    fn decode_encode_is_identity_on_codes() {
        for c in 0..=255u8 {
            // 0x7F and 0xFF both decode to 0 in μ-law; 0 encodes to 0xFF.
            let u = ulaw_encode_sample(ulaw_decode_sample(c));
            if c == 0x7F {
                assert_eq!(u, 0xFF);
            } else {
                assert_eq!(u, c);
            }
            assert_eq!(alaw_encode_sample(alaw_decode_sample(c)), c);
        }
    }

    #[test]
    fn quantisation_error_is_bounded() {
        for s in (i16::MIN..=i16::MAX).step_by(7) {
            let u = ulaw_decode_sample(ulaw_encode_sample(s)) as i32;
            let a = alaw_decode_sample(alaw_encode_sample(s)) as i32;
            let s = s as i32;
            // Step size is at most 1024 (μ) / 1024 (A) in the top segment.
            assert!((u - s).abs() <= 1024 + 132, "ulaw {s} -> {u}");
            assert!((a - s).abs() <= 1024, "alaw {s} -> {a}");
        }
    }
}
