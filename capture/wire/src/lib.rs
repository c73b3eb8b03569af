//! `ntp-wire`: everything ntpscope sends between processes, defined once.
//!
//! The capture agent produces [`Record`]s; the sink consumes them; the JSON-lines forensic output
//! of the agent is a view of the same records. This crate is pure: no I/O, no clock, no async.
//!
//! # Layout
//! - [`record`]: the session and observation records and the NTP packet summary they carry.
//! - [`time`]: nanosecond Unix times, NTP timestamps, RFC 3339 formatting and parsing.
//!
//! # Compatibility rules (an API boundary)
//! - Records are MessagePack maps with field names, never positional arrays.
//! - Every field added after schema 1 is optional with a default; wire types never deny unknown
//!   fields, so an older sink can read a newer agent's records.
//! - Parser and database types are never serialized directly; they convert to and from these types.
#![warn(missing_docs)]
#![deny(clippy::unwrap_used)]

pub mod record;
pub mod time;

pub use record::{
    Control, Extension, Mac, Observation, PacketSummary, Private, Record, SCHEMA_VERSION, Session,
    SessionOutcome,
};
