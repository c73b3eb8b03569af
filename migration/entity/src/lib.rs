//! `entity`: sea-orm entities over the tables the migrations create, shared by the sink and the
//! API. Hand-written (two tables do not justify a generator); keep them in step with `migration`.
//!
//! All `*_at`, `*_seen` and `*_timestamp` columns are Unix nanoseconds.

pub mod ntp_clients;
pub mod sink_state;
