//! RTP (RFC 3550) header parse/build with strict bounds checks, and RFC 4733 telephone-event parse.

use crate::error::{Error, Result};

/// Fixed RTP header length in bytes.
pub const RTP_HEADER_LEN: usize = 12;

fn rtp_err<T>(msg: impl Into<String>) -> Result<T> {
    Err(Error::Rtp(msg.into()))
}

/// A parsed RTP packet borrowing the datagram it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtpPacket<'a> {
    /// Padding bit was set (the padding has been removed from `payload`).
    pub padding: bool,
    /// Marker bit (for audio: first packet of a talk spurt).
    pub marker: bool,
    /// Payload type (7 bits).
    pub payload_type: u8,
    /// Sequence number.
    pub sequence: u16,
    /// Media timestamp in the payload's clock.
    pub timestamp: u32,
    /// Synchronisation source.
    pub ssrc: u32,
    /// Contributing sources (0..=15).
    pub csrcs: Vec<u32>,
    /// Header extension: (profile-defined 16 bits, extension data) when the X bit is set.
    pub extension: Option<(u16, &'a [u8])>,
    /// Payload with padding removed.
    pub payload: &'a [u8],
}

/// Parse an RTP packet. Every length field is checked against the datagram; errors never panic.
pub fn parse(data: &[u8]) -> Result<RtpPacket<'_>> {
    if data.len() < RTP_HEADER_LEN {
        return rtp_err(format!("{} bytes is shorter than the 12-byte RTP header", data.len()));
    }
    let b0 = data[0];
    let version = b0 >> 6;
    if version != 2 {
        return rtp_err(format!("version {version}, expected 2"));
    }
    let padding = b0 & 0x20 != 0;
    let has_ext = b0 & 0x10 != 0;
    let cc = (b0 & 0x0F) as usize;
    let b1 = data[1];
    let marker = b1 & 0x80 != 0;
    let payload_type = b1 & 0x7F;
    let sequence = u16::from_be_bytes([data[2], data[3]]);
    let timestamp = u32::from_be_bytes([data[4], data[5], data[6], data[7]]);
    let ssrc = u32::from_be_bytes([data[8], data[9], data[10], data[11]]);
    let mut pos = RTP_HEADER_LEN;
    let csrc_end = pos + 4 * cc;
    if data.len() < csrc_end {
        return rtp_err(format!("CSRC count {cc} needs {csrc_end} bytes, packet has {}", data.len()));
    }
    let csrcs = data[pos..csrc_end]
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    pos = csrc_end;
    let extension = if has_ext {
        if data.len() < pos + 4 {
            return rtp_err("extension bit set but the extension header is truncated");
        }
        let profile = u16::from_be_bytes([data[pos], data[pos + 1]]);
        let words = u16::from_be_bytes([data[pos + 2], data[pos + 3]]) as usize;
        let start = pos + 4;
        let end = start + 4 * words;
        if data.len() < end {
            return rtp_err(format!("extension of {words} words overruns the packet"));
        }
        pos = end;
        Some((profile, &data[start..end]))
    } else {
        None
    };
    let mut end = data.len();
    if padding {
        let pad = data[end - 1] as usize;
        if pad == 0 {
            return rtp_err("padding bit set with a zero padding length");
        }
        if pad > end - pos {
            return rtp_err(format!("padding length {pad} exceeds the {} bytes after the header", end - pos));
        }
        end -= pad;
    }
    Ok(RtpPacket {
        padding,
        marker,
        payload_type,
        sequence,
        timestamp,
        ssrc,
        csrcs,
        extension,
        payload: &data[pos..end],
    })
}

/// Fields of an RTP header to build.
#[derive(Debug, Clone, Default)]
pub struct RtpHeader<'a> {
    /// Marker bit.
    pub marker: bool,
    /// Payload type (0..=127).
    pub payload_type: u8,
    /// Sequence number.
    pub sequence: u16,
    /// Timestamp.
    pub timestamp: u32,
    /// SSRC.
    pub ssrc: u32,
    /// CSRC list (at most 15).
    pub csrcs: &'a [u32],
    /// Header extension (profile, data whose length is a multiple of 4).
    pub extension: Option<(u16, &'a [u8])>,
}

