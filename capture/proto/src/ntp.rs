//! NTP message parsing (versions 1–4, all modes) from a UDP payload, without allocation.
//!
//! The parser keeps the raw wire values (the `ntp-parser` habit) and classifies problems:
//! - a *header* problem (too short for the mode, unknown version) rejects the packet;
//! - a *body* problem (extension fields that overrun the packet, bytes that are neither extension
//!   fields nor a MAC, a control/private count larger than the data) keeps the packet, flags it
//!   and reports the reason, so the client is still seen and the defect is still counted.
//!
//! Trailer rules (RFC 7822 §7.5, as ntpd, chrony and Wireshark read them): after the 48-byte
//! header, a remainder of 4 bytes is a crypto-NAK, 20 or 24 bytes is a key id plus an MD5 or
//! SHA-1 digest; anything longer starts with an extension field (type, length ≥ 16, a multiple
//! of 4) and the walk repeats on what follows.

use std::fmt;

/// Length of the fixed header of modes 0–5.
pub const HEADER_LEN: usize = 48;
/// Length of the mode 6 control header.
pub const CONTROL_HEADER_LEN: usize = 12;
/// Length of the mode 7 private header.
pub const PRIVATE_HEADER_LEN: usize = 8;
/// At most this many extension fields are described per packet; more are counted but not listed.
pub const MAX_LISTED_EXTENSIONS: usize = 8;

/// Why a payload was rejected as NTP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum ParseError {
    /// The payload is shorter than the header its mode needs.
    #[error("too short: {len} bytes, mode {mode} needs {need}")]
    TooShort {
        /// Payload length.
        len: usize,
        /// Mode read from the first byte (0 if the payload is empty).
        mode: u8,
        /// Bytes the mode's header needs.
        need: usize,
    },
    /// The version field is not 1–4.
    #[error("unsupported version {0}")]
    BadVersion(u8),
}

/// A problem in the bytes after an otherwise valid header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BodyDefect {
    /// An extension field's length points past the end of the packet.
    ExtensionOverrun,
    /// An extension field's length is below 16 or not a multiple of 4.
    ExtensionBadLength,
    /// Trailing bytes that are neither an extension field nor a MAC.
    TrailingBytes,
    /// A mode 6 count points past the end of the packet.
    ControlCountOverrun,
    /// A mode 7 item count times item size exceeds the data present.
    PrivateItemsOverrun,
}

impl BodyDefect {
    /// A stable snake_case name for counters.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ExtensionOverrun => "extension_overrun",
            Self::ExtensionBadLength => "extension_bad_length",
            Self::TrailingBytes => "trailing_bytes",
            Self::ControlCountOverrun => "control_count_overrun",
            Self::PrivateItemsOverrun => "private_items_overrun",
        }
    }
}

impl fmt::Display for BodyDefect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A parsed NTP message borrowing the payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NtpPacket<'a> {
    /// Leap indicator.
    pub leap: u8,
    /// Version (1–4).
    pub version: u8,
    /// Mode as on the wire (0–7).
    pub mode: u8,
    /// Payload length.
    pub len: usize,
    /// The mode-specific part.
    pub body: Body<'a>,
    /// A defect after the header, if any.
    pub defect: Option<BodyDefect>,
}

/// The mode-specific part of a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Body<'a> {
    /// Modes 0–5: the 48-byte header and its trailer.
    Header(Header<'a>),
    /// Mode 6.
    Control(ControlHeader),
    /// Mode 7.
    Private(PrivateHeader),
}

/// The 48-byte header of modes 0–5 plus its trailer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header<'a> {
    /// Stratum.
    pub stratum: u8,
    /// Poll exponent.
    pub poll: i8,
    /// Precision exponent.
    pub precision: i8,
    /// Root delay, 16.16.
    pub root_delay: u32,
    /// Root dispersion, 16.16.
    pub root_dispersion: u32,
    /// Reference id.
    pub reference_id: u32,
    /// Reference timestamp, 32.32.
    pub reference_ts: u64,
    /// Origin timestamp (T1 echoed by a server), 32.32.
    pub origin_ts: u64,
    /// Receive timestamp, 32.32.
    pub receive_ts: u64,
    /// Transmit timestamp, 32.32.
    pub transmit_ts: u64,
    /// The well-formed extension fields, as raw bytes (walk them with [`extensions`]).
    pub extension_bytes: &'a [u8],
    /// The MAC trailer, if any.
    pub mac: Option<MacTrailer>,
}

