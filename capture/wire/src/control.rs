//! Capture control over NATS request/reply: the API asks an agent to list, start or stop capture
//! on its interfaces; the agent answers with its new state.
//!
//! Requests go to `ntpscope.v1.control.<agent>` (see [`crate::subject::control`]), outside the
//! `NTP` stream so JetStream never answers them. Both directions are MessagePack maps with field
//! names, like every other message.

use serde::{Deserialize, Serialize};

use crate::WireError;

/// What the API asks an agent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ControlRequest {
    /// List the host's interfaces and their capture state.
    List,
    /// Start capturing on an interface.
    Start {
        /// Interface name.
        interface: String,
        /// NTP server port (the seed's `port`).
        #[serde(default = "default_port")]
        port: u16,
        /// Seconds before a request counts as unanswered (the seed's `timeout`).
        #[serde(default = "default_timeout")]
        timeout: f64,
        /// BPF filter; the default covers the port, VLAN tags and fragments.
        #[serde(default)]
        bpf: Option<String>,
    },
    /// Stop capturing on an interface.
    Stop {
        /// Interface name.
        interface: String,
    },
}

fn default_port() -> u16 {
    123
}

fn default_timeout() -> f64 {
    2.0
}

/// One interface of an agent's host.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct InterfaceInfo {
    /// Interface name.
    pub name: String,
    /// Description libpcap gives, if any.
    #[serde(default)]
    pub description: Option<String>,
    /// Addresses on the interface.
    #[serde(default)]
    pub addresses: Vec<String>,
    /// Whether the agent is capturing on it.
    #[serde(default)]
    pub capturing: bool,
    /// `running`, `stopped`, `failed: …`, or `idle`.
    #[serde(default)]
    pub state: String,
    /// Server port of the running capture.
    #[serde(default)]
    pub port: Option<u16>,
    /// Timeout of the running capture, seconds.
    #[serde(default)]
    pub timeout: Option<f64>,
    /// BPF filter of the running capture.
    #[serde(default)]
    pub bpf: Option<String>,
}

/// Why a control request failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ControlErrorKind {
    /// No such interface on the host.
    NotFound,
    /// Already capturing (start) or not capturing (stop).
    Conflict,
    /// Bad parameters (port, timeout, filter).
    Invalid,
    /// The capture could not be opened (permission, device down).
    Failed,
}

/// The agent's answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum ControlResponse {
    /// Done; the host's interfaces as they are now.
    Ok {
        /// Agent id.
        agent: String,
        /// Interfaces.
        interfaces: Vec<InterfaceInfo>,
    },
    /// Not done.
    Error {
        /// Agent id.
        agent: String,
        /// Category.
        kind: ControlErrorKind,
        /// Human-readable reason.
        message: String,
        /// The request's field at fault, for [`ControlErrorKind::Invalid`] (`name` for the
        /// interface, `port`, `timeout`, `bpf`); absent from agents before it existed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        field: Option<String>,
    },
}

/// Encodes a control message.
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, WireError> {
    rmp_serde::to_vec_named(msg).map_err(|e| WireError::Encode(e.to_string()))
}

/// Decodes a control message.
pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, WireError> {
    rmp_serde::from_slice(bytes).map_err(|e| WireError::Decode(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct Minimal<'a> {
        op: &'a str,
        interface: &'a str,
    }

    #[test]
    fn requests_round_trip_and_fill_the_seed_defaults() {
        let start = ControlRequest::Start { interface: "eth0.100".into(), port: 123, timeout: 2.0, bpf: None };
        assert_eq!(decode::<ControlRequest>(&encode(&start).unwrap()).unwrap(), start);
        let bytes = rmp_serde::to_vec_named(&Minimal { op: "start", interface: "eth1" }).unwrap();
        assert_eq!(
            decode::<ControlRequest>(&bytes).unwrap(),
            ControlRequest::Start { interface: "eth1".into(), port: 123, timeout: 2.0, bpf: None }
        );
        assert!(decode::<ControlRequest>(b"\x81\xa2op\xa4nope").is_err());
    }
}
