//! The per-interface aggregates behind the interface statistics and the Prometheus metrics,
//! kept so that requests do not wait for them once they have been computed.
//!
//! They are a `GROUP BY host, interface_name` over every row: 11–16 s at 5 M rows on two cores
//! (SQLite walks the key index in group order and seeks each row; docs/performance.md), longer
//! than Prometheus waits for a scrape by default (10 s). So:
//!
//! - Only a request with nothing to serve (the first after start, the first after a cleanup)
//!   waits for a computation. The computation runs in a task of its own and stores its result
//!   itself, so a client that gives up first (a scrape timeout) does not waste it; requests that
//!   arrive meanwhile wait for that same computation.
//! - Aggregates older than [`Aggregates::max_age`] (5 s, or ten times what their computation took
//!   when that is longer) are served as they are, and the request that notices starts one
//!   recomputation in the background. A failed one keeps the last aggregates for another period
//!   rather than being retried at once. So a dashboard polling every few seconds cannot keep a
//!   core scanning the table.
//! - A cleanup by this API makes the next request compute them again: [`Aggregates::forget`] when
//!   it starts and when it ends (or fails, or is abandoned); a computation begun before either is
//!   discarded.
//!
//! The same shape as [`crate::total`]; the lasting fix, totals per interface kept by the sink in
//! its own transaction, would need a recount after each cleanup (a minimum cannot be subtracted).

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::sync::{Mutex, Notify};

use crate::{
    clock,
    epoch::{BumpOnDrop, Epoch},
    query::InterfaceAggregate,
    state::CACHE_TTL,
};

/// The aggregates as computed, shared by every response built from them.
#[derive(Debug)]
pub struct Figures {
    /// One entry per host and interface, in their order.
    pub rows: Vec<InterfaceAggregate>,
    /// When their computation started (Unix nanoseconds): what they describe.
    pub computed_at_ns: i64,
}

/// [`Figures`], shared.
pub type Rows = Arc<Figures>;

/// One computation's result.
#[derive(Debug)]
struct Computed {
    /// When it started (or, after a failed recomputation, when that started).
    at: Instant,
    /// How long it took.
    took: Duration,
    /// The aggregates.
    rows: Rows,
}

#[derive(Debug, Default)]
struct Inner {
    last: Option<Computed>,
    /// The value of [`Aggregates::epoch`] that `last` belongs to.
    epoch: u64,
}

/// The aggregates, kept (see the module documentation).
#[derive(Debug, Default)]
pub struct Aggregates {
    inner: Mutex<Inner>,
    /// Bumped by [`Self::forget`]; aggregates or a computation from another epoch are discarded.
    epoch: Epoch,
    /// A computation is running (cleared when its [`Computation`] is dropped, however it ends).
    computing: AtomicBool,
    /// Signalled when a computation ends.
    done: Notify,
}

impl Aggregates {
    /// How old aggregates whose computation took `took` may be served before one request starts
    /// a recomputation: [`CACHE_TTL`], or ten times `took` when that is longer.
    pub fn max_age(took: Duration) -> Duration {
        CACHE_TTL.max(took.saturating_mul(10))
    }

    /// The aggregates at `now`. `compute` runs only when there are none of the current epoch (and
    /// the caller waits for it) or when they are older than [`Self::max_age`] (in the background;
    /// the caller gets them as they are).
    pub async fn get<F>(self: &Arc<Self>, now: Instant, compute: F) -> Result<Rows, sea_orm::DbErr>
    where
        F: Future<Output = Result<Vec<InterfaceAggregate>, sea_orm::DbErr>> + Send + 'static,
    {
        loop {
            let epoch = self.epoch.current();
            let mut inner = self.inner.lock().await;
            if inner.epoch != epoch {
                *inner = Inner { epoch, last: None };
            }
            if let Some(last) = &inner.last {
                if now.saturating_duration_since(last.at) >= Self::max_age(last.took)
                    && let Some(c) = self.start(epoch, now)
                {
                    tokio::spawn(c.run(compute));
                }
                return Ok(Arc::clone(&last.rows));
            }
            // Nothing to serve: start a computation, or wait for the one running and look again.
            let done = self.done.notified();
            drop(inner);
            if let Some(c) = self.start(epoch, now) {
                return match tokio::spawn(c.run(compute)).await {
                    Ok(result) => result,
                    Err(e) => Err(sea_orm::DbErr::Custom(format!("interface aggregates: {e}"))),
                };
            }
            done.await;
        }
    }

