//! `ntpscope-sink`: a durable JetStream consumer that keeps per-client NTP history in SQLite or
//! PostgreSQL, losing nothing and counting nothing twice.
//!
//! # Layout
//! - [`config`]: flags and the seed's environment variables → [`Config`].
//! - [`db`]: opening SQLite (WAL, busy timeout) or PostgreSQL, and migrating.
//! - [`aggregate`]: records → one delta per client (pure).
//! - [`store`]: the upserts and bookkeeping of one batch, in the caller's transaction.
//! - [`consume`]: pull, batch, commit, ack; dead letters; retries.
//! - [`stats`]: counters persisted in `sink_state` and published in the status bucket.
//! - [`clock`]: the sink's clock reads.
//!
//! The sink never depends on libpcap, the capture crates or the API.
#![deny(clippy::unwrap_used)]

pub mod aggregate;
pub mod clock;
pub mod config;
pub mod consume;
pub mod db;
pub mod stats;
pub mod store;

use std::{future::Future, sync::Arc, time::Duration};

use sea_orm::EntityTrait;

pub use ntpscope_bus::shutdown_signal;

pub use crate::config::{Cli, Config};

/// Runs the sink until `shutdown` resolves, then commits the batch in hand, acks it and drains.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let db = db::connect_and_migrate(&config.database_url).await?;
    let client = ntpscope_bus::connect(&config.nats).await?;
    let js = async_nats::jetstream::new(client.clone());
    ntpscope_bus::ensure_stream(&js, &config.stream).await?.log();
    let row = entity::sink_state::Entity::find_by_id(config.consumer.clone()).one(&db).await?;
    let hint = store::resume_hint(&db).await?.or_else(|| row.as_ref().map(|r| u64::try_from(r.last_sequence).unwrap_or(0) + 1));
    let consumer = consume::ensure_consumer(&js, &config, hint).await?;
    let kv = ntpscope_bus::status_store(&js, &config.stream).await?;
    let stats = Arc::new(stats::SinkStats::from_row(row.as_ref()));
    tracing::info!(
        message = "Sink started.",
        consumer = %config.consumer,
        database = %db::redact(&config.database_url),
        batch_size = config.batch_size,
        batch_interval = ?config.batch_interval,
    );
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let reporter = tokio::spawn(report_status(
        consumer.clone(),
        db.clone(),
        kv,
        config.consumer.clone(),
        stats.clone(),
        config.status_interval,
        config.applied_retention,
        stop_rx.clone(),
    ));
    let loop_cfg = consume::LoopConfig {
        consumer: config.consumer.clone(),
        batch_size: config.batch_size,
        batch_interval: config.batch_interval,
        ack_wait: config.ack_wait,
        max_messages: usize::try_from(config.max_ack_pending / 2).unwrap_or(1).max(1),
    };
    let consume = tokio::spawn(consume::run(js, consumer, db.clone(), loop_cfg, stats.clone(), stop_rx));
    let mut consume = std::pin::pin!(consume);
    let res = tokio::select! {
        res = &mut consume => res,
        () = shutdown => {
            let _ = stop_tx.send(true);
            consume.await
        }
    };
    let _ = stop_tx.send(true);
    let _ = reporter.await;
    client.flush().await.ok();
    if let Some((p50, p99, max)) = stats.lag_quantiles() {
        tracing::info!(message = "Sink stopped.", lag_p50_ms = p50, lag_p99_ms = p99, lag_max_ms = max);
    } else {
        tracing::info!(message = "Sink stopped.");
    }
    res.map_err(|e| anyhow::anyhow!("consumer task: {e}"))?
}

/// How long a heartbeat write may wait before the database counts as failing: longer than the
/// longest batch commit holding SQLite's write lock (a second or two at 50 000 records).
const HEARTBEAT_LIMIT: Duration = Duration::from_secs(3);

/// Every `interval`: refresh the queue size from the consumer, persist it, publish the status
/// document; every few minutes, forget applied message ids older than the retention.
#[allow(clippy::too_many_arguments)]
async fn report_status(
    mut consumer: async_nats::jetstream::consumer::PullConsumer,
    db: sea_orm::DatabaseConnection,
    kv: async_nats::jetstream::kv::Store,
    name: String,
    stats: Arc<stats::SinkStats>,
    interval: Duration,
    retention: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let Ok(key) = ntp_wire::subject::sink_status_key(&name) else { return };
    let mut tick = tokio::time::interval(interval);
    let mut last_prune = clock::monotonic();
    let mut heartbeat: Option<(tokio::task::JoinHandle<Result<(), sea_orm::DbErr>>, std::time::Instant)> = None;
    loop {
        let done = tokio::select! {
            _ = tick.tick() => false,
            _ = stop.changed() => true,
        };
        if let Ok(info) = consumer.info().await {
            stats.set_queue_size(info.num_pending + u64::try_from(info.num_ack_pending).unwrap_or(0));
        }
        let now = clock::wall_ns();
        // A locked, full or unreachable database is what the operator must see. The heartbeat
        // runs beside this loop, so the status on the bus stays fresh while the database hangs;
        // one that has not finished after HEARTBEAT_LIMIT is reported as failing.
        if let Some((task, started)) = &heartbeat {
            if task.is_finished() {
                let (task, _) = heartbeat.take().expect("checked above");
                match task.await {
                    Ok(Ok(())) => stats.heartbeat_ok(),
                    Ok(Err(e)) => {
                        tracing::warn!(message = "Heartbeat not written to the database.", error = %e);
                        stats.heartbeat_failed(&format!("heartbeat: {e}"));
                    }
                    Err(e) => stats.heartbeat_failed(&format!("heartbeat: {e}")),
                }
            } else if started.elapsed() > HEARTBEAT_LIMIT {
                tracing::warn!(message = "The database accepts no write (locked?).", waited = ?started.elapsed());
                stats.heartbeat_failed(&format!(
                    "heartbeat: the database has accepted no write for {:.0?} (locked by another process?)",
                    started.elapsed()
                ));
            }
        }
        if heartbeat.is_none() {
            let (db, name, queue) = (db.clone(), name.clone(), stats.queue_size());
            heartbeat = Some((
                tokio::spawn(async move { store::heartbeat(&db, &name, ntp_wire::subject::STREAM, queue, now).await }),
                clock::monotonic(),
            ));
        }
        if last_prune.elapsed() > Duration::from_mins(5) {
            let cutoff = now - i64::try_from(retention.as_nanos()).unwrap_or(i64::MAX);
            match store::prune_applied(&db, cutoff).await {
                Ok(n) if n > 0 => tracing::info!(message = "Forgot old applied message ids.", count = n),
                Ok(_) => {}
                Err(e) => tracing::warn!(message = "Pruning applied ids failed.", error = %e),
            }
            last_prune = clock::monotonic();
        }
        if let Ok(bytes) = ntp_wire::status::encode(&stats.status(&name))
            && let Err(e) = kv.put(key.as_str(), bytes.into()).await
        {
            tracing::debug!(message = "Status not published.", error = %e);
        }
        if done || *stop.borrow() {
            break;
        }
    }
}
