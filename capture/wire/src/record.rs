//! Session and observation records: what the capture agent reports about each NTP client.
//!
//! A [`Session`] is one client request (mode 3) and, when it was answered, the server response
//! (mode 4) that echoed its transmit timestamp. An [`Observation`] is any other NTP packet worth
//! keeping per client: symmetric peers (modes 1/2), broadcast (5), control queries (6) and
//! private/monlist queries (7).
//!
//! NTP fields are kept raw (timestamps as 32.32 fixed point, root delay and dispersion as 16.16),
//! so consumers can recompute anything; the derived timings are separate optional fields.
//!
//! **Field names on the wire are short** (`ci` client address, `tq`/`tr` request/response capture
//! time, `q`/`r` request/response header, `org`/`rec`/`xmt` the NTP timestamps, …; each field's
//! `rename` is its key) and zero or false values are left out. The messages stay named maps
//! (never positional, so the schema can evolve), but at about 250 bytes a session instead of 630
//! with the Rust names, which halves encoding time and bus volume (docs/performance.md).
//! Every renamed field and tag value keeps its earlier name as an `alias`, because agents that
//! wrote those names may still be publishing (see the compatibility rules in the crate docs).

use std::{fmt::Write as _, net::IpAddr};

use serde::{Deserialize, Serialize};

use crate::time::{ntp_diff_seconds, ntp_short_to_seconds};

/// Schema version of the records in this crate; bumped only for incompatible changes.
pub const SCHEMA_VERSION: u16 = 1;

/// One record, tagged by `k` (`s` session, `o` observation) so a stream can carry both sorts.
///
/// Serialised as an internally tagged map (the tag first). Deserialised by hand (below), reading
/// the tag and then the fields straight from the decoder; serde's derived internally tagged
/// decoding buffers every record into an intermediate tree first, and made decoding about half
/// as fast as encoding. A map whose tag is not its first key is refused here and decoded by the
/// slower paths of [`crate::batch::decode`].
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "k")]
pub enum Record {
    /// A client request and its response, or a request left unanswered.
    #[serde(rename = "s", alias = "session")]
    Session(Session),
    /// A packet that is not part of a client/server session.
    #[serde(rename = "o", alias = "observation")]
    Observation(Observation),
}

/// The fast path's complaint when a record's first key is not its tag.
pub(crate) const TAG_NOT_FIRST: &str = "the record's tag `k` is not its first key";

/// The tag's key: `k`, or `kind` as the first agents wrote it.
#[derive(Deserialize)]
#[serde(field_identifier)]
enum RecordKey {
    #[serde(rename = "k", alias = "kind")]
    Tag,
    #[serde(other)]
    Other,
}

/// The tag's value.
#[derive(Deserialize)]
enum RecordKind {
    #[serde(rename = "s", alias = "session")]
    Session,
    #[serde(rename = "o", alias = "observation")]
    Observation,
}

impl<'de> Deserialize<'de> for Record {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Tagged;
        impl<'de> serde::de::Visitor<'de> for Tagged {
            type Value = Record;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a record: a map whose first key is its tag `k`")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Record, A::Error> {
                match map.next_key::<RecordKey>()? {
                    Some(RecordKey::Tag) => {}
                    _ => return Err(serde::de::Error::custom(TAG_NOT_FIRST)),
                }
                let kind: RecordKind = map.next_value()?;
                let fields = serde::de::value::MapAccessDeserializer::new(map);
                match kind {
                    RecordKind::Session => Session::deserialize(fields).map(Record::Session),
                    RecordKind::Observation => Observation::deserialize(fields).map(Record::Observation),
                }
            }
        }
        d.deserialize_map(Tagged)
    }
}

/// Whether a request was answered within the pairing timeout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SessionOutcome {
    /// A response echoed the request's transmit timestamp (or, interleaved, its receive timestamp).
    #[serde(rename = "a", alias = "answered")]
    Answered,
    /// No matching response was seen within the timeout.
    #[serde(rename = "u", alias = "unanswered")]
    Unanswered,
}

