//! The sink's clock reads (commit times, lag, batching intervals).

use std::sync::atomic::{AtomicI64, Ordering};

/// Wall-clock Unix nanoseconds.
#[allow(clippy::disallowed_methods)] // the sink's sanctioned clock read
pub fn wall_ns() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

static LAST: AtomicI64 = AtomicI64::new(0);

/// Wall-clock Unix nanoseconds, strictly increasing within the process: a batch's commit time
/// doubles as its marker for rows it inserted.
pub fn unique_wall_ns() -> i64 {
    let now = wall_ns();
    let prev = LAST.fetch_max(now, Ordering::SeqCst);
    if prev >= now { LAST.fetch_add(1, Ordering::SeqCst) + 1 } else { now }
}

/// A monotonic instant.
#[allow(clippy::disallowed_methods)] // the sink's sanctioned clock read
pub fn monotonic() -> std::time::Instant {
    std::time::Instant::now()
}
