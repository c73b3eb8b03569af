//! The consumer loop: pull from the durable consumer, batch, commit, then ack.
//!
//! **Exactly-once effect.** A message is acknowledged only after the transaction that applied it
//! has committed, and that transaction also records the message id (and the highest stream
//! sequence) in `applied_batches`/`sink_state`. A redelivered message, or a copy re-published by
//! an agent after JetStream's duplicate window, finds its id there and changes nothing. Skipping
//! by id rather than by "sequence ≤ last applied" matters: JetStream redelivers an unacknowledged
//! message after `ack_wait`, by which time later sequences may already be committed, so a
//! sequence watermark alone would drop it.
//!
//! **Poison messages** (undecodable, newer schema, agent/interface not matching the subject) are
//! copied to `ntp.v1.deadletter.<agent>.<interface>` with the reason in a header, counted, and
//! terminated (`AckKind::Term`), so they are never redelivered and the pipeline keeps flowing.
//!
//! **Database failures** are retried in place with back-off while the batch's messages get
//! `AckKind::Progress` so JetStream does not redeliver them meanwhile; on shutdown during a retry
//! nothing is acknowledged and JetStream redelivers later.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use async_nats::jetstream::{
    self, AckKind,
    consumer::{PullConsumer, pull},
    context::ConsumerInfoErrorKind,
    message::PublishMessage,
};
use futures_util::StreamExt;
use ntp_wire::{Batch, WireError, batch, subject};
use ntpscope_bus::{Backoff, BusError, retry_transient};
use sea_orm::DatabaseConnection;

use crate::{
    aggregate, clock,
    stats::SinkStats,
    store::{self, StateDelta},
};

/// One delivered message and what became of it.
struct Delivered {
    msg: jetstream::Message,
    seq: u64,
    decoded: Result<Batch, WireError>,
}

/// Loop settings.
#[derive(Debug, Clone)]
pub struct LoopConfig {
    /// Durable consumer name.
    pub consumer: String,
    /// Records per transaction.
    pub batch_size: usize,
    /// Longest a partial batch waits.
    pub batch_interval: Duration,
    /// The consumer's ack wait (progress acks are sent well within it).
    pub ack_wait: Duration,
    /// Messages in hand at most.
    pub max_messages: usize,
}

/// Creates the durable pull consumer, restarting delivery just after its ack floor.
///
/// Messages a previous (crashed) sink had received but not acknowledged would otherwise wait a
/// full `ack_wait` before JetStream redelivers them. Everything at or below the ack floor was
/// acknowledged, hence committed; everything above it is redelivered now, and the applied-id
/// table makes the ones that were committed after all harmless. Without an existing consumer
/// (first start, or deleted by hand) delivery starts after what the database says was applied.
/// One sink runs per consumer name.
///
/// Waits out a leader election ([`Backoff::ELECTION`]); a floor read before a failed try is kept
/// for the next one, which finds the consumer already deleted.
pub async fn ensure_consumer(js: &jetstream::Context, cfg: &crate::Config, db_hint: Option<u64>) -> Result<PullConsumer, BusError> {
    let floor = std::cell::Cell::new(None);
    let what = format!("opening consumer {}", cfg.consumer);
    retry_transient(&what, Backoff::ELECTION, || ensure_consumer_once(js, cfg, db_hint, &floor)).await
}

async fn ensure_consumer_once(
    js: &jetstream::Context,
    cfg: &crate::Config,
    db_hint: Option<u64>,
    floor: &std::cell::Cell<Option<u64>>,
) -> Result<PullConsumer, BusError> {
    // `run` created or checked the stream before.
    let stream = js.get_stream(subject::STREAM).await.map_err(|e| BusError::jetstream("opening stream NTP", &e))?;
    match stream.consumer_info(&cfg.consumer).await {
        Ok(info) => {
            let ack_floor = info.ack_floor.stream_sequence;
            tracing::info!(
                message = "Resuming after the consumer's ack floor.",
                ack_floor,
                unacknowledged = info.num_ack_pending,
                pending = info.num_pending
            );
            floor.set(Some(ack_floor + 1));
            stream
                .delete_consumer(&cfg.consumer)
                .await
                .map_err(|e| BusError::jetstream(format!("resetting consumer {}", cfg.consumer), &e))?;
        }
        Err(e) if e.kind() == ConsumerInfoErrorKind::NotFound => {}
        Err(e) => return Err(BusError::jetstream(format!("reading consumer {}", cfg.consumer), &e)),
    }
    let start = floor.get().or(db_hint);
    let config = pull::Config {
        durable_name: Some(cfg.consumer.clone()),
        description: Some("ntpscope sink".into()),
        filter_subject: subject::SESSIONS_FILTER.to_string(),
        ack_policy: jetstream::consumer::AckPolicy::Explicit,
        ack_wait: cfg.ack_wait,
        max_ack_pending: cfg.max_ack_pending,
        max_deliver: -1,
        deliver_policy: match start {
            Some(s) if s > 1 => jetstream::consumer::DeliverPolicy::ByStartSequence { start_sequence: s },
            _ => jetstream::consumer::DeliverPolicy::All,
        },
        ..Default::default()
    };
    stream.create_consumer(config).await.map_err(|e| BusError::jetstream(format!("creating consumer {}", cfg.consumer), &e))
}

