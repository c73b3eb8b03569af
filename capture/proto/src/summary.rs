//! Conversions from parsed packets to the wire's [`PacketSummary`] and its parts.

use ntp_wire::{Extension, Mac, PacketSummary};

use crate::ntp::{self, HEADER_LEN, Header};

/// The well-formed extension fields of a header, in order.
pub fn extensions(h: &Header<'_>) -> Vec<Extension> {
    if h.extension_bytes.is_empty() {
        return Vec::new();
    }
    ntp::extensions(h.extension_bytes).map(|(field_type, length)| Extension { field_type, length }).collect()
}

/// The MAC trailer of a header.
pub fn mac(h: &Header<'_>) -> Option<Mac> {
    h.mac.map(|m| Mac { key_id: m.key_id, digest_len: m.digest_len })
}

/// Builds a summary from a parsed header; `first_byte` carries leap, version and mode.
pub fn from_header(len: usize, first_byte: u8, h: &Header<'_>, bad_trailer: bool) -> PacketSummary {
    PacketSummary {
        length: u16::try_from(len).unwrap_or(u16::MAX),
        leap: first_byte >> 6,
        version: (first_byte >> 3) & 7,
        mode: first_byte & 7,
        stratum: h.stratum,
        poll: h.poll,
        precision: h.precision,
        root_delay: h.root_delay,
        root_dispersion: h.root_dispersion,
        reference_id: h.reference_id,
        reference_ts: h.reference_ts,
        origin_ts: h.origin_ts,
        receive_ts: h.receive_ts,
        transmit_ts: h.transmit_ts,
        extensions: extensions(h),
        mac: mac(h),
        bad_trailer,
    }
}

/// Rebuilds a summary from a stored raw 48-byte header.
pub fn from_raw_header(raw: &[u8; HEADER_LEN], len: u16, extensions: Vec<Extension>, mac: Option<Mac>, bad_trailer: bool) -> PacketSummary {
    let be32 = |at: usize| u32::from_be_bytes([raw[at], raw[at + 1], raw[at + 2], raw[at + 3]]);
    let be64 = |at: usize| (u64::from(be32(at)) << 32) | u64::from(be32(at + 4));
    PacketSummary {
        length: len,
        leap: raw[0] >> 6,
        version: (raw[0] >> 3) & 7,
        mode: raw[0] & 7,
        stratum: raw[1],
        poll: raw[2] as i8,
        precision: raw[3] as i8,
        root_delay: be32(4),
        root_dispersion: be32(8),
        reference_id: be32(12),
        reference_ts: be64(16),
        origin_ts: be64(24),
        receive_ts: be64(32),
        transmit_ts: be64(40),
        extensions,
        mac,
        bad_trailer,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_and_parsed_headers_agree() {
        let mut bytes: Vec<u8> = (0u8..48).map(|i| i.wrapping_mul(37) ^ 0x5a).collect();
        bytes[0] = 0xe3; // LI 3, v4, mode 3
        let parsed = ntp::parse(&bytes).unwrap();
        let ntp::Body::Header(h) = parsed.body else { panic!() };
        let raw: [u8; 48] = bytes[..48].try_into().unwrap();
        assert_eq!(from_header(48, bytes[0], &h, false), from_raw_header(&raw, 48, vec![], None, false));
    }
}