/// A legacy MAC: key id and digest length (0 for a crypto-NAK).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MacTrailer {
    /// Key id.
    pub key_id: u32,
    /// Digest length.
    pub digest_len: u8,
}

/// Mode 6 header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ControlHeader {
    /// Response bit.
    pub response: bool,
    /// Error bit.
    pub error: bool,
    /// More bit.
    pub more: bool,
    /// Opcode.
    pub opcode: u8,
    /// Sequence.
    pub sequence: u16,
    /// Status.
    pub status: u16,
    /// Association id.
    pub association_id: u16,
    /// Offset.
    pub offset: u16,
    /// Count of data bytes.
    pub count: u16,
}

/// Mode 7 header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrivateHeader {
    /// Response bit.
    pub response: bool,
    /// More bit.
    pub more: bool,
    /// Auth bit.
    pub auth: bool,
    /// Sequence.
    pub sequence: u8,
    /// Implementation.
    pub implementation: u8,
    /// Request code.
    pub request_code: u8,
    /// Error code.
    pub error: u8,
    /// Number of items.
    pub items: u16,
    /// Item size.
    pub item_size: u16,
}

/// Parses one NTP message.
pub fn parse(payload: &[u8]) -> Result<NtpPacket<'_>, ParseError> {
    let Some(&first) = payload.first() else {
        return Err(ParseError::TooShort { len: 0, mode: 0, need: HEADER_LEN });
    };
    let version = (first >> 3) & 0x7;
    let mode = first & 0x7;
    // In mode 7 the top two bits are the response and more flags, not a leap indicator.
    let leap = if mode == 7 { 0 } else { first >> 6 };
    if !(1..=4).contains(&version) {
        return Err(ParseError::BadVersion(version));
    }
    let need = match mode {
        6 => CONTROL_HEADER_LEN,
        7 => PRIVATE_HEADER_LEN,
        _ => HEADER_LEN,
    };
    if payload.len() < need {
        return Err(ParseError::TooShort { len: payload.len(), mode, need });
    }
    let (body, defect) = match mode {
        6 => parse_control(payload),
        7 => parse_private(payload),
        _ => parse_header(payload),
    };
    Ok(NtpPacket { leap, version, mode, len: payload.len(), body, defect })
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn be64(b: &[u8], at: usize) -> u64 {
    (u64::from(be32(b, at)) << 32) | u64::from(be32(b, at + 4))
}

/// Caller guarantees `p.len() >= HEADER_LEN`.
fn parse_header(p: &[u8]) -> (Body<'_>, Option<BodyDefect>) {
    let rest = &p[HEADER_LEN..];
    let (ext_len, mac, defect) = walk_trailer(rest);
    let header = Header {
        stratum: p[1],
        poll: p[2] as i8,
        precision: p[3] as i8,
        root_delay: be32(p, 4),
        root_dispersion: be32(p, 8),
        reference_id: be32(p, 12),
        reference_ts: be64(p, 16),
        origin_ts: be64(p, 24),
        receive_ts: be64(p, 32),
        transmit_ts: be64(p, 40),
        extension_bytes: &rest[..ext_len],
        mac,
    };
    (Body::Header(header), defect)
}

/// Walks extension fields and the MAC; returns the length of the well-formed extension fields,
/// the MAC, and the first defect.
fn walk_trailer(rest: &[u8]) -> (usize, Option<MacTrailer>, Option<BodyDefect>) {
    let mut off = 0;
    loop {
        let remaining = rest.len() - off;
        match remaining {
            0 => return (off, None, None),
            4 | 20 | 24 => {
                let mac = MacTrailer { key_id: be32(rest, off), digest_len: (remaining - 4) as u8 };
                return (off, Some(mac), None);
            }
            r if r < 16 => return (off, None, Some(BodyDefect::TrailingBytes)),
            _ => {
                let len = usize::from(be16(rest, off + 2));
                if len < 16 || len % 4 != 0 {
                    return (off, None, Some(BodyDefect::ExtensionBadLength));
                }
                if len > remaining {
                    return (off, None, Some(BodyDefect::ExtensionOverrun));
                }
                off += len;
            }
        }
    }
}

