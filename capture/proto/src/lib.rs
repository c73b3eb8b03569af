//! `capture-proto`: the pure core of the ntpscope capture agent.
//!
//! Bytes and capture timestamps go in; session records, observations and counters come out.
//! Nothing here does I/O, spawns threads or reads a clock, so replaying a capture file always
//! yields the same records, and the core can be fuzzed and property-tested without root,
//! interfaces or a runtime.
//!
//! # Layout
//! - [`frame`]: link layer (Ethernet + VLAN, Linux SLL/SLL2, raw IP, BSD loopback) → UDP.
//! - [`ntp`]: NTP versions 1–4, all modes, extension fields, MACs, control and private headers.
//! - [`pairing`]: request/response pairing on the origin-timestamp echo, with bounded memory.
//! - [`analyzer`]: the three above glued together per capture source.
//! - [`stats`]: the counters every stage keeps.
//! - [`summary`]: parsed packets → wire summaries.
#![warn(missing_docs)]
#![deny(clippy::unwrap_used)]

pub mod analyzer;
pub mod frame;
pub mod ntp;
pub mod pairing;
pub mod stats;
pub mod summary;

pub use analyzer::{Analyzer, AnalyzerConfig};
