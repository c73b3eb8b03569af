//! The agent's only wall-clock read.
//!
//! The core never reads a clock; the capture loop needs "now" only to expire requests on an idle
//! link, where no packet timestamp moves time forward. Kernel capture timestamps and this clock
//! are both `CLOCK_REALTIME`, so they compare directly.

/// Current wall-clock time in Unix nanoseconds.
#[allow(clippy::disallowed_methods)] // the one sanctioned clock read, see the module docs
pub fn wall_ns() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// A monotonic instant, for batching intervals and status cadence (never for record times).
#[allow(clippy::disallowed_methods)] // the one sanctioned clock read, see the module docs
pub fn monotonic() -> std::time::Instant {
    std::time::Instant::now()
}
