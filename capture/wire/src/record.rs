//! Session and observation records: what the capture agent reports about each NTP client.
//!
//! A [`Session`] is one client request (mode 3) and, when it was answered, the server response
//! (mode 4) that echoed its transmit timestamp. An [`Observation`] is any other NTP packet worth
//! keeping per client: symmetric peers (modes 1/2), broadcast (5), control queries (6) and
//! private/monlist queries (7).
//!
//! NTP fields are kept raw (timestamps as 32.32 fixed point, root delay and dispersion as 16.16),
//! so consumers can recompute anything; the derived timings are separate optional fields.

use std::{fmt::Write as _, net::IpAddr};

use serde::{Deserialize, Serialize};

use crate::time::{ntp_diff_seconds, ntp_short_to_seconds};

/// Schema version of the records in this crate; bumped only for incompatible changes.
pub const SCHEMA_VERSION: u16 = 1;

/// One record, tagged by `kind` so a stream can carry both sorts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Record {
    /// A client request and its response, or a request left unanswered.
    Session(Session),
    /// A packet that is not part of a client/server session.
    Observation(Observation),
}

/// Whether a request was answered within the pairing timeout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionOutcome {
    /// A response echoed the request's transmit timestamp (or, interleaved, its receive timestamp).
    Answered,
    /// No matching response was seen within the timeout.
    Unanswered,
}

/// A client request (mode 3) paired with the server's response (mode 4), as seen on the wire.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Session {
    /// Deterministic identifier: a stable hash of both endpoints, the request transmit
    /// timestamp and the request capture time. The same capture always yields the same ids.
    pub id: u64,
    /// Answered or unanswered.
    pub outcome: SessionOutcome,
    /// The client's address (source of the request).
    #[serde(with = "ip_text")]
    pub client_ip: IpAddr,
    /// The client's UDP port.
    pub client_port: u16,
    /// The server's address (destination of the request).
    #[serde(with = "ip_text")]
    pub server_ip: IpAddr,
    /// The server's UDP port.
    pub server_port: u16,
    /// Outer 802.1Q VLAN id of the request frame, if tagged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vlan_id: Option<u16>,
    /// Inner VLAN id when the request frame was double tagged (QinQ).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inner_vlan_id: Option<u16>,
    /// Capture time of the (first) request, Unix nanoseconds.
    pub request_time_ns: i64,
    /// Capture time of the response, Unix nanoseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_time_ns: Option<i64>,
    /// The client's request.
    pub request: PacketSummary,
    /// The server's response, when answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<PacketSummary>,
    /// How many identical requests (same transmit timestamp) were retransmitted before the answer.
    #[serde(default)]
    pub retransmits: u32,
    /// The request's transmit timestamp (T1) is far from its capture time: the client randomises
    /// T1 (chrony, ntpd-rs) or its clock is badly off, so `T2 - T1` is not a latency.
    #[serde(default)]
    pub t1_randomized: bool,
    /// The response was an interleaved-mode reply (RFC 9769): its transmit timestamp belongs to
    /// the previous response, so `T3 - T2` is not this exchange's processing time.
    #[serde(default)]
    pub interleaved: bool,
    /// `T2 - T1` in seconds; absent when unanswered or when T1 is implausible.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_to_server_latency_s: Option<f64>,
    /// `T3 - T2` in seconds, from the server's own timestamps; absent for interleaved replies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_processing_time_s: Option<f64>,
    /// Response capture time minus request capture time, in seconds: the turnaround on the wire.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_process_time_s: Option<f64>,
}

impl Session {
    /// The kiss code of a kiss-o'-death response (stratum 0), e.g. `RATE`, `DENY`.
    pub fn kiss_code(&self) -> Option<String> {
        self.response.as_ref().and_then(PacketSummary::kiss_code)
    }

    /// How far the server's own timestamps are from the wire: total turnaround minus the
    /// server-reported processing time, in seconds.
    pub fn timestamp_gap_s(&self) -> Option<f64> {
        Some(self.total_process_time_s? - self.server_processing_time_s?)
    }

    /// Extension fields carry NTS (RFC 8915) in the request or response.
    pub fn uses_nts(&self) -> bool {
        self.request.uses_nts() || self.response.as_ref().is_some_and(PacketSummary::uses_nts)
    }
}

