//! Small PCM helpers the services need (all saturating, never panicking).

use crate::error::{invalid, Result};

/// Decode little-endian PCM16 bytes (odd length is an error).
pub fn le_bytes_to_i16(bytes: &[u8], out: &mut Vec<i16>) -> Result<()> {
    if bytes.len() % 2 != 0 {
        return invalid(format!("PCM16 buffer has odd length {}", bytes.len()));
    }
    out.extend(bytes.chunks_exact(2).map(|c| i16::from_le_bytes([c[0], c[1]])));
    Ok(())
}

/// Decode little-endian float32 bytes (length must be a multiple of 4).
pub fn le_bytes_to_f32(bytes: &[u8], out: &mut Vec<f32>) -> Result<()> {
    if bytes.len() % 4 != 0 {
        return invalid(format!("float32 buffer length {} is not a multiple of 4", bytes.len()));
    }
    out.extend(bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])));
    Ok(())
}

/// PCM16 -> float32 in [-1, 1).
pub fn i16_to_f32(s: i16) -> f32 {
    s as f32 / 32768.0
}

/// float32 -> PCM16, rounded and saturated (NaN becomes 0).
pub fn f32_to_i16(x: f32) -> i16 {
    if x.is_nan() {
        0
    } else {
        (x * 32768.0).round().clamp(-32768.0, 32767.0) as i16
    }
}

/// Multiply by a linear gain with saturation.
pub fn gain(pcm: &mut [i16], g: f32) {
    for s in pcm {
        *s = (*s as f32 * g).round().clamp(-32768.0, 32767.0) as i16;
    }
}

/// Saturating sum of two equally long streams into `a`.
pub fn mix_into(a: &mut [i16], b: &[i16]) -> Result<()> {
    if a.len() != b.len() {
        return invalid(format!("mix needs equal lengths, got {} and {} samples", a.len(), b.len()));
    }
    for (x, y) in a.iter_mut().zip(b) {
        *x = x.saturating_add(*y);
    }
    Ok(())
}

/// Root mean square of PCM16 samples (0 for empty input).
pub fn rms(pcm: &[i16]) -> f64 {
    if pcm.is_empty() {
        return 0.0;
    }
    let sum: f64 = pcm.iter().map(|&s| (s as f64) * (s as f64)).sum();
    (sum / pcm.len() as f64).sqrt()
}

/// RMS in dB relative to full scale 32768 (a full-scale square wave is 0 dBFS). Silence reports -120.
pub fn rms_dbfs(pcm: &[i16]) -> f64 {
    let r = rms(pcm);
    if r <= 0.0 {
        -120.0
    } else {
        (20.0 * (r / 32768.0).log10()).max(-120.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helpers() {
        assert_eq!(f32_to_i16(i16_to_f32(-32768)), -32768);
        assert_eq!(f32_to_i16(2.0), 32767);
        assert_eq!(f32_to_i16(f32::NAN), 0);
        let mut a = vec![30000i16, -30000, 5];
        gain(&mut a, 2.0);
        assert_eq!(a, vec![32767, -32768, 10]);
        mix_into(&mut a, &[1, -1, 1]).unwrap();
        assert_eq!(a, vec![32767, -32768, 11]);
        assert!(mix_into(&mut a, &[1]).is_err());
        assert_eq!(rms_dbfs(&[]), -120.0);
        assert!((rms_dbfs(&[32767, -32767]) - 0.0).abs() < 0.01);
        let mut v = Vec::new();
        assert!(le_bytes_to_i16(&[1, 2, 3], &mut v).is_err());
    }
}
