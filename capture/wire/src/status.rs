//! Status documents kept in the `ntpscope_status` KV bucket: one per agent, one per sink.
//!
//! They are snapshots, rewritten every few seconds; a reader compares `updated_ns` with its own
//! clock to tell a live process from a dead one. Counters are name → value maps so new counters
//! never break old readers.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What an agent reports about itself.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentStatus {
    /// Agent id.
    pub agent: String,
    /// Agent software version.
    #[serde(default)]
    pub version: String,
    /// Process start, Unix nanoseconds.
    #[serde(default)]
    pub started_ns: i64,
    /// When this snapshot was taken, Unix nanoseconds.
    pub updated_ns: i64,
    /// Capture sources.
    #[serde(default)]
    pub interfaces: Vec<InterfaceStatus>,
    /// The publisher's counters and buffer use.
    #[serde(default)]
    pub publisher: BTreeMap<String, u64>,
    /// This is the agent's last snapshot: it exited cleanly (a file replay that finished, or a
    /// daemon stopped on purpose), so its silence from now on is not an outage.
    #[serde(default)]
    pub exited: bool,
}

/// One capture source of an agent.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct InterfaceStatus {
    /// Interface name.
    pub name: String,
    /// `live` or `file`.
    #[serde(default)]
    pub kind: String,
    /// `running`, `finished`, `stopped` or `failed: …`.
    #[serde(default)]
    pub state: String,
    /// Link type.
    #[serde(default)]
    pub link_type: String,
    /// Core counters (stable names, see the capture agent's summary).
    #[serde(default)]
    pub counters: BTreeMap<String, u64>,
    /// libpcap `ps_recv`.
    #[serde(default)]
    pub pcap_received: u64,
    /// libpcap `ps_drop`.
    #[serde(default)]
    pub pcap_dropped: u64,
    /// libpcap `ps_ifdrop`.
    #[serde(default)]
    pub pcap_if_dropped: u64,
    /// Records dropped because the output could not keep up.
    #[serde(default)]
    pub records_dropped: u64,
}

/// What a sink reports about itself (also kept in the database).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SinkStatus {
    /// Durable consumer name.
    pub consumer: String,
    /// When this snapshot was taken, Unix nanoseconds.
    pub updated_ns: i64,
    /// Counters (seed names: `total_received`, `total_processed`, `queue_size`, …).
    #[serde(default)]
    pub counters: BTreeMap<String, u64>,
    /// Last commit time, Unix nanoseconds.
    #[serde(default)]
    pub last_commit_ns: i64,
    /// Seconds between the newest record's capture and its commit, at the last commit.
    #[serde(default)]
    pub lag_seconds: f64,
    /// While writes to the database fail (locked, disk full, unreachable): the last error.
    /// Cleared by the next successful write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failing: Option<String>,
    /// When the current run of failures began, Unix nanoseconds (0 when not failing).
    #[serde(default)]
    pub failing_since_ns: i64,
}

/// Encodes a status document (MessagePack with field names).
pub fn encode<T: Serialize>(status: &T) -> Result<Vec<u8>, crate::WireError> {
    rmp_serde::to_vec_named(status).map_err(|e| crate::WireError::Encode(e.to_string()))
}

/// Decodes a status document.
pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, crate::WireError> {
    rmp_serde::from_slice(bytes).map_err(|e| crate::WireError::Decode(e.to_string()))
}
