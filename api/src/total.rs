//! The table's row count (the `total` of unfiltered pages and of the service statistics)
//! without counting the table on the request path.
//!
//! `COUNT(*)` of 5 M rows takes 23 ms of CPU with warm pages, and 130 ms right after a commit
//! of the sink, because a commit makes every SQLite reader drop its page cache and memory map.
//! Recounting every few seconds put one of the box's two cores out of reach of the request
//! handlers for that long, and showed as the p99 of every page (docs/performance.md).
//!
//! Instead the table is counted rarely, in the same statement (one snapshot) as the sink's
//! cumulative count of inserted rows, `SUM(sink_state.total_inserted)`, which the sink updates in
//! the transaction that inserts them. Between counts the total is the counted rows plus what the
//! sinks inserted since, minus what this API's cleanups deleted since: exact while the sinks and
//! this API are the table's only writers. Rows written by anything else (a manual import,
//! another API instance's cleanup) are picked up by the background recount every
//! [`RECOUNT_PERIOD`]; a sink counter that went backwards (a `sink_state` row deleted) makes the
//! next request count in line.

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use tokio::sync::Mutex;

/// How long a derived total is served before the sinks' counter is read again.
pub const TOTAL_TTL: Duration = Duration::from_secs(1);

/// How often the table is counted again in the background.
pub const RECOUNT_PERIOD: Duration = Duration::from_mins(5);

/// A count of the table and the sinks' inserted-row counter, read in one snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    /// `COUNT(*)` of `ntp_clients`.
    pub rows: u64,
    /// `SUM(total_inserted)` of `sink_state`.
    pub inserted: i64,
}

#[derive(Debug, Clone, Copy)]
struct Base {
    snapshot: Snapshot,
    at: Instant,
    /// Rows this API deleted since the snapshot.
    deleted: u64,
}

impl Base {
    /// The total now, given the sinks' counter now; `None` when the counter went backwards.
    fn total(&self, inserted: i64) -> Option<u64> {
        let added = u64::try_from(inserted.checked_sub(self.snapshot.inserted)?).ok()?;
        Some(self.snapshot.rows.saturating_add(added).saturating_sub(self.deleted))
    }
}

#[derive(Debug, Default)]
struct Inner {
    base: Option<Base>,
    served: Option<(Instant, u64)>,
    /// Bumped by every cleanup, so a recount that began before it does not undo its subtraction.
    epoch: u64,
}

/// What the caller must do next (see [`TotalCounter::get`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Nothing: serve this total.
    Serve(u64),
    /// Serve this total, and start a background recount (with this epoch).
    ServeAndRecount(u64, u64),
}

/// The cached total.
#[derive(Debug, Default)]
pub struct TotalCounter {
    inner: Mutex<Inner>,
    recounting: AtomicBool,
}

impl TotalCounter {
    /// The total at `now`. `inserted` reads the sinks' counter, `count` counts the table; each
    /// is called only when needed (the counter at most once per [`TOTAL_TTL`], the table only
    /// without a usable count).
    pub async fn get<E, FI, FC>(&self, now: Instant, inserted: FI, count: FC) -> Result<Next, E>
    where
        FI: AsyncFnOnce() -> Result<i64, E>,
        FC: AsyncFnOnce() -> Result<Snapshot, E>,
    {
        let mut inner = self.inner.lock().await;
        if let Some((at, n)) = inner.served
            && now.saturating_duration_since(at) < TOTAL_TTL
        {
            return Ok(Next::Serve(n));
        }
        let derived = match inner.base {
            Some(base) => base.total(inserted().await?).map(|n| (n, base.at)),
            None => None,
        };
        let (n, counted_at) = if let Some(d) = derived {
            d
        } else {
            let snapshot = count().await?;
            inner.base = Some(Base { snapshot, at: now, deleted: 0 });
            (snapshot.rows, now)
        };
        inner.served = Some((now, n));
        if now.saturating_duration_since(counted_at) >= RECOUNT_PERIOD && !self.recounting.swap(true, Ordering::AcqRel) {
            return Ok(Next::ServeAndRecount(n, inner.epoch));
        }
        Ok(Next::Serve(n))
    }

    /// Ends a background recount started at `started` under `epoch`: its snapshot becomes the
    /// base unless a cleanup ran meanwhile (then the next period counts again). `None` when the
    /// count failed.
    pub async fn recounted(&self, started: Instant, epoch: u64, snapshot: Option<Snapshot>) {
        {
            let mut inner = self.inner.lock().await;
            if let Some(snapshot) = snapshot
                && inner.epoch == epoch
            {
                inner.base = Some(Base { snapshot, at: started, deleted: 0 });
                inner.served = None;
            }
        }
        self.recounting.store(false, Ordering::Release);
    }

    /// Drops what is known, so the next request counts the table in line.
    pub async fn forget(&self) {
        let mut inner = self.inner.lock().await;
        inner.epoch += 1;
        inner.base = None;
        inner.served = None;
    }