    /// A computation for `epoch` started at `now`, unless one is running.
    fn start(self: &Arc<Self>, epoch: u64, now: Instant) -> Option<Computation> {
        (!self.computing.swap(true, Ordering::AcqRel)).then(|| Computation { aggregates: Arc::clone(self), epoch, started: now })
    }

    /// Drops the aggregates: the next request computes them again, and computations begun before
    /// now are discarded. Synchronous, so a guard can call it when dropped.
    pub fn forget(&self) {
        self.epoch.bump();
    }

    /// [`Self::forget`] now and again when the guard is dropped: held across a cleanup.
    #[must_use]
    pub fn forget_around(&self) -> BumpOnDrop<'_> {
        self.epoch.bump_around()
    }

    /// The epoch the aggregates served now belong to (caches built from them compare it).
    pub fn epoch(&self) -> u64 {
        self.epoch.current()
    }
}

/// A running computation: stores its result, if its epoch is still current, and wakes the
/// requests waiting for it.
#[derive(Debug)]
struct Computation {
    aggregates: Arc<Aggregates>,
    epoch: u64,
    started: Instant,
}

impl Computation {
    async fn run<F>(self, compute: F) -> Result<Rows, sea_orm::DbErr>
    where
        F: Future<Output = Result<Vec<InterfaceAggregate>, sea_orm::DbErr>>,
    {
        let computed_at_ns = clock::wall_ns();
        let result = compute.await.map(|rows| Arc::new(Figures { rows, computed_at_ns }));
        let took = clock::monotonic().saturating_duration_since(self.started);
        let a = &self.aggregates;
        let mut inner = a.inner.lock().await;
        if inner.epoch == self.epoch && a.epoch.current() == self.epoch {
            match &result {
                Ok(rows) => inner.last = Some(Computed { at: self.started, took, rows: Arc::clone(rows) }),
                // The last aggregates stay, for another period.
                Err(_) => {
                    if let Some(last) = &mut inner.last {
                        last.at = self.started;
                    }
                }
            }
        }
        drop(inner);
        if let Err(e) = &result {
            tracing::warn!(message = "Interface aggregates not computed.", error = %e);
        }
        result
    }
}

impl Drop for Computation {
    fn drop(&mut self) {
        self.aggregates.computing.store(false, Ordering::Release);
        self.aggregates.done.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use tokio::sync::oneshot;

    use super::*;

    type Result = std::result::Result<Vec<InterfaceAggregate>, sea_orm::DbErr>;

    /// A computation that counts its runs and, once `gate` opens (at once without one), answers
    /// one row of host `name` (or fails, for `"fail"`).
    fn computation(
        runs: &Arc<AtomicUsize>,
        name: &str,
        gate: Option<oneshot::Receiver<()>>,
    ) -> impl Future<Output = Result> + Send + 'static {
        let (runs, name) = (Arc::clone(runs), name.to_string());
        async move {
            runs.fetch_add(1, Ordering::SeqCst);
            if let Some(gate) = gate {
                let _ = gate.await;
            }
            if name == "fail" {
                return Err(sea_orm::DbErr::Custom("no database".into()));
            }
            Ok(vec![InterfaceAggregate { host: name, ..InterfaceAggregate::default() }])
        }
    }

    /// `get`, which must answer without waiting for a gated computation.
    async fn host(a: &Arc<Aggregates>, now: Instant, compute: impl Future<Output = Result> + Send + 'static) -> String {
        let figures =
            tokio::time::timeout(Duration::from_secs(5), a.get(now, compute)).await.expect("answered at once").expect("aggregates");
        figures.rows[0].host.clone()
    }

    /// Lets spawned computations run until none is (the test runtime has one thread).
    async fn settle(a: &Aggregates) {
        for _ in 0..1_000 {
            tokio::task::yield_now().await;
            if !a.computing.load(Ordering::SeqCst) {
                return;
            }
        }
        panic!("a computation is still running");
    }

    #[test]
    fn the_age_allowed_grows_with_the_cost_of_a_computation() {
        assert_eq!(Aggregates::max_age(Duration::from_millis(3)), CACHE_TTL);
        assert_eq!(Aggregates::max_age(Duration::from_secs(12)), Duration::from_secs(120));
    }