/// The header of one NTP packet of modes 0–5, with its authentication trailer described.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PacketSummary {
    /// NTP payload length in bytes (the UDP payload).
    pub length: u16,
    /// Leap indicator (0–3).
    pub leap: u8,
    /// NTP version (1–4).
    pub version: u8,
    /// NTP mode (0–7).
    pub mode: u8,
    /// Stratum (0 = kiss-o'-death / unspecified, 1 = primary, 16 = unsynchronised).
    pub stratum: u8,
    /// Poll exponent (log2 seconds).
    pub poll: i8,
    /// Precision exponent (log2 seconds).
    pub precision: i8,
    /// Root delay, raw NTP short format (16.16 seconds).
    pub root_delay: u32,
    /// Root dispersion, raw NTP short format (16.16 seconds).
    pub root_dispersion: u32,
    /// Reference id, raw big-endian 32 bits.
    pub reference_id: u32,
    /// Reference timestamp, raw 32.32.
    pub reference_ts: u64,
    /// Origin timestamp, raw 32.32.
    pub origin_ts: u64,
    /// Receive timestamp, raw 32.32.
    pub receive_ts: u64,
    /// Transmit timestamp, raw 32.32.
    pub transmit_ts: u64,
    /// RFC 7822 extension fields, in packet order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extensions: Vec<Extension>,
    /// Legacy symmetric-key MAC (RFC 5905) or crypto-NAK (key id only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<Mac>,
    /// Bytes after the header that are neither extension fields nor a MAC.
    #[serde(default, skip_serializing_if = "is_false")]
    pub bad_trailer: bool,
}

impl PacketSummary {
    /// Root delay in seconds.
    pub fn root_delay_s(&self) -> f64 {
        ntp_short_to_seconds(self.root_delay)
    }

    /// Root dispersion in seconds.
    pub fn root_dispersion_s(&self) -> f64 {
        ntp_short_to_seconds(self.root_dispersion)
    }

    /// The kiss code when this is a kiss-o'-death packet (mode 4 or 2, stratum 0).
    pub fn kiss_code(&self) -> Option<String> {
        if self.stratum == 0 && matches!(self.mode, 2 | 4) {
            Some(ascii_id(self.reference_id))
        } else {
            None
        }
    }

    /// The reference id as operators read it: ASCII for stratum 0 (kiss code) and 1 (reference
    /// clock), and for the unsynchronised stratum 16 when it is printable (`INIT`); otherwise a
    /// dotted quad (an IPv4 address, or the first 32 bits of the MD5 hash of an IPv6 address).
    pub fn reference_id_text(&self) -> String {
        format_reference_id(self.stratum, self.reference_id)
    }

    /// Whether any extension field is one of the NTS types of RFC 8915.
    pub fn uses_nts(&self) -> bool {
        self.extensions.iter().any(|e| e.nts_name().is_some())
    }

    /// `receive - origin` and `transmit - receive` in seconds (T2 - T1, T3 - T2 of a response).
    pub fn server_intervals_s(&self) -> (f64, f64) {
        (
            ntp_diff_seconds(self.receive_ts, self.origin_ts),
            ntp_diff_seconds(self.transmit_ts, self.receive_ts),
        )
    }
}

/// Formats a reference id for display; see [`PacketSummary::reference_id_text`].
pub fn format_reference_id(stratum: u8, refid: u32) -> String {
    let bytes = refid.to_be_bytes();
    let printable = bytes.iter().all(|b| *b == 0 || b.is_ascii_graphic() || *b == b' ');
    if stratum <= 1 || (stratum >= 16 && printable && bytes[0].is_ascii_uppercase()) {
        ascii_id(refid)
    } else {
        format!("{}.{}.{}.{}", bytes[0], bytes[1], bytes[2], bytes[3])
    }
}

/// Four reference-id bytes as ASCII, trailing NULs and spaces removed, other non-printable
/// bytes escaped as `\xNN`.
fn ascii_id(refid: u32) -> String {
    let bytes = refid.to_be_bytes();
    let end = bytes.iter().rposition(|b| *b != 0 && *b != b' ').map_or(0, |i| i + 1);
    let mut out = String::with_capacity(4);
    for b in &bytes[..end] {
        if b.is_ascii_graphic() || *b == b' ' {
            out.push(char::from(*b));
        } else {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out
}

/// One RFC 7822 extension field: its type and total length in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extension {
    /// Field type (e.g. 0x0104 NTS unique identifier).
    pub field_type: u16,
    /// Total field length including its 4-byte header.
    pub length: u16,
}

impl Extension {
    /// The RFC 8915 name of an NTS extension field type.
    pub fn nts_name(&self) -> Option<&'static str> {
        match self.field_type {
            0x0104 => Some("unique_identifier"),
            0x0204 => Some("nts_cookie"),
            0x0304 => Some("nts_cookie_placeholder"),
            0x0404 => Some("nts_authenticator"),
            _ => None,
        }
    }
}

