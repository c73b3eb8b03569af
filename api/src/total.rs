//! The table's row count (the `total` of unfiltered pages and of the service statistics)
//! without counting the table on the request path.
//!
//! `COUNT(*)` of 5 M rows takes 23 ms of CPU with warm pages, and 130 ms right after a commit
//! of the sink, because a commit makes every SQLite reader drop its page cache and memory map.
//! Recounting every few seconds put one of the box's two cores out of reach of the request
//! handlers for that long, and showed as the p99 of every page (docs/performance.md).
//!
//! Instead the table is counted rarely, in the same statement (one snapshot) as the sinks'
//! cumulative count of inserted rows, `SUM(sink_state.total_inserted)`, which a sink updates in
//! the transaction that inserts them. Between counts the total is the counted rows plus what the
//! sinks have inserted since.
//!
//! - Requests never wait for a read, except the first one (and the first after a cleanup), which
//!   counts the table in line. Once the served total is [`TOTAL_TTL`] old, the request that
//!   notices starts one background read of the sinks' counter (or, when the count is
//!   [`RECOUNT_PERIOD`] old, of a new count) and is served the last total; a failed read keeps
//!   the last total.
//! - A cleanup by this API makes the next request count the table again: [`TotalCounter::forget`]
//!   when it starts and when it ends (or fails, or is abandoned), and reads begun before either
//!   are discarded.
//! - Rows written by anything else (the Flask seed's import, another API replica's cleanup) are
//!   seen at the next count, at most [`RECOUNT_PERIOD`] plus the time to the next request later.
//!   A sinks' counter that went backwards (a `sink_state` row deleted) makes the next request
//!   count the table.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::sync::Mutex;

use crate::epoch::{BumpOnDrop, Epoch};

/// How long a total is served before the sinks' counter is read again.
pub const TOTAL_TTL: Duration = Duration::from_secs(1);

/// How old a count may grow before a background read counts the table again.
pub const RECOUNT_PERIOD: Duration = Duration::from_mins(5);

/// A count of the table and the sinks' inserted-row counter, read in one snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    /// `COUNT(*)` of `ntp_clients`.
    pub rows: u64,
    /// `SUM(total_inserted)` of `sink_state`.
    pub inserted: i64,
}

/// What a background read found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// A new count ([`Refresh::recount`]).
    Snapshot(Snapshot),
    /// The sinks' counter now.
    Inserted(i64),
}

#[derive(Debug, Clone, Copy)]
struct Base {
    snapshot: Snapshot,
    at: Instant,
}

#[derive(Debug, Default)]
struct Inner {
    base: Option<Base>,
    /// The total last served, and when it was read.
    served: Option<(Instant, u64)>,
    /// The value of [`TotalCounter::epoch`] that `base` belongs to.
    epoch: u64,
}

/// What the caller does next (see [`TotalCounter::get`]).
#[derive(Debug)]
pub enum Next {
    /// Serve this total.
    Serve(u64),
    /// Serve this total, and run this read in the background.
    ServeAndRefresh(u64, Refresh),
}

/// The total, kept.
#[derive(Debug, Default)]
pub struct TotalCounter {
    inner: Mutex<Inner>,
    /// Bumped by [`Self::forget`]; a base or a read from another epoch is discarded.
    epoch: Epoch,
    /// A background read is running (cleared when its [`Refresh`] is dropped, however it ends).
    refreshing: AtomicBool,
}

impl TotalCounter {
    /// The total at `now`. `count` counts the table; it runs in line only when there is no
    /// usable count (the first request, after a cleanup or a counter that went backwards).
    pub async fn get<E, FC>(self: &Arc<Self>, now: Instant, count: FC) -> Result<Next, E>
    where
        FC: AsyncFnOnce() -> Result<Snapshot, E>,
    {
        let epoch = self.epoch.current();
        let mut inner = self.inner.lock().await;
        if inner.epoch != epoch {
            *inner = Inner { epoch, ..Inner::default() };
        }
        let (Some(base), Some((at, n))) = (inner.base, inner.served) else {
            let snapshot = count().await?;
            *inner = Inner { base: Some(Base { snapshot, at: now }), served: Some((now, snapshot.rows)), epoch };
            return Ok(Next::Serve(snapshot.rows));
        };
        if now.saturating_duration_since(at) < TOTAL_TTL || self.refreshing.swap(true, Ordering::AcqRel) {
            return Ok(Next::Serve(n));
        }
        let recount = now.saturating_duration_since(base.at) >= RECOUNT_PERIOD;
        Ok(Next::ServeAndRefresh(n, Refresh { counter: Arc::clone(self), epoch, started: now, recount }))
    }

