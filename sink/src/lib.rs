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
pub mod wal;

use std::{
    future::Future,
    sync::Arc,
    time::{Duration, Instant},
};

use sea_orm::EntityTrait;

pub use ntpscope_bus::shutdown_signal;

pub use crate::config::{Cli, Config};

/// Runs the sink until `shutdown` resolves, then commits the batches in hand (the one being
/// written, the one waiting behind it and the one being received), acks them and drains.
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
        config.db_heartbeat,
        config.applied_retention,
        stop_rx.clone(),
    ));
    let loop_cfg = consume::LoopConfig {
        consumer: config.consumer.clone(),
        batch_size: config.batch_size,
        batch_interval: config.batch_interval,
        ack_wait: config.ack_wait,
        max_messages: usize::try_from(config.max_ack_pending / 2).unwrap_or(1).max(1),
        wal: wal::WalLimit::of(&db, &config.database_url).await?,
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

/// Keeps a database outage from writing a warning at every status tick (a full disk for an hour
/// would be 1 800 lines at the default interval): the first failed heartbeat is logged, then one
/// line a minute with the count so far, and the recovery once, with how long it lasted.
#[derive(Debug, Default)]
struct Outage {
    began: Option<Instant>,
    last_logged: Option<Instant>,
    failures: u64,
}

impl Outage {
    /// How often a continuing outage is logged.
    const EVERY: Duration = Duration::from_mins(1);

    /// A check found the heartbeat failed, or still waiting past its limit, at `now`: the failed
    /// checks so far when it should be logged.
    fn failed(&mut self, now: Instant) -> Option<u64> {
        self.failures += 1;
        self.began.get_or_insert(now);
        let due = self.last_logged.is_none_or(|t| now.saturating_duration_since(t) >= Self::EVERY);
        due.then(|| {
            self.last_logged = Some(now);
            self.failures
        })
    }

    /// A heartbeat went through at `now`: how long the outage lasted and its failures, if one
    /// just ended.
    fn ended(&mut self, now: Instant) -> Option<(Duration, u64)> {
        let began = self.began.take()?;
        self.last_logged = None;
        Some((now.saturating_duration_since(began), std::mem::take(&mut self.failures)))
    }
}

/// When the sink's database row gets a heartbeat: only when nothing has written it for `every`.
///
/// Every batch commit already writes the row, and an idle sink's status is on the bus at every
/// tick; a commit each tick as well would change nothing the API shows, and each commit makes
/// every SQLite reader of the API drop its page cache and memory map (docs/performance.md). So
/// the row is written when it would otherwise grow older than `every`, at the first tick (a sink
/// that has applied nothing is still seen), at each tick after a failed attempt (so that a
/// database that accepts writes again is noticed at once), and when the wall clock stepped back.
/// The other ticks only probe the write lock ([`store::probe_write`]).
#[derive(Debug, Clone, Copy)]
struct HeartbeatSchedule {
    every_ns: i64,
    /// Wall time of the last heartbeat the database took.
    last_ok_ns: Option<i64>,
    /// Whether the last attempt failed.
    failed: bool,
}

impl HeartbeatSchedule {
    fn new(every: Duration) -> Self {
        Self { every_ns: i64::try_from(every.as_nanos()).unwrap_or(i64::MAX), last_ok_ns: None, failed: false }
    }

    /// Whether to write at `now`, given the last batch commit (`0` when none is known).
    fn due(&self, last_commit_ns: i64, now: i64) -> bool {
        match self.last_ok_ns {
            None => true,
            Some(_) if self.failed => true,
            Some(ok) => {
                // A commit time ahead of `now` (the clock stepped back since) does not count.
                let age = now.saturating_sub(ok.max(last_commit_ns.min(now)));
                age >= self.every_ns || age < 0
            }
        }
    }

    fn written(&mut self, at_ns: i64) {
        self.last_ok_ns = Some(at_ns);
        self.failed = false;
    }

    fn failed(&mut self) {
        self.failed = true;
    }
}

type HeartbeatTask = tokio::task::JoinHandle<Result<(), sea_orm::DbErr>>;

/// Every `interval`: refresh the queue size from the consumer and publish the status document;
/// write the database heartbeat when [`HeartbeatSchedule`] says so; every few minutes, forget
/// applied message ids older than the retention.
#[allow(clippy::too_many_arguments)]
async fn report_status(
    mut consumer: async_nats::jetstream::consumer::PullConsumer,
    db: sea_orm::DatabaseConnection,
    kv: async_nats::jetstream::kv::Store,
    name: String,
    stats: Arc<stats::SinkStats>,
    interval: Duration,
    db_heartbeat: Duration,
    retention: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let Ok(key) = ntp_wire::subject::sink_status_key(&name) else { return };
    let mut tick = tokio::time::interval(interval);
    let mut last_prune = clock::monotonic();
    // The heartbeat in flight: its task, when it started (monotonic), and the time it writes
    // into the row (`None` for a probe, which writes nothing).
    let mut heartbeat: Option<(HeartbeatTask, std::time::Instant, Option<i64>)> = None;
    let mut schedule = HeartbeatSchedule::new(db_heartbeat);
    let mut outage = Outage::default();
    // The row first, before the first status on the bus: a sink alive on the bus without a row
    // in the API's database looks like one that writes another database. A database that does
    // not answer in time is left to the loop's heartbeat, which reports it.
    let now = clock::wall_ns();
    if let Ok(Ok(())) =
        tokio::time::timeout(HEARTBEAT_LIMIT, store::heartbeat(&db, &name, ntp_wire::subject::STREAM, stats.queue_size(), now)).await
    {
        schedule.written(now);
    }
    // A batch committed since the last tick proves the database takes writes: no probe then
    // (a probe would wait for the batch's transaction on the sink's one connection).
    let mut commit_seen = stats.last_commit_ns();
    loop {
        let done = tokio::select! {
            _ = tick.tick() => false,
            _ = stop.changed() => true,
        };
        if let Ok(info) = consumer.info().await {
            stats.set_queue_size(info.num_pending + u64::try_from(info.num_ack_pending).unwrap_or(0));
        }
        let now = clock::wall_ns();
        // A locked, full or unreachable database is what the operator must see. A heartbeat runs
        // beside this loop (so the status on the bus stays fresh while the database hangs): the
        // row's write when it is due, otherwise, unless a batch committed since the last tick,
        // a probe that takes the write lock and gives it back. One that has not finished after
        // HEARTBEAT_LIMIT is reported as failing.
        if let Some((task, started, at)) = &heartbeat {
            if task.is_finished() {
                let at = *at;
                let (task, _, _) = heartbeat.take().expect("checked above");
                match task.await {
                    Ok(Ok(())) => {
                        if let Some(at) = at {
                            schedule.written(at);
                        }
                        stats.heartbeat_ok();
                        if let Some((lasted, failed_checks)) = outage.ended(clock::monotonic()) {
                            tracing::info!(message = "The database takes writes again.", after = ?lasted, failed_checks);
                        }
                    }
                    Ok(Err(e)) => {
                        if let Some(failed_checks) = outage.failed(clock::monotonic()) {
                            tracing::warn!(message = "Heartbeat not written to the database.", error = %e, failed_checks);
                        }
                        schedule.failed();
                        stats.heartbeat_failed(&format!("heartbeat: {e}"));
                    }
                    Err(e) => {
                        if let Some(failed_checks) = outage.failed(clock::monotonic()) {
                            tracing::warn!(message = "The heartbeat task failed.", error = %e, failed_checks);
                        }
                        schedule.failed();
                        stats.heartbeat_failed(&format!("heartbeat: {e}"));
                    }
                }
            } else if started.elapsed() > HEARTBEAT_LIMIT {
                if let Some(failed_checks) = outage.failed(clock::monotonic()) {
                    tracing::warn!(message = "The database accepts no write (locked?).", waited = ?started.elapsed(), failed_checks);
                }
                stats.heartbeat_failed(&format!(
                    "heartbeat: the database has accepted no write for {:.0?} (locked by another process?)",
                    started.elapsed()
                ));
            }
        }
        if heartbeat.is_none() {
            let (db, name, queue) = (db.clone(), name.clone(), stats.queue_size());
            let last_commit = stats.last_commit_ns();
            let write = schedule.due(last_commit, now);
            let committed_since = std::mem::replace(&mut commit_seen, last_commit) != last_commit;
            heartbeat = (write || !committed_since).then(|| {
                (
                    tokio::spawn(async move {
                        if write {
                            store::heartbeat(&db, &name, ntp_wire::subject::STREAM, queue, now).await
                        } else {
                            store::probe_write(&db).await
                        }
                    }),
                    clock::monotonic(),
                    write.then_some(now),
                )
            });
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

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;

    #[test]
    fn an_outage_is_logged_when_it_begins_once_a_minute_and_when_it_ends() {
        let t0 = clock::monotonic();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut o = Outage::default();
        assert_eq!(o.ended(at(0)), None, "no outage, nothing to report");
        // Failing every 2 s for 150 s: logged at 0, 60 and 120 s with the count so far.
        let logged: Vec<(u64, u64)> = (0..75).filter_map(|k| o.failed(at(2 * k)).map(|n| (2 * k, n))).collect();
        assert_eq!(logged, [(0, 1), (60, 31), (120, 61)]);
        assert_eq!(o.ended(at(151)), Some((Duration::from_secs(151), 75)));
        assert_eq!(o.ended(at(152)), None, "reported once");
        // The next outage starts afresh and is logged at once.
        assert_eq!(o.failed(at(200)), Some(1));
    }

    #[test]
    fn an_idle_sink_writes_its_heartbeat_once_per_period_and_a_busy_one_never() {
        let mut h = HeartbeatSchedule::new(Duration::from_secs(10));
        // The first tick writes, whatever the last commit (a fresh sink must be seen).
        assert!(h.due(0, 100 * S));
        h.written(100 * S);
        // Idle, ticking every 2 s: the next write comes 10 s after the last one.
        let due: Vec<i64> = (1..=12).map(|k| 100 * S + 2 * k * S).filter(|&t| h.due(0, t)).collect();
        assert_eq!(due.first(), Some(&(110 * S)), "{due:?}");
        // Batches committing every second keep the row fresh: no heartbeat at all.
        let mut last_commit = 100 * S;
        for t in (101..200).map(|s| s * S) {
            last_commit = t - S / 2;
            assert!(!h.due(last_commit, t), "at {t}");
        }
        // The batches stop: the heartbeat resumes 10 s after the last commit.
        assert!(!h.due(last_commit, last_commit + 9 * S));
        assert!(h.due(last_commit, last_commit + 10 * S));
    }

    #[test]
    fn a_failed_heartbeat_is_retried_at_the_next_tick() {
        let mut h = HeartbeatSchedule::new(Duration::from_secs(10));
        h.written(0);
        assert!(!h.due(0, S));
        h.failed();
        assert!(h.due(0, 2 * S));
        h.written(2 * S);
        assert!(!h.due(0, 4 * S));
        // A clock stepped back does not silence the heartbeat until it catches up, and one
        // write puts the schedule back on the new time, even after a commit stamped ahead of it.
        assert!(h.due(0, S));
        let ahead = 4 * S;
        h.written(S);
        assert!(!h.due(ahead, 2 * S), "written at every tick while the clock catches up");
        assert!(!h.due(ahead, 13 * S));
        assert!(h.due(ahead, 14 * S));
    }
}
