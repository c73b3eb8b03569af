//! Shared state of the API: the database, the (optional, reconnecting) NATS connection, tokens,
//! and the caches that keep expensive aggregates off the request path.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use async_nats::jetstream;
use sea_orm::DatabaseConnection;
use tokio::sync::{Mutex, RwLock};

use crate::{
    auth::Tokens,
    clock,
    dto::{Health, InterfaceStatisticsList},
    query,
    total::{Found, Next, TotalCounter},
};

/// The NATS side, once connected.
#[derive(Clone, Debug)]
pub struct Bus {
    /// Core client (control requests).
    pub client: async_nats::Client,
    /// JetStream (stream and consumer state).
    pub js: jetstream::Context,
    /// Status bucket.
    pub kv: Option<jetstream::kv::Store>,
}

/// Everything handlers need.
#[derive(Clone, Debug)]
pub struct AppState {
    /// Database (read pool; cleanup writes in short chunks).
    pub db: DatabaseConnection,
    /// Read-only rusqlite pool of the same file, when the database is SQLite on disk (hot reads).
    pub reader: Option<Arc<crate::reader::SqliteReader>>,
    /// NATS, when reachable.
    pub bus: Arc<RwLock<Option<Bus>>>,
    /// Tokens.
    pub tokens: Arc<Tokens>,
    /// Export row cap.
    pub max_export_rows: u64,
    /// Control timeout.
    pub control_timeout: Duration,
    /// Sink consumer name.
    pub consumer: String,
    /// Longest a request may take until its response starts (`--request-timeout`); 504 after.
    pub request_timeout: Duration,
    /// Public base URL for the OpenAPI document's `servers` (`--public-url`).
    pub public_url: Option<String>,
    /// The table's row count, kept without `COUNT(*)` on the request path.
    pub total: Arc<TotalCounter>,
    /// Cached interface statistics.
    pub interface_stats: Arc<Mutex<Option<(Instant, InterfaceStatisticsList)>>>,
    /// The per-interface aggregates behind them, served stale while they are recomputed.
    pub aggregates: Arc<Aggregates>,
    /// Cached health report.
    pub health: Arc<Mutex<Option<(Instant, Health)>>>,
}

/// How long cached aggregates live.
pub const CACHE_TTL: Duration = Duration::from_secs(5);

/// The per-interface aggregates (`GROUP BY host, interface_name` over the whole table), kept so
/// that no request waits for them once they have been computed.
///
/// They read every row: 11–16 s at 5 M rows on two cores (SQLite walks the key index and seeks
/// each row; docs/performance.md), longer than Prometheus waits for a scrape by default (10 s).
/// So a request that finds them older than [`Aggregates::max_age`] gets them as they are and starts
/// one recomputation in the background; only the first request, with nothing to serve, waits. The
/// age allowed grows with what a computation cost (ten times its duration), so that a dashboard
/// polling every few seconds cannot keep a core scanning the table. A cleanup through the API
/// forgets them ([`Aggregates::forget`]): the next request computes them again in line.
#[derive(Debug, Default)]
pub struct Aggregates {
    /// The last computation, when one has finished.
    last: Mutex<Option<Computed>>,
    /// A recomputation is running.
    refreshing: Arc<std::sync::atomic::AtomicBool>,
}

/// One computation of the aggregates.
#[derive(Debug)]
struct Computed {
    /// When it finished.
    at: Instant,
    /// How long it took.
    took: Duration,
    rows: Arc<Vec<query::InterfaceAggregate>>,
}

impl Aggregates {
    /// How old aggregates that took `took` to compute may be served without starting another
    /// computation: [`CACHE_TTL`], or ten times `took` when that is longer.
    pub fn max_age(took: Duration) -> Duration {
        CACHE_TTL.max(took.saturating_mul(10))
    }

    /// The aggregates at `now`: the last ones computed, unless there are none (then `compute` runs
    /// and the caller waits for it). When they are older than [`Self::max_age`], `compute` runs in
    /// a task of its own (one at a time) and its result serves later requests.
    pub async fn get<F>(self: &Arc<Self>, now: Instant, compute: F) -> Result<Arc<Vec<query::InterfaceAggregate>>, sea_orm::DbErr>
    where
        F: Future<Output = Result<Vec<query::InterfaceAggregate>, sea_orm::DbErr>> + Send + 'static,
    {
        use std::sync::atomic::Ordering;
        let mut last = self.last.lock().await;
        if let Some(c) = &*last {
            if now.saturating_duration_since(c.at) >= Self::max_age(c.took) && !self.refreshing.swap(true, Ordering::AcqRel) {
                let this = Arc::clone(self);
                tokio::spawn(async move {
                    let started = clock::monotonic();
                    match compute.await {
                        Ok(rows) => {
                            let done = Computed { at: clock::monotonic(), took: started.elapsed(), rows: Arc::new(rows) };
                            *this.last.lock().await = Some(done);
                        }
                        Err(e) => tracing::warn!(message = "Interface aggregates not recomputed; the last ones stay.", error = %e),
                    }
                    this.refreshing.store(false, Ordering::Release);
                });
            }
            return Ok(Arc::clone(&c.rows));
        }
        // Nothing to serve yet: compute in line, holding the lock so that concurrent first
        // requests wait for this computation instead of starting their own.
        let started = clock::monotonic();
        let rows = Arc::new(compute.await?);
        *last = Some(Computed { at: clock::monotonic(), took: started.elapsed(), rows: Arc::clone(&rows) });
        Ok(rows)
    }

