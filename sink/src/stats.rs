//! The sink's counters: persisted per batch in `sink_state` (readable by the API even when the
//! sink is down) and mirrored here for the status document on the bus.
//!
//! Names follow the seed: `total_received`, `total_processed`, `queue_size`,
//! `processing_errors`, `total_inserted`, `total_updated`; plus batches, duplicates skipped,
//! dead letters, last commit time and lag.

use std::{collections::BTreeMap, sync::Mutex};

use entity::sink_state;
use ntp_wire::status::SinkStatus;

use crate::store::StateDelta;

#[derive(Debug, Default, Clone)]
struct Totals {
    counters: BTreeMap<&'static str, u64>,
    queue_size: u64,
    last_commit_ns: i64,
    lag_seconds: f64,
    /// Commit time minus the agent's send time of each applied message, milliseconds (the most
    /// recent [`MAX_LAG_SAMPLES`]).
    lags_ms: std::collections::VecDeque<u32>,
    /// The last database error, while writes fail, since when (Unix ns), and whether a batch
    /// (rather than only the heartbeat) failed.
    failing: Option<(String, i64, bool)>,
    /// The SQLite WAL file's size at the writer's last look, bytes (`None` on PostgreSQL).
    wal_bytes: Option<u64>,
    /// Failed batch attempts not yet written into the database row (the next commit adds them).
    failures_unwritten: u64,
}

/// Lag samples kept for quantiles.
const MAX_LAG_SAMPLES: usize = 100_000;

/// Shared counters.
#[derive(Debug, Default)]
pub struct SinkStats {
    inner: Mutex<Totals>,
}

const NAMES: [&str; 11] = [
    "total_received",
    "total_processed",
    "processing_errors",
    "total_inserted",
    "total_updated",
    "batches",
    "messages_applied",
    "duplicates_skipped",
    "dead_lettered",
    "last_sequence",
    "failed_attempts",
];

