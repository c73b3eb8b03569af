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
    /// Cached interface statistics, with the epoch of the aggregates they were built from.
    pub interface_stats: Arc<Mutex<Option<(Instant, u64, InterfaceStatisticsList)>>>,
    /// The per-interface aggregates behind them, served as last computed while they are
    /// recomputed.
    pub aggregates: Arc<crate::aggregates::Aggregates>,
    /// Cached health report.
    pub health: Arc<Mutex<Option<(Instant, Health)>>>,
}

/// How long cached aggregates live.
pub const CACHE_TTL: Duration = Duration::from_secs(5);

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
