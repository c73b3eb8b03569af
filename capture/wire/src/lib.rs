//! `ntp-wire`: everything ntpscope sends between processes, defined once.
//!
//! The capture agent produces [`Record`]s and publishes them in [`Batch`]es; the sink consumes
//! them; the JSON-lines forensic output of the agent is a view of the same records. This crate
//! is pure: no I/O, no clock, no async.
//!
//! # Layout
//! - [`record`]: the session and observation records and the NTP packet summary they carry.
//! - [`batch`]: the NATS message (many records), its encoding and its deterministic id.
//! - [`subject`]: stream, subject, consumer and KV names; the reversible token encoding.
//! - [`status`]: agent and sink status documents.
//! - [`control`]: capture control requests and replies (API → agent).
//! - [`id`]: the stable hashes behind record and message ids.
//! - [`time`]: nanosecond Unix times, NTP timestamps, RFC 3339 formatting and parsing.
//!
//! # Compatibility rules (an API boundary)
//! - Records are MessagePack maps with field names, never positional arrays.
//! - Every field added after schema 1 is optional with a default; wire types never deny unknown
//!   fields, so an older sink can read a newer agent's records.
//! - A key is never renamed without keeping the old name readable: every field carries its
//!   earlier key as a serde `alias` (schema 1 was first written with the Rust field names, records
//!   tagged `kind`; `batch::decode` still reads those messages).
//! - `tests/golden/*.msgpack` are committed bytes that every later version must decode to the
//!   batch `tests/golden.rs` expects of each. **Never overwrite or regenerate a golden file**:
//!   when the encoding changes, add a new file (`batch_v<schema>_<what changed>.msgpack`) with its
//!   expected batch and keep every old one.
//! - Parser and database types are never serialized directly; they convert to and from these types.
#![warn(missing_docs)]
#![deny(clippy::unwrap_used)]

pub mod batch;
pub mod control;
pub mod id;
pub mod record;
pub mod status;
pub mod subject;
pub mod time;

pub use batch::Batch;
pub use record::{Control, Extension, Mac, Observation, PacketSummary, Private, Record, SCHEMA_VERSION, Session, SessionOutcome};

/// Errors at the wire boundary.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Bytes that are not a valid message.
    #[error("undecodable message: {0}")]
    Decode(String),
    /// A message from a newer (or invalid) schema.
    #[error("unsupported schema version {0}")]
    UnsupportedSchema(u16),
    /// Encoding failed (a bug, or a value serde cannot represent).
    #[error("cannot encode: {0}")]
    Encode(String),
    /// A name that cannot be a subject token, or a subject that is not ours.
    #[error("bad subject: {0}")]
    Subject(String),
}