/// Decodes and validates a message.
fn decode(msg: &jetstream::Message) -> Result<Batch, WireError> {
    let b = batch::decode(&msg.payload)?;
    let (agent, interface) = subject::parse_sessions(msg.subject.as_str())?;
    if agent != b.agent || interface != b.interface {
        return Err(WireError::Decode(format!("batch says {}/{} but arrived on the subject of {agent}/{interface}", b.agent, b.interface)));
    }
    Ok(b)
}

/// Runs until `shutdown` resolves; the batch in hand is committed and acknowledged first.
pub async fn run(
    js: jetstream::Context,
    consumer: PullConsumer,
    db: DatabaseConnection,
    cfg: LoopConfig,
    stats: Arc<SinkStats>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut pending: Vec<Delivered> = Vec::new();
    let mut records = 0usize;
    let mut opened: Option<Instant> = None;
    let mut messages = open_messages(&consumer).await?;
    loop {
        let deadline = opened.map(|t| t + cfg.batch_interval);
        let full = records >= cfg.batch_size || pending.len() >= cfg.max_messages;
        if full || deadline.is_some_and(|d| clock::monotonic() >= d) {
            commit(&js, &db, &cfg, &stats, std::mem::take(&mut pending), &mut shutdown).await?;
            records = 0;
            opened = None;
            continue;
        }
        let sleep = deadline.map_or(Duration::from_hours(1), |d| d.saturating_duration_since(clock::monotonic()));
        tokio::select! {
            next = messages.next() => match next {
                Some(Ok(msg)) => {
                    let seq = msg.info().map_or(0, |i| i.stream_sequence);
                    let decoded = decode(&msg);
                    records += decoded.as_ref().map_or(1, |b| b.records.len().max(1));
                    pending.push(Delivered { msg, seq, decoded });
                    opened.get_or_insert_with(clock::monotonic);
                }
                Some(Err(e)) => {
                    // Missing heartbeats and the like are not fatal: the stream resumes after a reconnect.
                    tracing::warn!(message = "Consumer stream error.", error = %e);
                }
                None => {
                    tracing::warn!(message = "Consumer stream ended; reopening.");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    messages = open_messages(&consumer).await?;
                }
            },
            () = tokio::time::sleep(sleep) => {}
            _ = shutdown.changed() => {
                tracing::info!(message = "Shutting down: committing the batch in hand.", messages = pending.len());
                if !pending.is_empty() {
                    commit(&js, &db, &cfg, &stats, std::mem::take(&mut pending), &mut shutdown).await?;
                }
                js.client().flush().await.ok();
                return Ok(());
            }
        }
    }
}

/// Opens the pull stream. (In async-nats 0.51 this only subscribes to an inbox and makes no
/// JetStream request; should it fail with a timeout, it is retried like the start-up calls.)
async fn open_messages(consumer: &PullConsumer) -> Result<pull::Stream, BusError> {
    retry_transient("opening the consumer's message stream", Backoff::ELECTION, || async {
        consumer
            .stream()
            .max_messages_per_batch(100)
            .heartbeat(Duration::from_secs(5))
            .expires(Duration::from_secs(30))
            .messages()
            .await
            .map_err(|e| BusError::jetstream("opening the consumer's message stream", &e))
    })
    .await
}

/// Applies a batch in one transaction (retrying on failure), then acknowledges it.
async fn commit(
    js: &jetstream::Context,
    db: &DatabaseConnection,
    cfg: &LoopConfig,
    stats: &SinkStats,
    batch: Vec<Delivered>,
    shutdown: &mut tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let started = clock::monotonic();
    let mut attempt = 0u32;
    let mut last_progress = clock::monotonic();
    let outcome = loop {
        match apply(db, cfg, stats, &batch, started).await {
            Ok(o) => break o,
            Err(e) => {
                attempt += 1;
                stats.add_error(&format!("{e:#}"));
                crate::db::discard_sqlite_connection(db).await;
                let wait = Duration::from_millis(200u64.saturating_mul(1 << attempt.min(6)).min(10_000));
                tracing::error!(message = "Batch failed; retrying.", error = %e, attempt, retry_in = ?wait, messages = batch.len());
                if clock::monotonic().duration_since(last_progress) > cfg.ack_wait / 3 {
                    for d in &batch {
                        let _ = d.msg.ack_with(AckKind::Progress).await;
                    }
                    last_progress = clock::monotonic();
                }
                if *shutdown.borrow() {
                    anyhow::bail!("shutting down with an uncommitted batch; JetStream will redeliver it: {e}");
                }
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    _ = shutdown.changed() => {}
                }
            }
        }
    };
    // Committed: now, and only now, acknowledge.
    for d in &batch {
        if let Err(reason) = &d.decoded {
            dead_letter(js, d, &reason.to_string()).await;
            let _ = d.msg.ack_with(AckKind::Term).await;
        } else {
            let _ = d.msg.ack().await;
        }
    }
    stats.committed(&outcome);
    Ok(())
}

