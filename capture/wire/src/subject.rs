//! The one place that builds and parses NATS subjects, KV keys and names shared on the bus.
//!
//! Layout:
//! - stream `NTP` holds `ntp.v1.>`: records on `ntp.v1.sessions.<agent>.<interface>` and dead
//!   letters on `ntp.v1.deadletter.<agent>.<interface>`;
//! - control requests go to `ntpscope.v1.control.<agent>` (outside the stream, so JetStream
//!   never answers them with a publish ack);
//! - agent and sink status live in the KV bucket `ntpscope_status` under `agent.<agent>` and
//!   `sink.<consumer>`.
//!
//! Agent ids and interface names may hold characters a subject token or KV key cannot (`.` in
//! `eth0.100` or an FQDN, `*`, `>`, spaces, non-ASCII). [`encode_token`] maps them reversibly
//! to `[A-Za-z0-9_-]` plus `=XX` escapes of each UTF-8 byte; `=` is valid in both tokens and keys.

use crate::WireError;

/// JetStream stream holding every record message.
pub const STREAM: &str = "NTP";
/// Subjects of [`STREAM`].
pub const STREAM_SUBJECTS: &str = "ntp.v1.>";
/// Filter for record messages (what the sink consumes).
pub const SESSIONS_FILTER: &str = "ntp.v1.sessions.>";
/// Default durable consumer name of the sink.
pub const DEFAULT_CONSUMER: &str = "ntpscope-sink";
/// KV bucket for agent and sink status.
pub const STATUS_BUCKET: &str = "ntpscope_status";

const SESSIONS: &str = "ntp.v1.sessions.";
const DEADLETTER: &str = "ntp.v1.deadletter.";
const CONTROL: &str = "ntpscope.v1.control.";

/// Encodes a name as one subject token / KV key segment (see the module docs).
///
/// # Errors
/// An empty name cannot be a token.
pub fn encode_token(name: &str) -> Result<String, WireError> {
    if name.is_empty() {
        return Err(WireError::Subject("empty name".into()));
    }
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            out.push(char::from(b));
        } else {
            out.push('=');
            out.push(char::from(b"0123456789ABCDEF"[usize::from(b >> 4)]));
            out.push(char::from(b"0123456789ABCDEF"[usize::from(b & 15)]));
        }
    }
    Ok(out)
}

/// Decodes [`encode_token`]'s output.
pub fn decode_token(token: &str) -> Result<String, WireError> {
    let bad = || WireError::Subject(format!("bad token {token:?}"));
    let b = token.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'=' => {
                let hex = token.get(i + 1..i + 3).ok_or_else(bad)?;
                if !hex.bytes().all(|c| c.is_ascii_digit() || (b'A'..=b'F').contains(&c)) {
                    return Err(bad());
                }
                out.push(u8::from_str_radix(hex, 16).map_err(|_| bad())?);
                i += 3;
            }
            c if c.is_ascii_alphanumeric() || c == b'_' || c == b'-' => {
                out.push(c);
                i += 1;
            }
            _ => return Err(bad()),
        }
    }
    if out.is_empty() {
        return Err(bad());
    }
    String::from_utf8(out).map_err(|_| bad())
}

/// `ntp.v1.sessions.<agent>.<interface>`.
pub fn sessions(agent: &str, interface: &str) -> Result<String, WireError> {
    Ok(format!("{SESSIONS}{}.{}", encode_token(agent)?, encode_token(interface)?))
}

/// Splits a sessions subject back into (agent, interface).
pub fn parse_sessions(subject: &str) -> Result<(String, String), WireError> {
    let rest = subject.strip_prefix(SESSIONS).ok_or_else(|| WireError::Subject(format!("not a sessions subject: {subject:?}")))?;
    let (agent, iface) =
        rest.split_once('.').ok_or_else(|| WireError::Subject(format!("sessions subject without interface: {subject:?}")))?;
    Ok((decode_token(agent)?, decode_token(iface)?))
}

/// The dead-letter subject for a message that arrived on `subject`.
pub fn deadletter(subject: &str) -> String {
    match subject.strip_prefix(SESSIONS) {
        Some(rest) => format!("{DEADLETTER}{rest}"),
        None => format!("{DEADLETTER}unknown"),
    }
}

/// Filter for dead letters.
pub const DEADLETTER_FILTER: &str = "ntp.v1.deadletter.>";

/// `ntpscope.v1.control.<agent>`.
pub fn control(agent: &str) -> Result<String, WireError> {
    Ok(format!("{CONTROL}{}", encode_token(agent)?))
}

/// KV key of an agent's status.
pub fn agent_status_key(agent: &str) -> Result<String, WireError> {
    Ok(format!("agent.{}", encode_token(agent)?))
}

/// KV key of a sink's status.
pub fn sink_status_key(consumer: &str) -> Result<String, WireError> {
    Ok(format!("sink.{}", encode_token(consumer)?))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn vlan_interfaces_and_fqdns_stay_one_token() {
        let s = sessions("ntp1.example.com", "eth0.100").unwrap();
        assert_eq!(s, "ntp.v1.sessions.ntp1=2Eexample=2Ecom.eth0=2E100");
        assert_eq!(s.split('.').count(), 5);
        assert_eq!(parse_sessions(&s).unwrap(), ("ntp1.example.com".into(), "eth0.100".into()));
        assert_eq!(deadletter(&s), "ntp.v1.deadletter.ntp1=2Eexample=2Ecom.eth0=2E100");
        assert_eq!(agent_status_key("a b*>").unwrap(), "agent.a=20b=2A=3E");
    }

    #[test]
    fn bad_subjects_are_errors() {
        assert!(encode_token("").is_err());
        assert!(parse_sessions("ntp.v1.other.a.b").is_err());
        assert!(parse_sessions("ntp.v1.sessions.a").is_err());
        assert!(decode_token("a=2").is_err());
        assert!(decode_token("a=zz").is_err());
        assert!(decode_token("a.b").is_err());
        assert!(decode_token("=FF").is_err(), "not UTF-8");
    }

    proptest! {
        #[test]
        fn tokens_round_trip_and_are_subject_and_key_safe(name in "\\PC{1,40}") {
            let t = encode_token(&name).unwrap();
            prop_assert!(t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'='));
            prop_assert_eq!(decode_token(&t).unwrap(), name);
        }
    }
}