    /// Drops the count: the next request counts the table, and reads begun before now are
    /// discarded. Synchronous, so a guard can call it when dropped.
    pub fn forget(&self) {
        self.epoch.bump();
    }

    /// [`Self::forget`] now and again when the guard is dropped: held across a cleanup.
    #[must_use]
    pub fn forget_around(&self) -> BumpOnDrop<'_> {
        self.epoch.bump_around()
    }
}

/// A background read the caller runs ([`Next::ServeAndRefresh`]).
#[derive(Debug)]
pub struct Refresh {
    counter: Arc<TotalCounter>,
    epoch: u64,
    started: Instant,
    recount: bool,
}

impl Refresh {
    /// Count the table (in one statement with the sinks' counter) rather than read the counter.
    pub fn recount(&self) -> bool {
        self.recount
    }

    /// Applies what the read found (`None`: it failed, and the last total stays for another
    /// [`TOTAL_TTL`]).
    pub async fn finish(self, found: Option<Found>) {
        let mut inner = self.counter.inner.lock().await;
        if inner.epoch != self.epoch || self.counter.epoch.current() != self.epoch {
            return;
        }
        let Some(base) = inner.base else { return };
        match found {
            Some(Found::Snapshot(snapshot)) => {
                inner.base = Some(Base { snapshot, at: self.started });
                inner.served = Some((self.started, snapshot.rows));
            }
            Some(Found::Inserted(inserted)) => match added(base.snapshot.inserted, inserted) {
                Some(added) => inner.served = Some((self.started, base.snapshot.rows.saturating_add(added))),
                None => *inner = Inner { epoch: self.epoch, ..Inner::default() },
            },
            None => {
                if let Some((_, n)) = inner.served {
                    inner.served = Some((self.started, n));
                }
            }
        }
    }
}

impl Drop for Refresh {
    fn drop(&mut self) {
        self.counter.refreshing.store(false, Ordering::Release);
    }
}