/// Iterates over well-formed extension fields as `(type, length)`.
pub fn extensions(bytes: &[u8]) -> impl Iterator<Item = (u16, u16)> + '_ {
    let mut off = 0;
    std::iter::from_fn(move || {
        if off + 4 > bytes.len() {
            return None;
        }
        let ty = be16(bytes, off);
        let len = be16(bytes, off + 2);
        if len < 4 {
            return None;
        }
        off += usize::from(len);
        Some((ty, len))
    })
}

/// Caller guarantees `p.len() >= CONTROL_HEADER_LEN`.
fn parse_control(p: &[u8]) -> (Body<'_>, Option<BodyDefect>) {
    let h = ControlHeader {
        response: p[1] & 0x80 != 0,
        error: p[1] & 0x40 != 0,
        more: p[1] & 0x20 != 0,
        opcode: p[1] & 0x1f,
        sequence: be16(p, 2),
        status: be16(p, 4),
        association_id: be16(p, 6),
        offset: be16(p, 8),
        count: be16(p, 10),
    };
    let defect = (CONTROL_HEADER_LEN + usize::from(h.count) > p.len()).then_some(BodyDefect::ControlCountOverrun);
    (Body::Control(h), defect)
}

/// Caller guarantees `p.len() >= PRIVATE_HEADER_LEN`.
fn parse_private(p: &[u8]) -> (Body<'_>, Option<BodyDefect>) {
    let h = PrivateHeader {
        response: p[0] & 0x80 != 0,
        more: p[0] & 0x40 != 0,
        auth: p[1] & 0x80 != 0,
        sequence: p[1] & 0x7f,
        implementation: p[2],
        request_code: p[3],
        error: p[4] >> 4,
        items: be16(p, 4) & 0x0fff,
        item_size: be16(p, 6) & 0x0fff,
    };
    let data = usize::from(h.items) * usize::from(h.item_size);
    let defect = (PRIVATE_HEADER_LEN + data > p.len()).then_some(BodyDefect::PrivateItemsOverrun);
    (Body::Private(h), defect)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    /// zeek-ntp.pcap frame 1 (client request) as tshark dumped it.
    const CLIENT_REQUEST: &str = "230206ea00000bd90000063055c7d663e09ab55c12dcc914e09ab5540c60c23be09ab55413a64a3be09ab59607050baa";

    #[test]
    fn parses_a_captured_client_request() {
        let bytes = hex(CLIENT_REQUEST);
        let p = parse(&bytes).unwrap();
        assert_eq!((p.leap, p.version, p.mode, p.len), (0, 4, 3, 48));
        let Body::Header(h) = p.body else { panic!("not a header: {p:?}") };
        assert_eq!((h.stratum, h.poll, h.precision), (2, 6, -22));
        assert_eq!((h.root_delay, h.root_dispersion, h.reference_id), (3033, 1584, 0x55c7_d663));
        assert_eq!(h.transmit_ts, 0xe09a_b596_0705_0baa);
        assert_eq!(h.mac, None);
        assert_eq!(p.defect, None);
    }

    #[test]
    fn reads_macs_and_crypto_nak() {
        let mut bytes = hex(CLIENT_REQUEST);
        bytes.extend_from_slice(&[0, 0, 0, 8]);
        bytes.extend_from_slice(&[0xaa; 20]);
        let p = parse(&bytes).unwrap();
        let Body::Header(h) = p.body else { panic!() };
        assert_eq!(h.mac, Some(MacTrailer { key_id: 8, digest_len: 20 }));
        bytes.truncate(52);
        let Body::Header(h) = parse(&bytes).unwrap().body else { panic!() };
        assert_eq!(h.mac, Some(MacTrailer { key_id: 8, digest_len: 0 }));
    }

    #[test]
    fn walks_extension_fields_then_mac() {
        let mut bytes = hex(CLIENT_REQUEST);
        // Unique identifier, 36 bytes; then a 20-byte MAC.
        bytes.extend_from_slice(&[0x01, 0x04, 0x00, 0x24]);
        bytes.extend_from_slice(&[7; 32]);
        bytes.extend_from_slice(&[0, 0, 0, 1]);
        bytes.extend_from_slice(&[9; 16]);
        let p = parse(&bytes).unwrap();
        let Body::Header(h) = p.body else { panic!() };
        assert_eq!(extensions(h.extension_bytes).collect::<Vec<_>>(), vec![(0x0104, 36)]);
        assert_eq!(h.mac, Some(MacTrailer { key_id: 1, digest_len: 16 }));
        assert_eq!(p.defect, None);
    }

    #[test]
    fn flags_overrunning_and_bad_extensions_but_keeps_the_header() {
        let mut bytes = hex(CLIENT_REQUEST);
        bytes.extend_from_slice(&[0x01, 0x04, 0x01, 0x00]);
        bytes.extend_from_slice(&[0; 28]);
        let p = parse(&bytes).unwrap();
        assert_eq!(p.defect, Some(BodyDefect::ExtensionOverrun));
        assert!(matches!(p.body, Body::Header(h) if h.transmit_ts == 0xe09a_b596_0705_0baa));

        bytes.truncate(48);
        bytes.extend_from_slice(&[0x01, 0x04, 0x00, 0x11]);
        bytes.extend_from_slice(&[0; 28]);
        assert_eq!(parse(&bytes).unwrap().defect, Some(BodyDefect::ExtensionBadLength));

        bytes.truncate(50);
        assert_eq!(parse(&bytes).unwrap().defect, Some(BodyDefect::TrailingBytes));
    }

    #[test]
    fn rejects_short_and_unknown_versions() {
        assert_eq!(parse(&[]), Err(ParseError::TooShort { len: 0, mode: 0, need: 48 }));
        assert_eq!(parse(&[0x23; 47]), Err(ParseError::TooShort { len: 47, mode: 3, need: 48 }));
        assert_eq!(parse(&[0x2b; 48]), Err(ParseError::BadVersion(5)));
        assert_eq!(parse(&[0x03; 48]), Err(ParseError::BadVersion(0)));
        // Mode 6 needs 12 bytes, mode 7 needs 8.
        assert_eq!(parse(&[0x16; 11]), Err(ParseError::TooShort { len: 11, mode: 6, need: 12 }));
        assert!(parse(&[0x17; 8]).is_ok());
    }

    #[test]
    fn control_and_private_headers() {
        // zeek-ntpmode67.pcap: ntpq READVAR request, 12 bytes.
        let bytes = hex("160200020000000000000000");
        let p = parse(&bytes).unwrap();
        assert_eq!(p.mode, 6);
        let Body::Control(c) = p.body else { panic!() };
        assert_eq!((c.response, c.opcode, c.sequence, c.count), (false, 2, 2, 0));
        // A MON_GETLIST_1 request: implementation 3, request code 42.
        let mut req = hex("1700032a00000000");
        req.resize(192, 0);
        let p = parse(&req).unwrap();
        let Body::Private(m) = p.body else { panic!() };
        assert_eq!((m.implementation, m.request_code, m.response), (3, 42, false));
        // A response announcing more items than it carries.
        let bytes = hex("9700032a0005004800000000");
        let p = parse(&bytes).unwrap();
        assert_eq!(p.defect, Some(BodyDefect::PrivateItemsOverrun));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            if let Ok(p) = parse(&bytes) {
                prop_assert_eq!(p.len, bytes.len());
                if let Body::Header(h) = p.body {
                    let total: usize = extensions(h.extension_bytes).map(|(_, l)| usize::from(l)).sum();
                    prop_assert_eq!(total, h.extension_bytes.len());
                }
            }
        }

        #[test]
        fn any_version_1_to_4_header_parses(first in any::<u8>(), rest in proptest::collection::vec(any::<u8>(), 47..48)) {
            let version = (first >> 3) & 7;
            let mut bytes = vec![first];
            bytes.extend(rest);
            prop_assert_eq!(parse(&bytes).is_ok(), (1..=4).contains(&version));
        }
    }
}