    /// This API deleted `rows` rows.
    pub async fn deleted(&self, rows: u64) {
        let mut inner = self.inner.lock().await;
        inner.epoch += 1;
        if let Some(base) = &mut inner.base {
            base.deleted = base.deleted.saturating_add(rows);
        }
        inner.served = None;
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    /// A database stand-in: the table's rows and the sinks' counter, and how often each was read.
    #[derive(Default)]
    struct Fake {
        rows: Cell<u64>,
        inserted: Cell<i64>,
        counts: Cell<u32>,
        reads: Cell<u32>,
    }

    impl Fake {
        /// The sink inserts `n` rows and counts them.
        fn sink_inserts(&self, n: u64) {
            self.rows.set(self.rows.get() + n);
            self.inserted.set(self.inserted.get() + i64::try_from(n).expect("small"));
        }

        async fn get(&self, c: &TotalCounter, now: Instant) -> Next {
            c.get::<(), _, _>(
                now,
                async || {
                    self.reads.set(self.reads.get() + 1);
                    Ok(self.inserted.get())
                },
                async || {
                    self.counts.set(self.counts.get() + 1);
                    Ok(Snapshot { rows: self.rows.get(), inserted: self.inserted.get() })
                },
            )
            .await
            .expect("infallible")
        }
    }

    fn served(n: Next) -> u64 {
        match n {
            Next::Serve(n) | Next::ServeAndRecount(n, _) => n,
        }
    }

    #[tokio::test]
    async fn the_total_follows_the_sinks_without_counting_again() {
        let (db, c, t0) = (Fake::default(), TotalCounter::default(), crate::clock::monotonic());
        db.rows.set(40); // rows from before the sinks' counter (an import)
        db.sink_inserts(60);
        assert_eq!(db.get(&c, t0).await, Next::Serve(100));
        db.sink_inserts(25);
        // Within the TTL the same figure, without a read.
        assert_eq!(db.get(&c, t0 + TOTAL_TTL / 2).await, Next::Serve(100));
        assert_eq!(db.reads.get(), 0);
        // After it, the sinks' counter moves the total; the table is not counted again.
        assert_eq!(db.get(&c, t0 + TOTAL_TTL).await, Next::Serve(125));
        c.deleted(30).await;
        db.rows.set(db.rows.get() - 30);
        assert_eq!(db.get(&c, t0 + TOTAL_TTL).await, Next::Serve(95), "a cleanup counts at once");
        assert_eq!((db.counts.get(), db.reads.get()), (1, 2));
    }

    #[tokio::test]
    async fn foreign_rows_are_picked_up_by_the_periodic_recount() {
        let (db, c, t0) = (Fake::default(), TotalCounter::default(), crate::clock::monotonic());
        db.sink_inserts(10);
        assert_eq!(db.get(&c, t0).await, Next::Serve(10));
        db.rows.set(db.rows.get() + 5); // written by something other than a sink
        let later = t0 + RECOUNT_PERIOD;
        let Next::ServeAndRecount(n, epoch) = db.get(&c, later).await else { panic!("a recount is due") };
        assert_eq!(n, 10, "served from the old base meanwhile");
        // One recount at a time.
        assert_eq!(db.get(&c, later + TOTAL_TTL).await, Next::Serve(10));
        c.recounted(later, epoch, Some(Snapshot { rows: db.rows.get(), inserted: db.inserted.get() })).await;
        assert_eq!(served(db.get(&c, later + TOTAL_TTL).await), 15);
    }

    #[tokio::test]
    async fn a_recount_older_than_a_cleanup_is_dropped() {
        let (db, c, t0) = (Fake::default(), TotalCounter::default(), crate::clock::monotonic());
        db.sink_inserts(50);
        db.get(&c, t0).await;
        let later = t0 + RECOUNT_PERIOD;
        let Next::ServeAndRecount(_, epoch) = db.get(&c, later).await else { panic!("a recount is due") };
        let before_cleanup = Snapshot { rows: db.rows.get(), inserted: db.inserted.get() };
        c.deleted(20).await;
        db.rows.set(30);
        c.recounted(later, epoch, Some(before_cleanup)).await;
        assert_eq!(served(db.get(&c, later + TOTAL_TTL).await), 30, "the cleanup's subtraction stands");
    }

    #[tokio::test]
    async fn a_counter_that_went_backwards_counts_in_line() {
        let (db, c, t0) = (Fake::default(), TotalCounter::default(), crate::clock::monotonic());
        db.sink_inserts(70);
        db.get(&c, t0).await;
        db.inserted.set(5); // a sink_state row deleted by hand
        assert_eq!(db.get(&c, t0 + TOTAL_TTL).await, Next::Serve(70));
        assert_eq!(db.counts.get(), 2);
    }
}