/// Copies a poison message to the dead-letter subject (id `dlq-<sequence>`, so a retry after a
/// crash is deduplicated by JetStream).
async fn dead_letter(js: &jetstream::Context, d: &Delivered, reason: &str) {
    let subject = subject::deadletter(d.msg.subject.as_str());
    let publish = PublishMessage::build()
        .payload(d.msg.payload.clone())
        .message_id(format!("dlq-{}", d.seq))
        .header("Ntpscope-Error", reason.chars().take(500).collect::<String>().as_str())
        .header("Ntpscope-Original-Subject", d.msg.subject.as_str())
        .header("Ntpscope-Original-Sequence", d.seq.to_string().as_str());
    match js.send_publish(subject, publish).await {
        Ok(ack) => {
            if let Err(e) = ack.await {
                tracing::warn!(message = "Dead-letter copy not acknowledged.", error = %e, sequence = d.seq);
            }
        }
        Err(e) => tracing::warn!(message = "Dead-letter copy failed.", error = %e, sequence = d.seq),
    }
    tracing::warn!(message = "Dead-lettered a message.", sequence = d.seq, subject = %d.msg.subject, reason);
}

/// The database work of one batch, in one transaction.
async fn apply(
    db: &DatabaseConnection,
    cfg: &LoopConfig,
    stats: &SinkStats,
    batch: &[Delivered],
    started: Instant,
) -> anyhow::Result<StateDelta> {
    let now = clock::unique_wall_ns();
    // The batch reads (applied ids) before it writes: take SQLite's write lock up front.
    let txn = store::begin_write(db).await?;
    let ids: Vec<String> = batch
        .iter()
        .map(|d| match &d.decoded {
            Ok(b) => b.message_id(),
            Err(_) => format!("poison-{}", d.seq),
        })
        .collect();
    let seen = store::applied_ids(&txn, &ids).await?;
    let mut seen: std::collections::HashSet<&str> = seen.iter().map(String::as_str).collect();
    let mut delta = StateDelta { queue_size: stats.queue_size(), ..StateDelta::default() };
    let mut fresh: Vec<&Batch> = Vec::new();
    let mut applied: Vec<(String, u64)> = Vec::new();
    let mut newest_sent = 0i64;
    let mut sent_times = Vec::new();
    for (d, id) in batch.iter().zip(&ids) {
        delta.last_sequence = delta.last_sequence.max(d.seq);
        let n = d.decoded.as_ref().map_or(0, |b| b.records.len() as u64);
        delta.total_received += n;
        // Applied before, or a copy earlier in this batch (one re-published beyond JetStream's
        // duplicate window can arrive beside the original).
        if !seen.insert(id.as_str()) {
            delta.duplicates_skipped += 1;
            continue;
        }
        if let Ok(b) = &d.decoded {
            fresh.push(b);
            newest_sent = newest_sent.max(b.sent_ns);
            if b.sent_ns > 0 {
                sent_times.push(b.sent_ns);
            }
            delta.total_processed += n;
            delta.messages_applied += 1;
        } else {
            delta.dead_lettered += 1;
            delta.processing_errors += 1;
        }
        applied.push((id.clone(), d.seq));
    }
    let deltas = aggregate::aggregate(fresh.iter().copied());
    let counts = store::upsert(&txn, &deltas, now).await?;
    delta.total_inserted = counts.inserted;
    delta.total_updated = counts.updated;
    delta.batch_records = delta.total_processed;
    delta.batch_seconds = started.elapsed().as_secs_f64();
    delta.lag_seconds = (newest_sent > 0).then(|| (now - newest_sent) as f64 / 1e9);
    store::record_applied(&txn, &applied, now).await?;
    delta.written_at = now;
    store::update_state(&txn, &cfg.consumer, subject::STREAM, &delta, now).await?;
    txn.commit().await?;
    let committed = clock::wall_ns();
    let lags: Vec<u32> = sent_times.iter().map(|s| u32::try_from((committed - s).max(0) / 1_000_000).unwrap_or(u32::MAX)).collect();
    stats.add_lags(&lags);
    Ok(delta)
}