/// A client request (mode 3) paired with the server's response (mode 4), as seen on the wire.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Session {
    /// Deterministic identifier: a stable hash of both endpoints, the request transmit
    /// timestamp and the request capture time. The same capture always yields the same ids.
    #[serde(rename = "id")]
    pub id: u64,
    /// Answered or unanswered.
    #[serde(rename = "o", alias = "outcome")]
    pub outcome: SessionOutcome,
    /// The client's address (source of the request).
    #[serde(rename = "ci", alias = "client_ip", with = "ip_text")]
    pub client_ip: IpAddr,
    /// The client's UDP port.
    #[serde(rename = "cp", alias = "client_port")]
    pub client_port: u16,
    /// The server's address (destination of the request).
    #[serde(rename = "si", alias = "server_ip", with = "ip_text")]
    pub server_ip: IpAddr,
    /// The server's UDP port.
    #[serde(rename = "sp", alias = "server_port")]
    pub server_port: u16,
    /// Outer 802.1Q VLAN id of the request frame, if tagged.
    #[serde(rename = "vl", alias = "vlan_id", default, skip_serializing_if = "Option::is_none")]
    pub vlan_id: Option<u16>,
    /// Inner VLAN id when the request frame was double tagged (QinQ).
    #[serde(rename = "vi", alias = "inner_vlan_id", default, skip_serializing_if = "Option::is_none")]
    pub inner_vlan_id: Option<u16>,
    /// Capture time of the (first) request, Unix nanoseconds.
    #[serde(rename = "tq", alias = "request_time_ns")]
    pub request_time_ns: i64,
    /// Capture time of the response, Unix nanoseconds.
    #[serde(rename = "tr", alias = "response_time_ns", default, skip_serializing_if = "Option::is_none")]
    pub response_time_ns: Option<i64>,
    /// The client's request.
    #[serde(rename = "q", alias = "request")]
    pub request: PacketSummary,
    /// The server's response, when answered.
    #[serde(rename = "r", alias = "response", default, skip_serializing_if = "Option::is_none")]
    pub response: Option<PacketSummary>,
    /// How many identical requests (same transmit timestamp) were retransmitted before the answer.
    #[serde(rename = "rt", alias = "retransmits", default, skip_serializing_if = "is_zero_u32")]
    pub retransmits: u32,
    /// The request's transmit timestamp (T1) is far from its capture time: the client randomises
    /// T1 (chrony, ntpd-rs) or its clock is badly off, so `T2 - T1` is not a latency.
    #[serde(rename = "t1r", alias = "t1_randomized", default, skip_serializing_if = "is_false")]
    pub t1_randomized: bool,
    /// The response was an interleaved-mode reply (RFC 9769): its transmit timestamp belongs to
    /// the previous response, so `T3 - T2` is not this exchange's processing time.
    #[serde(rename = "il", alias = "interleaved", default, skip_serializing_if = "is_false")]
    pub interleaved: bool,
    /// `T2 - T1` in seconds; absent when unanswered or when T1 is implausible.
    #[serde(rename = "lat", alias = "client_to_server_latency_s", default, skip_serializing_if = "Option::is_none")]
    pub client_to_server_latency_s: Option<f64>,
    /// `T3 - T2` in seconds, from the server's own timestamps; absent for interleaved replies.
    #[serde(rename = "prc", alias = "server_processing_time_s", default, skip_serializing_if = "Option::is_none")]
    pub server_processing_time_s: Option<f64>,
    /// Response capture time minus request capture time, in seconds: the turnaround on the wire.
    #[serde(rename = "tot", alias = "total_process_time_s", default, skip_serializing_if = "Option::is_none")]
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
    #[serde(rename = "n", alias = "length")]
    pub length: u16,
    /// Leap indicator (0–3).
    #[serde(rename = "li", alias = "leap", default, skip_serializing_if = "is_zero_u8")]
    pub leap: u8,
    /// NTP version (1–4).
    #[serde(rename = "v", alias = "version")]
    pub version: u8,
    /// NTP mode (0–7).
    #[serde(rename = "m", alias = "mode")]
    pub mode: u8,
    /// Stratum (0 = kiss-o'-death / unspecified, 1 = primary, 16 = unsynchronised).
    #[serde(rename = "st", alias = "stratum", default, skip_serializing_if = "is_zero_u8")]
    pub stratum: u8,
    /// Poll exponent (log2 seconds).
    #[serde(rename = "p", alias = "poll")]
    pub poll: i8,
    /// Precision exponent (log2 seconds).
    #[serde(rename = "pr", alias = "precision")]
    pub precision: i8,
    /// Root delay, raw NTP short format (16.16 seconds).
    #[serde(rename = "rd", alias = "root_delay", default, skip_serializing_if = "is_zero_u32")]
    pub root_delay: u32,
    /// Root dispersion, raw NTP short format (16.16 seconds).
    #[serde(rename = "rs", alias = "root_dispersion", default, skip_serializing_if = "is_zero_u32")]
    pub root_dispersion: u32,
    /// Reference id, raw big-endian 32 bits.
    #[serde(rename = "ri", alias = "reference_id", default, skip_serializing_if = "is_zero_u32")]
    pub reference_id: u32,
    /// Reference timestamp, raw 32.32.
    #[serde(rename = "ref", alias = "reference_ts", default, skip_serializing_if = "is_zero_u64")]
    pub reference_ts: u64,
    /// Origin timestamp, raw 32.32.
    #[serde(rename = "org", alias = "origin_ts", default, skip_serializing_if = "is_zero_u64")]
    pub origin_ts: u64,
    /// Receive timestamp, raw 32.32.
    #[serde(rename = "rec", alias = "receive_ts", default, skip_serializing_if = "is_zero_u64")]
    pub receive_ts: u64,
    /// Transmit timestamp, raw 32.32.
    #[serde(rename = "xmt", alias = "transmit_ts", default, skip_serializing_if = "is_zero_u64")]
    pub transmit_ts: u64,
    /// RFC 7822 extension fields, in packet order.
    #[serde(rename = "ef", alias = "extensions", default, skip_serializing_if = "Vec::is_empty")]
    pub extensions: Vec<Extension>,
    /// Legacy symmetric-key MAC (RFC 5905) or crypto-NAK (key id only).
    #[serde(rename = "mac", default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<Mac>,
    /// Bytes after the header that are neither extension fields nor a MAC.
    #[serde(rename = "bad", alias = "bad_trailer", default, skip_serializing_if = "is_false")]
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
        if self.stratum == 0 && matches!(self.mode, 2 | 4) { Some(ascii_id(self.reference_id)) } else { None }
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
        (ntp_diff_seconds(self.receive_ts, self.origin_ts), ntp_diff_seconds(self.transmit_ts, self.receive_ts))
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
    #[serde(rename = "t", alias = "field_type")]
    pub field_type: u16,
    /// Total field length including its 4-byte header.
    #[serde(rename = "l", alias = "length")]
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
    #[serde(rename = "k", alias = "key_id")]
    pub key_id: u32,
    /// Digest length in bytes.
    #[serde(rename = "d", alias = "digest_len")]
    pub digest_len: u8,
}