    /// Forgets the last computation (after a cleanup): the next request computes in line. A
    /// recomputation already running may still store its (older) result.
    pub async fn forget(&self) {
        *self.last.lock().await = None;
    }
}

/// How long a health report is reused. Probes may poll as fast as they like: the checks (a
/// database query, three NATS round trips) run at most once per period, by one request at a
/// time, while the others wait for its answer.
pub const HEALTH_TTL: Duration = Duration::from_secs(1);

impl AppState {
    /// The bus, if connected.
    pub async fn bus(&self) -> Option<Bus> {
        self.bus.read().await.clone()
    }

    /// The table's row count (see [`crate::total`]): the last count plus what the sinks have
    /// inserted since. Only the first request (and the first after a cleanup) waits for a
    /// count; refreshes run in the background.
    pub async fn total_clients(&self) -> Result<u64, crate::error::ApiError> {
        match self.total.get(clock::monotonic(), async || query::count_snapshot(self).await).await? {
            Next::Serve(n) => Ok(n),
            Next::ServeAndRefresh(n, refresh) => {
                let state = self.clone();
                tokio::spawn(async move {
                    let found = if refresh.recount() {
                        query::count_snapshot(&state).await.map(Found::Snapshot)
                    } else {
                        query::sink_inserted(&state).await.map(Found::Inserted)
                    };
                    if let Err(e) = &found {
                        tracing::warn!(message = "Reading the client count failed; keeping the last total.", error = ?e);
                    }
                    refresh.finish(found.ok()).await;
                });
                Ok(n)
            }
        }
    }

    /// The health report, at most [`HEALTH_TTL`] old.
    pub async fn health(&self) -> Health {
        let mut cache = self.health.lock().await;
        if let Some((at, h)) = &*cache
            && at.elapsed() < HEALTH_TTL
        {
            return h.clone();
        }
        let h = crate::health::check(self).await;
        *cache = Some((clock::monotonic(), h.clone()));
        h
    }
}

/// Connects to NATS in the background and keeps trying until it succeeds; the API serves
/// history without NATS meanwhile (control and bus statistics report it as unavailable).
pub fn connect_bus_in_background(cfg: ntpscope_bus::NatsConfig, slot: Arc<RwLock<Option<Bus>>>) {
    tokio::spawn(async move {
        let mut cfg = cfg;
        cfg.connect_timeout = Duration::from_secs(3);
        loop {
            match ntpscope_bus::connect(&cfg).await {
                Ok(client) => {
                    let js = jetstream::new(client.clone());
                    let kv = js.get_key_value(ntp_wire::subject::STATUS_BUCKET).await.ok();
                    *slot.write().await = Some(Bus { client, js, kv });
                    tracing::info!(message = "Connected to NATS.", url = %cfg.url);
                    // The bucket may appear later (first agent or sink); look again while absent.
                    loop {
                        tokio::time::sleep(Duration::from_secs(5)).await;
                        let mut guard = slot.write().await;
                        if let Some(bus) = guard.as_mut()
                            && bus.kv.is_none()
                        {
                            bus.kv = bus.js.get_key_value(ntp_wire::subject::STATUS_BUCKET).await.ok();
                        } else {
                            break;
                        }
                    }
                    return;
                }
                Err(e) => {
                    tracing::warn!(message = "NATS not reachable; retrying.", error = %e);
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::query::InterfaceAggregate;

    type Rows = Result<Vec<InterfaceAggregate>, sea_orm::DbErr>;

    /// A computation that counts its runs and answers one row of host `name`, once `gate` opens.
    fn computation(
        runs: &Arc<AtomicUsize>,
        name: &str,
        gate: Option<tokio::sync::oneshot::Receiver<()>>,
    ) -> impl Future<Output = Rows> + Send + 'static {
        let (runs, name) = (Arc::clone(runs), name.to_string());
        async move {
            runs.fetch_add(1, Ordering::SeqCst);
            if let Some(gate) = gate {
                let _ = gate.await;
            }
            Ok(vec![InterfaceAggregate { host: name, ..InterfaceAggregate::default() }])
        }
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
        let host = |r: Result<Arc<Vec<InterfaceAggregate>>, sea_orm::DbErr>| r.expect("aggregates")[0].host.clone();

        // Nothing yet: the first request computes and waits.
        let t0 = clock::monotonic();
        assert_eq!(host(a.get(t0, computation(&runs, "first", None)).await), "first");
        // Fresh: nothing runs.
        assert_eq!(host(a.get(t0 + Duration::from_secs(1), computation(&runs, "unused", None)).await), "first");
        assert_eq!(runs.load(Ordering::SeqCst), 1);

        // Stale: the old rows at once, one recomputation in the background, not two.
        let late = clock::monotonic() + CACHE_TTL * 2;
        let (open, gate) = tokio::sync::oneshot::channel();
        assert_eq!(host(a.get(late, computation(&runs, "second", Some(gate))).await), "first");
        assert_eq!(host(a.get(late, computation(&runs, "unused", None)).await), "first");
        tokio::task::yield_now().await;
        assert_eq!(runs.load(Ordering::SeqCst), 2);
        open.send(()).expect("gate");
        for _ in 0..500 {
            if !a.refreshing.load(Ordering::SeqCst) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(host(a.get(clock::monotonic(), computation(&runs, "unused", None)).await), "second");
        assert_eq!(runs.load(Ordering::SeqCst), 2);

        // Forgotten (a cleanup): the next request computes in line again.
        a.forget().await;
        assert_eq!(host(a.get(clock::monotonic(), computation(&runs, "third", None)).await), "third");
        assert_eq!(runs.load(Ordering::SeqCst), 3);
    }
}
