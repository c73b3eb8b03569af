//! The API's clock reads (freshness of statuses, cleanup cut-offs, cache ages).

/// Wall-clock Unix nanoseconds.
#[allow(clippy::disallowed_methods)] // the API's sanctioned clock read
pub fn wall_ns() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// A monotonic instant.
#[allow(clippy::disallowed_methods)] // the API's sanctioned clock read
pub fn monotonic() -> std::time::Instant {
    std::time::Instant::now()
}
