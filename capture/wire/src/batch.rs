//! The NATS message: a batch of records from one agent and interface.
//!
//! Many records travel in one message (the bus carries millions of records a second, not one
//! message per packet). The message id (`Nats-Msg-Id`) is a 128-bit hash of the agent, the
//! interface and every record id, so re-publishing the same batch is recognised by JetStream's
//! duplicate window and, beyond it, by the sink's applied-message table.

use serde::{Deserialize, Serialize};

use crate::{
    Observation, Record, SCHEMA_VERSION, Session, WireError,
    id::{Fnv64, stable_hash_seeded},
};

/// One message on `ntp.v1.sessions.<agent>.<interface>`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    /// Schema version of the records ([`SCHEMA_VERSION`] when written by this crate).
    pub schema: u16,
    /// Agent id.
    pub agent: String,
    /// Interface the records were captured on.
    pub interface: String,
    /// Wall-clock time the agent handed the batch to the bus, Unix nanoseconds (0: unknown).
    /// Lets the sink measure bus-and-store latency; not part of the message id.
    #[serde(rename = "sent", alias = "sent_ns", default)]
    pub sent_ns: i64,
    /// The records, in capture order.
    pub records: Vec<Record>,
}

impl Batch {
    /// A batch of the current schema.
    pub fn new(agent: impl Into<String>, interface: impl Into<String>, records: Vec<Record>) -> Self {
        Self { schema: SCHEMA_VERSION, agent: agent.into(), interface: interface.into(), sent_ns: 0, records }
    }

    /// The deterministic message id: 32 hex digits.
    pub fn message_id(&self) -> String {
        let mut name = Fnv64::default();
        name.bytes(self.agent.as_bytes());
        name.bytes(&[0]);
        name.bytes(self.interface.as_bytes());
        let mut words = Vec::with_capacity(self.records.len() + 2);
        words.push(name.finish());
        words.push(self.records.len() as u64);
        words.extend(self.records.iter().map(Record::id));
        let hi = stable_hash_seeded(0x6261_7463_6869_6431, &words);
        let lo = stable_hash_seeded(0x6261_7463_6869_6432, &words);
        format!("{hi:016x}{lo:016x}")
    }
}

impl Record {
    /// The record's deterministic id.
    pub fn id(&self) -> u64 {
        match self {
            Record::Session(s) => s.id,
            Record::Observation(o) => o.id,
        }
    }

    /// Capture time of the record (request time for sessions).
    pub fn time_ns(&self) -> i64 {
        match self {
            Record::Session(s) => s.request_time_ns,
            Record::Observation(o) => o.time_ns,
        }
    }
}

/// Encodes a batch as MessagePack with field names (never positional).
pub fn encode(batch: &Batch) -> Result<Vec<u8>, WireError> {
    rmp_serde::to_vec_named(batch).map_err(|e| WireError::Encode(e.to_string()))
}

/// Decodes a batch, refusing schemas newer than this crate understands.
///
/// Schema 1 was first written with the Rust field names as keys and records tagged
/// `kind: session | observation` (agents before the compact keys). The aliases on every record
/// field accept those names; only the tag key needs a second shape (`LongTagBatch`), tried when
/// the compact one fails, so current messages never pay for it.
pub fn decode(bytes: &[u8]) -> Result<Batch, WireError> {
    let batch = match rmp_serde::from_slice::<Batch>(bytes) {
        Ok(batch) => batch,
        Err(e) => match rmp_serde::from_slice::<LongTagBatch>(bytes) {
            Ok(old) => old.into_batch(),
            Err(_) => return Err(WireError::Decode(e.to_string())),
        },
    };
    if batch.schema == 0 || batch.schema > SCHEMA_VERSION {
        return Err(WireError::UnsupportedSchema(batch.schema));
    }
    if batch.agent.is_empty() || batch.interface.is_empty() {
        return Err(WireError::Decode("empty agent or interface".into()));
    }
    Ok(batch)
}

/// A schema 1 batch as the first agents wrote it: records tagged by `kind` (serde cannot alias
/// the tag key of an internally tagged enum). Record fields decode through the aliases of the
/// current types, so only the envelope is repeated here.
#[derive(Deserialize)]
struct LongTagBatch {
    schema: u16,
    agent: String,
    interface: String,
    #[serde(rename = "sent", alias = "sent_ns", default)]
    sent_ns: i64,
    records: Vec<LongTagRecord>,
}

#[derive(Deserialize)]
#[serde(tag = "kind")]
enum LongTagRecord {
    #[serde(rename = "session", alias = "s")]
    Session(Session),
    #[serde(rename = "observation", alias = "o")]
    Observation(Observation),
}

impl LongTagBatch {
    fn into_batch(self) -> Batch {
        let records = self
            .records
            .into_iter()
            .map(|r| match r {
                LongTagRecord::Session(s) => Record::Session(s),
                LongTagRecord::Observation(o) => Record::Observation(o),
            })
            .collect();
        Batch { schema: self.schema, agent: self.agent, interface: self.interface, sent_ns: self.sent_ns, records }
    }
}