/// Append a complete RTP packet (header + payload, no padding) to `out`.
pub fn build(h: &RtpHeader<'_>, payload: &[u8], out: &mut Vec<u8>) -> Result<()> {
    if h.payload_type > 127 {
        return Err(Error::InvalidArgument(format!("payload type {} > 127", h.payload_type)));
    }
    if h.csrcs.len() > 15 {
        return Err(Error::InvalidArgument(format!("{} CSRCs, at most 15", h.csrcs.len())));
    }
    if let Some((_, ext)) = h.extension {
        if ext.len() % 4 != 0 || ext.len() / 4 > u16::MAX as usize {
            return Err(Error::InvalidArgument(format!(
                "extension length {} is not a multiple of 4 (or too long)",
                ext.len()
            )));
        }
    }
    let x = if h.extension.is_some() { 0x10 } else { 0 };
    out.push(0x80 | x | h.csrcs.len() as u8);
    out.push((if h.marker { 0x80 } else { 0 }) | h.payload_type);
    out.extend_from_slice(&h.sequence.to_be_bytes());
    out.extend_from_slice(&h.timestamp.to_be_bytes());
    out.extend_from_slice(&h.ssrc.to_be_bytes());
    for c in h.csrcs {
        out.extend_from_slice(&c.to_be_bytes());
    }
    if let Some((profile, ext)) = h.extension {
        out.extend_from_slice(&profile.to_be_bytes());
        out.extend_from_slice(&((ext.len() / 4) as u16).to_be_bytes());
        out.extend_from_slice(ext);
    }
    out.extend_from_slice(payload);
    Ok(())
}

/// An RFC 4733 telephone-event (DTMF) payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DtmfEvent {
    /// Event code: 0-9 digits, 10 '*', 11 '#', 12-15 A-D, others per RFC 4734.
    pub event: u8,
    /// End bit: last packet(s) of the event.
    pub end: bool,
    /// Volume in -dBm0 (0..=63).
    pub volume: u8,
    /// Duration in timestamp units since the event began.
    pub duration: u16,
}

impl DtmfEvent {
    /// Character for DTMF events 0..=15, `None` for other events.
    pub fn digit(&self) -> Option<char> {
        const DIGITS: &[u8; 16] = b"0123456789*#ABCD";
        DIGITS.get(self.event as usize).map(|&c| c as char)
    }
}

/// Parse the first RFC 4733 event block of a telephone-event payload.
pub fn parse_dtmf(payload: &[u8]) -> Result<DtmfEvent> {
    if payload.len() < 4 {
        return rtp_err(format!("telephone-event payload is {} bytes, needs 4", payload.len()));
    }
    Ok(DtmfEvent {
        event: payload[0],
        end: payload[1] & 0x80 != 0,
        volume: payload[1] & 0x3F,
        duration: u16::from_be_bytes([payload[2], payload[3]]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn roundtrip_with_csrc_and_extension() {
        let mut out = Vec::new();
        let h = RtpHeader {
            marker: true,
            payload_type: 111,
            sequence: 65535,
            timestamp: 0xFFFF_FFF0,
            ssrc: 0xDEADBEEF,
            csrcs: &[1, 2, 3],
            extension: Some((0xBEDE, &[1, 2, 3, 4, 5, 6, 7, 8])),
        };
        build(&h, b"hello", &mut out).unwrap();
        let p = parse(&out).unwrap();
        assert!(p.marker);
        assert_eq!(p.payload_type, 111);
        assert_eq!(p.sequence, 65535);
        assert_eq!(p.timestamp, 0xFFFF_FFF0);
        assert_eq!(p.ssrc, 0xDEADBEEF);
        assert_eq!(p.csrcs, vec![1, 2, 3]);
        assert_eq!(p.extension, Some((0xBEDE, &[1u8, 2, 3, 4, 5, 6, 7, 8][..])));
        assert_eq!(p.payload, b"hello");
    }

    #[test]
    fn padding_is_stripped_and_checked() {
        let mut pkt = Vec::new();
        build(&RtpHeader { payload_type: 0, ..Default::default() }, b"abcd", &mut pkt).unwrap();
        pkt[0] |= 0x20;
        pkt.extend_from_slice(&[0, 0, 3]);
        assert_eq!(parse(&pkt).unwrap().payload, b"abcd");
        *pkt.last_mut().unwrap() = 0;
        assert!(parse(&pkt).is_err());
        *pkt.last_mut().unwrap() = 200;
        assert!(parse(&pkt).is_err());
    }

    #[test]
    fn truncated_packets_are_errors() {
        let mut pkt = Vec::new();
        build(
            &RtpHeader { csrcs: &[9, 9], extension: Some((1, &[0; 8])), ..Default::default() },
            b"x",
            &mut pkt,
        )
        .unwrap();
        for n in 0..pkt.len() - 1 {
            // Every prefix that cuts into the header, CSRCs or extension must fail cleanly.
            let r = parse(&pkt[..n]);
            if n < 12 + 8 + 4 + 8 {
                assert!(r.is_err(), "prefix {n} parsed");
            }
        }
        assert!(parse(&[0x40; 12]).is_err(), "version 1 accepted");
    }

    #[test]
    fn dtmf() {
        let e = parse_dtmf(&[11, 0x80 | 10, 0x03, 0x20]).unwrap();
        assert_eq!(e.digit(), Some('#'));
        assert!(e.end);
        assert_eq!(e.volume, 10);
        assert_eq!(e.duration, 800);
        assert!(parse_dtmf(&[1, 2]).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn parse_never_panics(data in proptest::collection::vec(any::<u8>(), 0..80)) {
            if let Ok(p) = parse(&data) {
                prop_assert!(p.payload.len() <= data.len());
            }
        }
    }
}