/// Rows the sinks inserted between two readings of their counter; `None` when it went back.
fn added(then: i64, now: i64) -> Option<u64> {
    u64::try_from(now.checked_sub(then)?).ok()
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    /// A database stand-in: the table's rows and the sinks' counter, and how often it was counted.
    #[derive(Default)]
    struct Fake {
        rows: Cell<u64>,
        inserted: Cell<i64>,
        counts: Cell<u32>,
    }

    impl Fake {
        /// The sink inserts `n` rows and counts them.
        fn sink_inserts(&self, n: u64) {
            self.rows.set(self.rows.get() + n);
            self.inserted.set(self.inserted.get() + i64::try_from(n).expect("small"));
        }

        fn snapshot(&self) -> Snapshot {
            Snapshot { rows: self.rows.get(), inserted: self.inserted.get() }
        }

        async fn get(&self, c: &Arc<TotalCounter>, now: Instant) -> Next {
            c.get::<(), _>(now, async || {
                self.counts.set(self.counts.get() + 1);
                Ok(self.snapshot())
            })
            .await
            .expect("infallible")
        }

        /// Runs the background read a request asked for, as the API does; the total served.
        async fn serve(&self, c: &Arc<TotalCounter>, now: Instant) -> u64 {
            match self.get(c, now).await {
                Next::Serve(n) => n,
                Next::ServeAndRefresh(n, r) => {
                    let found = if r.recount() { Found::Snapshot(self.snapshot()) } else { Found::Inserted(self.inserted.get()) };
                    r.finish(Some(found)).await;
                    n
                }
            }
        }
    }

    fn setup() -> (Fake, Arc<TotalCounter>, Instant) {
        (Fake::default(), Arc::default(), crate::clock::monotonic())
    }

    #[tokio::test]
    async fn the_total_follows_the_sinks_without_counting_again() {
        let (db, c, t0) = setup();
        db.rows.set(40); // rows from before the sinks' counter (an import)
        db.sink_inserts(60);
        assert_eq!(db.serve(&c, t0).await, 100, "the first request counts");
        db.sink_inserts(25);
        assert_eq!(db.serve(&c, t0 + TOTAL_TTL / 2).await, 100, "within the TTL: the same figure");
        // The request after the TTL is served at once and reads the counter behind it.
        assert_eq!(db.serve(&c, t0 + TOTAL_TTL).await, 100);
        assert_eq!(db.serve(&c, t0 + TOTAL_TTL).await, 125);
        assert_eq!(db.counts.get(), 1, "the table was counted once");
    }

    #[tokio::test]
    async fn one_background_read_at_a_time_and_failures_keep_the_total() {
        let (db, c, t0) = setup();
        db.sink_inserts(10);
        db.serve(&c, t0).await;
        db.sink_inserts(5);
        let t1 = t0 + TOTAL_TTL;
        let Next::ServeAndRefresh(10, first) = db.get(&c, t1).await else { panic!("a read is due") };
        assert!(matches!(db.get(&c, t1).await, Next::Serve(10)), "no second read while one runs");
        first.finish(None).await;
        assert!(matches!(db.get(&c, t1).await, Next::Serve(10)), "a failed read keeps the total for a TTL");
        // A read that dies without finishing (a panicking task) frees the slot.
        let Next::ServeAndRefresh(_, dying) = db.get(&c, t1 + TOTAL_TTL).await else { panic!("a read is due") };
        drop(dying);
        assert_eq!(db.serve(&c, t1 + TOTAL_TTL).await, 10);
        assert_eq!(db.serve(&c, t1 + TOTAL_TTL).await, 15);
    }

    #[tokio::test]
    async fn foreign_rows_are_picked_up_by_the_periodic_recount() {
        let (db, c, t0) = setup();
        db.sink_inserts(10);
        db.serve(&c, t0).await;
        db.rows.set(db.rows.get() + 5); // written by something other than a sink
        let later = t0 + RECOUNT_PERIOD;
        let Next::ServeAndRefresh(n, r) = db.get(&c, later).await else { panic!("a recount is due") };
        assert!(r.recount());
        assert_eq!(n, 10, "served from the old count meanwhile");
        r.finish(Some(Found::Snapshot(db.snapshot()))).await;
        assert_eq!(db.serve(&c, later).await, 15);
    }

    #[tokio::test]
    async fn a_cleanup_makes_the_next_request_count_and_voids_older_reads() {
        let (db, c, t0) = setup();
        db.sink_inserts(50);
        db.serve(&c, t0).await;
        let later = t0 + RECOUNT_PERIOD;
        let Next::ServeAndRefresh(_, before_cleanup) = db.get(&c, later).await else { panic!("a recount is due") };
        let stale = db.snapshot();
        {
            let _cleanup = c.forget_around();
            db.rows.set(40); // deleting, chunk by chunk
            // A request during the cleanup counts what it sees...
            assert_eq!(db.serve(&c, later).await, 40);
            db.rows.set(30);
        }
        // ...and that count does not outlive the cleanup, nor does the read begun before it.
        before_cleanup.finish(Some(Found::Snapshot(stale))).await;
        assert_eq!(db.serve(&c, later).await, 30);
        assert_eq!(db.counts.get(), 3);
    }

    #[tokio::test]
    async fn a_counter_that_went_backwards_counts_in_line() {
        let (db, c, t0) = setup();
        db.sink_inserts(70);
        db.serve(&c, t0).await;
        db.inserted.set(5); // a sink_state row deleted by hand
        assert_eq!(db.serve(&c, t0 + TOTAL_TTL).await, 70, "served, and the read finds the counter went back");
        assert_eq!(db.serve(&c, t0 + TOTAL_TTL).await, 70);
        assert_eq!(db.counts.get(), 2, "counted again");
    }
}
