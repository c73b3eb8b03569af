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
/// Records decode fastest with their tag as the first key, which is how every encoder of this
/// crate writes them, under `k` or, in schema 1 as the first agents wrote it, `kind` (the aliases
/// on every record field accept those agents' Rust field names). Two slower shapes are tried only
/// when that fails, so current messages never pay for them: a `k` tag later in the record, and a
/// `kind` tag later in the record.
pub fn decode(bytes: &[u8]) -> Result<Batch, WireError> {
    let batch = match rmp_serde::from_slice::<Batch>(bytes) {
        Ok(batch) => batch,
        Err(fast) => match rmp_serde::from_slice::<SlowBatch<AnyOrderRecord>>(bytes) {
            Ok(b) => b.into_batch(),
            Err(slow) => match rmp_serde::from_slice::<SlowBatch<LongTagRecord>>(bytes) {
                Ok(b) => b.into_batch(),
                // A late tag is allowed, so when that is all the fast path objected to, the real
                // defect is in what the two tag-anywhere shapes say.
                Err(long) => {
                    let fast = fast.to_string();
                    let reason = if fast.contains(crate::record::TAG_NOT_FIRST) {
                        format!("read with the tag `k` anywhere: {slow}; with the tag `kind` anywhere: {long}")
                    } else {
                        fast
                    };
                    return Err(WireError::Decode(reason));
                }
            },
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

/// A batch decoded through serde's derived internally tagged records, which find the tag
/// anywhere in the record. Only the envelope is repeated here; record fields decode through the
/// current types.
#[derive(Deserialize)]
struct SlowBatch<R> {
    schema: u16,
    agent: String,
    interface: String,
    #[serde(rename = "sent", alias = "sent_ns", default)]
    sent_ns: i64,
    records: Vec<R>,
}

/// A record tagged `k`, the tag anywhere.
#[derive(Deserialize)]
#[serde(tag = "k")]
enum AnyOrderRecord {
    #[serde(rename = "s", alias = "session")]
    Session(Session),
    #[serde(rename = "o", alias = "observation")]
    Observation(Observation),
}

/// A record tagged `kind`, the tag anywhere (serde cannot alias the tag key of an internally
/// tagged enum).
#[derive(Deserialize)]
#[serde(tag = "kind")]
enum LongTagRecord {
    #[serde(rename = "session", alias = "s")]
    Session(Session),
    #[serde(rename = "observation", alias = "o")]
    Observation(Observation),
}

impl From<AnyOrderRecord> for Record {
    fn from(r: AnyOrderRecord) -> Self {
        match r {
            AnyOrderRecord::Session(s) => Record::Session(s),
            AnyOrderRecord::Observation(o) => Record::Observation(o),
        }
    }
}

impl From<LongTagRecord> for Record {
    fn from(r: LongTagRecord) -> Self {
        match r {
            LongTagRecord::Session(s) => Record::Session(s),
            LongTagRecord::Observation(o) => Record::Observation(o),
        }
    }
}

impl<R: Into<Record>> SlowBatch<R> {
    fn into_batch(self) -> Batch {
        let records = self.records.into_iter().map(Into::into).collect();
        Batch { schema: self.schema, agent: self.agent, interface: self.interface, sent_ns: self.sent_ns, records }
    }
}