/// An NTP packet that is not part of a client/server session: symmetric (1, 2), broadcast (5),
/// control (6), private (7) or reserved (0) mode.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Observation {
    /// Deterministic identifier: a stable hash of the endpoints, capture time and packet bytes.
    #[serde(rename = "id")]
    pub id: u64,
    /// Capture time, Unix nanoseconds.
    #[serde(rename = "t", alias = "time_ns")]
    pub time_ns: i64,
    /// The party the observation is about: the sender of a request, symmetric-active or
    /// broadcast packet, or the receiver of a response or symmetric-passive packet.
    #[serde(rename = "ci", alias = "client_ip", with = "ip_text")]
    pub client_ip: IpAddr,
    /// The client's UDP port.
    #[serde(rename = "cp", alias = "client_port")]
    pub client_port: u16,
    /// The other party.
    #[serde(rename = "si", alias = "server_ip", with = "ip_text")]
    pub server_ip: IpAddr,
    /// The other party's UDP port.
    #[serde(rename = "sp", alias = "server_port")]
    pub server_port: u16,
    /// True when the packet travelled from the client to the server.
    #[serde(rename = "fc", alias = "from_client")]
    pub from_client: bool,
    /// Outer VLAN id, if tagged.
    #[serde(rename = "vl", alias = "vlan_id", default, skip_serializing_if = "Option::is_none")]
    pub vlan_id: Option<u16>,
    /// Inner VLAN id (QinQ).
    #[serde(rename = "vi", alias = "inner_vlan_id", default, skip_serializing_if = "Option::is_none")]
    pub inner_vlan_id: Option<u16>,
    /// NTP payload length.
    #[serde(rename = "n", alias = "length")]
    pub length: u16,
    /// Leap indicator.
    #[serde(rename = "li", alias = "leap")]
    pub leap: u8,
    /// NTP version.
    #[serde(rename = "v", alias = "version")]
    pub version: u8,
    /// NTP mode.
    #[serde(rename = "m", alias = "mode")]
    pub mode: u8,
    /// The 48-byte header for modes 0–5.
    #[serde(rename = "h", alias = "header", default, skip_serializing_if = "Option::is_none")]
    pub header: Option<PacketSummary>,
    /// The control header for mode 6.
    #[serde(rename = "c", alias = "control", default, skip_serializing_if = "Option::is_none")]
    pub control: Option<Control>,
    /// The private header for mode 7.
    #[serde(rename = "pv", alias = "private", default, skip_serializing_if = "Option::is_none")]
    pub private: Option<Private>,
}