impl SinkStats {
    fn with<R>(&self, f: impl FnOnce(&mut Totals) -> R) -> R {
        f(&mut self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// Starts from the persisted row, if any.
    pub fn from_row(row: Option<&sink_state::Model>) -> Self {
        let s = Self::default();
        if let Some(r) = row {
            let u = |v: i64| u64::try_from(v).unwrap_or(0);
            s.with(|t| {
                for (k, v) in [
                    ("total_received", r.total_received),
                    ("total_processed", r.total_processed),
                    ("processing_errors", r.processing_errors),
                    ("total_inserted", r.total_inserted),
                    ("total_updated", r.total_updated),
                    ("batches", r.batches),
                    ("messages_applied", r.messages_applied),
                    ("duplicates_skipped", r.duplicates_skipped),
                    ("dead_lettered", r.dead_lettered),
                    ("last_sequence", r.last_sequence),
                    ("failed_attempts", r.failed_attempts),
                ] {
                    t.counters.insert(k, u(v));
                }
                t.queue_size = u(r.queue_size);
                t.last_commit_ns = r.last_commit_at.unwrap_or(0);
                t.lag_seconds = r.lag_seconds.unwrap_or(0.0);
            });
        }
        s
    }

    /// Adds a committed batch.
    pub fn committed(&self, d: &StateDelta) {
        self.with(|t| {
            for (k, v) in [
                ("total_received", d.total_received),
                ("total_processed", d.total_processed),
                ("processing_errors", d.processing_errors),
                ("total_inserted", d.total_inserted),
                ("total_updated", d.total_updated),
                ("batches", 1),
                ("messages_applied", d.messages_applied),
                ("duplicates_skipped", d.duplicates_skipped),
                ("dead_lettered", d.dead_lettered),
            ] {
                *t.counters.entry(k).or_default() += v;
            }
            let seq = t.counters.entry("last_sequence").or_default();
            *seq = (*seq).max(d.last_sequence);
            // The time the row holds, so that the heartbeat's schedule (which counts from it)
            // and the status document agree with `sink_state.last_commit_at`.
            t.last_commit_ns = if d.written_at > 0 { d.written_at } else { crate::clock::wall_ns() };
            t.failing = None;
            // Counted when they happened (`add_error`); now they are in the row too.
            t.failures_unwritten = t.failures_unwritten.saturating_sub(d.failed_attempts);
            if let Some(lag) = d.lag_seconds {
                t.lag_seconds = lag;
            }
        });
    }

    /// Records the bus-and-store lag of applied messages, in milliseconds.
    pub fn add_lags(&self, lags_ms: &[u32]) {
        self.with(|t| {
            for l in lags_ms {
                if t.lags_ms.len() == MAX_LAG_SAMPLES {
                    t.lags_ms.pop_front();
                }
                t.lags_ms.push_back(*l);
            }
        });
    }

    /// (p50, p99, max) of the recorded lags, milliseconds.
    pub fn lag_quantiles(&self) -> Option<(u32, u32, u32)> {
        self.with(|t| {
            if t.lags_ms.is_empty() {
                return None;
            }
            let mut v: Vec<u32> = t.lags_ms.iter().copied().collect();
            v.sort_unstable();
            let q = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
            Some((q(0.5), q(0.99), v[v.len() - 1]))
        })
    }

    /// Counts a failed batch attempt (retried), and shows the error until a batch commits.
    pub fn add_error(&self, error: &str) {
        self.with(|t| {
            *t.counters.entry("failed_attempts").or_default() += 1;
            t.failures_unwritten += 1;
            let since = t.failing.as_ref().map_or_else(crate::clock::wall_ns, |f| f.1);
            t.failing = Some((error.to_string(), since, true));
        });
    }

    /// Failed batch attempts the database row does not count yet: the next batch's delta.
    pub fn failures_unwritten(&self) -> u64 {
        self.with(|t| t.failures_unwritten)
    }

    /// A heartbeat write failed: shown until a write succeeds.
    pub fn heartbeat_failed(&self, error: &str) {
        self.with(|t| {
            let (since, batch) = t.failing.as_ref().map_or_else(|| (crate::clock::wall_ns(), false), |f| (f.1, f.2));
            t.failing = Some((error.to_string(), since, batch));
        });
    }

    /// The SQLite WAL file's size, as the writer last found it.
    pub fn set_wal_bytes(&self, bytes: u64) {
        self.with(|t| t.wal_bytes = Some(bytes));
    }

    /// A heartbeat write succeeded: clears a failure only the heartbeat saw (a failing batch
    /// stays shown until it commits: a full disk may take a small write and refuse a large one).
    pub fn heartbeat_ok(&self) {
        self.with(|t| {
            if t.failing.as_ref().is_some_and(|f| !f.2) {
                t.failing = None;
            }
        });
    }

    /// Records the consumer's pending + ack-pending.
    pub fn set_queue_size(&self, n: u64) {
        self.with(|t| t.queue_size = n);
    }

    /// Wall time of the last batch commit (Unix ns; 0 when none is known).
    pub fn last_commit_ns(&self) -> i64 {
        self.with(|t| t.last_commit_ns)
    }

    /// Last known queue size.
    pub fn queue_size(&self) -> u64 {
        self.with(|t| t.queue_size)
    }

    /// A status document.
    pub fn status(&self, consumer: &str) -> SinkStatus {
        self.with(|t| {
            let mut counters: BTreeMap<String, u64> =
                NAMES.iter().map(|n| ((*n).to_string(), t.counters.get(n).copied().unwrap_or(0))).collect();
            counters.insert("queue_size".into(), t.queue_size);
            if let Some(b) = t.wal_bytes {
                counters.insert("wal_bytes".into(), b);
            }
            if !t.lags_ms.is_empty() {
                let mut v: Vec<u32> = t.lags_ms.iter().copied().collect();
                v.sort_unstable();
                counters.insert("lag_p50_ms".into(), u64::from(v[(v.len() - 1) / 2]));
                counters.insert("lag_p99_ms".into(), u64::from(v[((v.len() - 1) as f64 * 0.99).round() as usize]));
            }
            SinkStatus {
                consumer: consumer.to_string(),
                updated_ns: crate::clock::wall_ns(),
                counters,
                last_commit_ns: t.last_commit_ns,
                lag_seconds: t.lag_seconds,
                failing: t.failing.as_ref().map(|f| f.0.clone()),
                failing_since_ns: t.failing.as_ref().map_or(0, |f| f.1),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(s: &SinkStats) -> u64 {
        s.status("sink").counters["failed_attempts"]
    }

    /// A failed attempt counts at once on the bus, goes into the row with the next commit, and
    /// is counted once either way; a restarted sink starts from the row's count.
    #[test]
    fn failed_attempts_reach_the_row_with_the_next_commit() {
        let s = SinkStats::from_row(None);
        s.add_error("database is full");
        s.add_error("database is full");
        assert_eq!((failed(&s), s.failures_unwritten()), (2, 2));
        // A commit that began before the second failure carries only the first.
        s.committed(&StateDelta { failed_attempts: 1, ..StateDelta::default() });
        assert_eq!((failed(&s), s.failures_unwritten()), (2, 1));
        s.committed(&StateDelta { failed_attempts: s.failures_unwritten(), ..StateDelta::default() });
        assert_eq!((failed(&s), s.failures_unwritten()), (2, 0));
        assert!(s.status("sink").failing.is_none(), "a commit clears the failure");
        let row = sink_state::Model {
            consumer: "sink".into(),
            stream: "NTP".into(),
            last_sequence: 0,
            total_received: 0,
            total_processed: 0,
            processing_errors: 0,
            total_inserted: 0,
            total_updated: 0,
            batches: 0,
            messages_applied: 0,
            duplicates_skipped: 0,
            dead_lettered: 0,
            queue_size: 0,
            failed_attempts: 5,
            last_commit_at: None,
            lag_seconds: None,
            last_batch_records: None,
            last_batch_seconds: None,
            updated_at: 0,
        };
        let restarted = SinkStats::from_row(Some(&row));
        assert_eq!((failed(&restarted), restarted.failures_unwritten()), (5, 0));
    }
}