/// A legacy MAC trailer: key id and digest length (16 = MD5, 20 = SHA-1, 0 = crypto-NAK).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mac {
    /// Key identifier (0 with no digest is a crypto-NAK).
    pub key_id: u32,
    /// Digest length in bytes.
    pub digest_len: u8,
}

/// An NTP packet that is not part of a client/server session: symmetric (1, 2), broadcast (5),
/// control (6), private (7) or reserved (0) mode.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Observation {
    /// Deterministic identifier: a stable hash of the endpoints, capture time and packet bytes.
    pub id: u64,
    /// Capture time, Unix nanoseconds.
    pub time_ns: i64,
    /// The party the observation is about: the sender of a request, symmetric-active or
    /// broadcast packet, or the receiver of a response or symmetric-passive packet.
    #[serde(with = "ip_text")]
    pub client_ip: IpAddr,
    /// The client's UDP port.
    pub client_port: u16,
    /// The other party.
    #[serde(with = "ip_text")]
    pub server_ip: IpAddr,
    /// The other party's UDP port.
    pub server_port: u16,
    /// True when the packet travelled from the client to the server.
    pub from_client: bool,
    /// Outer VLAN id, if tagged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vlan_id: Option<u16>,
    /// Inner VLAN id (QinQ).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inner_vlan_id: Option<u16>,
    /// NTP payload length.
    pub length: u16,
    /// Leap indicator.
    pub leap: u8,
    /// NTP version.
    pub version: u8,
    /// NTP mode.
    pub mode: u8,
    /// The 48-byte header for modes 0–5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<PacketSummary>,
    /// The control header for mode 6.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control: Option<Control>,
    /// The private header for mode 7.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private: Option<Private>,
}

/// Mode 6 control message header (RFC 9327).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Control {
    /// Response bit.
    pub response: bool,
    /// Error bit.
    pub error: bool,
    /// More bit (further fragments follow).
    pub more: bool,
    /// Opcode (1 READSTAT, 2 READVAR, 3 WRITEVAR, …, 10 READ_MRU, 12 REQ_NONCE).
    pub opcode: u8,
    /// Sequence number.
    pub sequence: u16,
    /// Status word.
    pub status: u16,
    /// Association id.
    pub association_id: u16,
    /// Offset of this fragment's data.
    pub offset: u16,
    /// Count of data bytes.
    pub count: u16,
}

/// Mode 7 private (ntpdc) message header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Private {
    /// Response bit.
    pub response: bool,
    /// More bit.
    pub more: bool,
    /// Authenticated bit.
    pub auth: bool,
    /// Sequence number (0–127).
    pub sequence: u8,
    /// Implementation number (2 = XNTPD, 3 = XNTPD_OLD, 0 = universal).
    pub implementation: u8,
    /// Request code (20 MON_GETLIST, 42 MON_GETLIST_1, …).
    pub request_code: u8,
    /// Error code (responses).
    pub error: u8,
    /// Number of data items.
    pub items: u16,
    /// Size of one data item.
    pub item_size: u16,
}

impl Private {
    /// `MON_GETLIST` or `MON_GETLIST_1`: the monlist query used for amplification attacks.
    pub fn is_monlist(&self) -> bool {
        matches!(self.request_code, 20 | 42)
    }
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if passes a reference
fn is_false(v: &bool) -> bool {
    !*v
}

/// IP addresses as their canonical text, so records read the same in every language.
mod ip_text {
    use std::net::IpAddr;

    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(ip: &IpAddr, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(ip)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<IpAddr, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        text.parse().map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_ids_read_like_ntpq() {
        assert_eq!(format_reference_id(1, u32::from_be_bytes(*b"GPS\0")), "GPS");
        assert_eq!(format_reference_id(0, u32::from_be_bytes(*b"RATE")), "RATE");
        assert_eq!(format_reference_id(16, u32::from_be_bytes(*b"INIT")), "INIT");
        assert_eq!(format_reference_id(2, 0x55c7_d663), "85.199.214.99");
        assert_eq!(format_reference_id(0, 0), "");
        assert_eq!(format_reference_id(1, 0x4750_5301), "GPS\\x01");
    }

    #[test]
    fn kiss_codes_only_on_stratum_zero_replies() {
        let mut p = PacketSummary {
            mode: 4,
            stratum: 0,
            reference_id: u32::from_be_bytes(*b"DENY"),
            ..PacketSummary::default()
        };
        assert_eq!(p.kiss_code().as_deref(), Some("DENY"));
        p.mode = 3;
        assert_eq!(p.kiss_code(), None);
    }
}