/// Mode 6 control message header (RFC 9327).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Control {
    /// Response bit.
    #[serde(rename = "r", alias = "response")]
    pub response: bool,
    /// Error bit.
    #[serde(rename = "e", alias = "error")]
    pub error: bool,
    /// More bit (further fragments follow).
    #[serde(rename = "mo", alias = "more")]
    pub more: bool,
    /// Opcode (1 READSTAT, 2 READVAR, 3 WRITEVAR, …, 10 READ_MRU, 12 REQ_NONCE).
    #[serde(rename = "op", alias = "opcode")]
    pub opcode: u8,
    /// Sequence number.
    #[serde(rename = "sq", alias = "sequence")]
    pub sequence: u16,
    /// Status word.
    #[serde(rename = "st", alias = "status")]
    pub status: u16,
    /// Association id.
    #[serde(rename = "as", alias = "association_id")]
    pub association_id: u16,
    /// Offset of this fragment's data.
    #[serde(rename = "of", alias = "offset")]
    pub offset: u16,
    /// Count of data bytes.
    #[serde(rename = "cn", alias = "count")]
    pub count: u16,
}

/// Mode 7 private (ntpdc) message header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Private {
    /// Response bit.
    #[serde(rename = "r", alias = "response")]
    pub response: bool,
    /// More bit.
    #[serde(rename = "mo", alias = "more")]
    pub more: bool,
    /// Authenticated bit.
    #[serde(rename = "au", alias = "auth")]
    pub auth: bool,
    /// Sequence number (0–127).
    #[serde(rename = "sq", alias = "sequence")]
    pub sequence: u8,
    /// Implementation number (2 = XNTPD, 3 = XNTPD_OLD, 0 = universal).
    #[serde(rename = "im", alias = "implementation")]
    pub implementation: u8,
    /// Request code (20 MON_GETLIST, 42 MON_GETLIST_1, …).
    #[serde(rename = "rc", alias = "request_code")]
    pub request_code: u8,
    /// Error code (responses).
    #[serde(rename = "e", alias = "error")]
    pub error: u8,
    /// Number of data items.
    #[serde(rename = "it", alias = "items")]
    pub items: u16,
    /// Size of one data item.
    #[serde(rename = "is", alias = "item_size")]
    pub item_size: u16,
}

impl Private {
    /// `MON_GETLIST` or `MON_GETLIST_1`: the monlist query used for amplification attacks.
    pub fn is_monlist(&self) -> bool {
        matches!(self.request_code, 20 | 42)
    }
}

// serde's skip_serializing_if passes a reference.
#[allow(clippy::trivially_copy_pass_by_ref)]
fn is_false(v: &bool) -> bool {
    !*v
}

#[allow(clippy::trivially_copy_pass_by_ref)]
fn is_zero_u8(v: &u8) -> bool {
    *v == 0
}

#[allow(clippy::trivially_copy_pass_by_ref)]
fn is_zero_u32(v: &u32) -> bool {
    *v == 0
}

#[allow(clippy::trivially_copy_pass_by_ref)]
fn is_zero_u64(v: &u64) -> bool {
    *v == 0
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
        let mut p = PacketSummary { mode: 4, stratum: 0, reference_id: u32::from_be_bytes(*b"DENY"), ..PacketSummary::default() };
        assert_eq!(p.kiss_code().as_deref(), Some("DENY"));
        p.mode = 3;
        assert_eq!(p.kiss_code(), None);
    }
}