    #[tokio::test]
    async fn stale_aggregates_are_served_while_one_recomputation_runs() {
        let a = Arc::new(Aggregates::default());
        let runs = Arc::new(AtomicUsize::new(0));
        let t0 = clock::monotonic();
        assert_eq!(host(&a, t0, computation(&runs, "first", None)).await, "first");
        assert_eq!(host(&a, t0 + Duration::from_secs(1), computation(&runs, "unused", None)).await, "first");
        settle(&a).await;
        assert_eq!(runs.load(Ordering::SeqCst), 1);

        // Stale: the old rows at once, one recomputation in the background, not two.
        let late = t0 + CACHE_TTL * 2;
        let (open, gate) = oneshot::channel();
        let before_second = clock::wall_ns();
        assert_eq!(host(&a, late, computation(&runs, "second", Some(gate))).await, "first");
        assert_eq!(host(&a, late, computation(&runs, "unused", None)).await, "first");
        tokio::task::yield_now().await;
        assert_eq!(runs.load(Ordering::SeqCst), 2);
        open.send(()).expect("gate");
        settle(&a).await;
        assert_eq!(host(&a, late + Duration::from_secs(1), computation(&runs, "unused", None)).await, "second");
        settle(&a).await;
        assert_eq!(runs.load(Ordering::SeqCst), 2);

        // Figures say when they were computed, not when they were served.
        let served = a.get(late + Duration::from_secs(2), computation(&runs, "unused", None)).await.expect("aggregates");
        assert!(served.computed_at_ns >= before_second && served.computed_at_ns <= clock::wall_ns(), "{}", served.computed_at_ns);

        // The flag was cleared: the next stale request starts the next recomputation.
        let later = late + CACHE_TTL * 2;
        assert_eq!(host(&a, later, computation(&runs, "third", None)).await, "second");
        settle(&a).await;
        assert_eq!(runs.load(Ordering::SeqCst), 3);
        assert_eq!(host(&a, later, computation(&runs, "unused", None)).await, "third");
    }

    #[tokio::test]
    async fn a_failed_recomputation_keeps_the_last_aggregates_for_another_period() {
        let a = Arc::new(Aggregates::default());
        let runs = Arc::new(AtomicUsize::new(0));
        let t0 = clock::monotonic();
        assert_eq!(host(&a, t0, computation(&runs, "first", None)).await, "first");
        let late = t0 + CACHE_TTL * 2;
        assert_eq!(host(&a, late, computation(&runs, "fail", None)).await, "first");
        settle(&a).await;
        assert_eq!(runs.load(Ordering::SeqCst), 2);
        // Not retried at once: the failure starts a new period.
        assert_eq!(host(&a, late + Duration::from_secs(1), computation(&runs, "unused", None)).await, "first");
        settle(&a).await;
        assert_eq!(runs.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_cleanup_discards_computations_begun_before_it() {
        let a = Arc::new(Aggregates::default());
        let runs = Arc::new(AtomicUsize::new(0));
        let t0 = clock::monotonic();
        assert_eq!(host(&a, t0, computation(&runs, "before", None)).await, "before");
        // A recomputation starts, then a cleanup runs while it is still reading.
        let (open, gate) = oneshot::channel();
        let late = t0 + CACHE_TTL * 2;
        assert_eq!(host(&a, late, computation(&runs, "during", Some(gate))).await, "before");
        tokio::task::yield_now().await;
        drop(a.forget_around());
        // The next request finds nothing to serve and waits for the computation running; it
        // then computes afresh: neither the old aggregates nor those read during the cleanup.
        let next = tokio::spawn({
            let (a, runs) = (Arc::clone(&a), Arc::clone(&runs));
            async move { host(&a, late, computation(&runs, "after", None)).await }
        });
        tokio::task::yield_now().await;
        open.send(()).expect("gate");
        assert_eq!(next.await.expect("request"), "after");
        assert_eq!(runs.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_first_computation_outlives_the_request_that_started_it() {
        let a = Arc::new(Aggregates::default());
        let runs = Arc::new(AtomicUsize::new(0));
        let (open, gate) = oneshot::channel();
        // The client gives up (a scrape timeout shorter than the computation).
        let gave_up =
            tokio::time::timeout(Duration::from_millis(20), a.get(clock::monotonic(), computation(&runs, "first", Some(gate)))).await;
        assert!(gave_up.is_err());
        // Another request meanwhile waits for the same computation rather than starting one.
        let waiting = tokio::spawn({
            let a = Arc::clone(&a);
            let runs = Arc::clone(&runs);
            async move { host(&a, clock::monotonic(), computation(&runs, "second", None)).await }
        });
        tokio::task::yield_now().await;
        open.send(()).expect("gate");
        assert_eq!(waiting.await.expect("request"), "first");
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    }
}
