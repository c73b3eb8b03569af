//! The consumer loop: pull from the durable consumer, batch, commit, then ack.
//!
//! **Two tasks, one batch apart.** The receiver pulls, decodes and closes batches, and
//! aggregates each closed batch on the blocking pool; the writer applies, commits and
//! acknowledges the batches one at a time, in order, while the receiver prepares the next.
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
//! A message is terminated only once JetStream has acknowledged its copy; otherwise (the stream
//! full, NATS slow) it is handed back with a delay ([`DEAD_LETTER_RETRY`]) and comes back as a
//! duplicate of itself, which tries the copy again under the same message id, so JetStream keeps
//! one copy however many tries it takes. It is counted once. After [`DEAD_LETTER_TRIES`]
//! deliveries the copy is given up, with an error in the log.
//!
//! **Slow or failing writes.** While a batch is being written (a busy wait for SQLite's lock
//! included) and while it is retried with back-off after a database failure, its messages and
//! those of the batches closed behind it (one queued, one waiting for room: [`InTransit`]) get
//! `AckKind::Progress` every third of `ack_wait`, so JetStream redelivers none of the messages in
//! hand, however long the database takes. (Only what the pull stream fetched ahead, about one
//! pull request of [`PULL_BATCH`] messages, waits unacknowledged in the client meanwhile; their
//! ids make copies harmless.) On shutdown during a retry nothing more is acknowledged and
//! JetStream redelivers the batches in hand later.

use std::{
    collections::{BTreeMap, HashSet},
    convert::Infallible,
    sync::Arc,
    time::{Duration, Instant},
};

use async_nats::{
    Subject,
    jetstream::{
        self, AckKind,
        consumer::{PullConsumer, pull},
        context::ConsumerInfoErrorKind,
        message::PublishMessage,
    },
};
use futures_util::StreamExt;
use ntp_wire::{Batch, WireError, batch, subject};
use ntpscope_bus::{Backoff, BusError, retry_transient};
use sea_orm::DatabaseConnection;

use crate::{
    aggregate::{self, ClientDelta, ClientKey},
    clock,
    stats::SinkStats,
    store::{self, StateDelta},
    wal::WalWatch,
};

/// A message as the loop receives it.
struct Received {
    msg: jetstream::Message,
    seq: u64,
    decoded: Result<Batch, WireError>,
}

/// A message as the writer keeps it. Its records were folded into the batch's aggregate and
/// dropped; the payload stays for dead-lettering and for folding again (redeliveries).
struct Delivered {
    msg: jetstream::Message,
    seq: u64,
    /// The message id (`poison-<sequence>` for a message that did not decode).
    id: String,
    /// Records and hand-over time of a good message, or why it is poison.
    decoded: Result<Header, WireError>,
}

/// What the writer needs of a decoded message besides its records.
struct Header {
    records: u64,
    sent_ns: i64,
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
    /// The SQLite WAL's size limit ([`crate::wal`]); `None` on PostgreSQL.
    pub wal: Option<crate::wal::WalLimit>,
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

/// Runs until `shutdown` resolves; the batches in hand are committed and acknowledged first.
///
/// Two tasks, one batch apart: this one receives, decodes and aggregates the next batch while
/// the writer ([`write_batches`]) applies, commits and acknowledges the previous one, so the
/// sink's CPU work beside SQLite's runs on the other core. The writer takes batches in order and
/// one at a time, so commits stay in stream order; a batch prepared here assumes none of its
/// messages was applied before, and the writer folds it again, inside its transaction, when the
/// database says otherwise. At most three batches are in hand: one committing, one prepared and
/// waiting, one being received.
pub async fn run(
    js: jetstream::Context,
    consumer: PullConsumer,
    db: DatabaseConnection,
    cfg: LoopConfig,
    stats: Arc<SinkStats>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Prepared>(1);
    let in_transit = InTransit::default();
    let writer = tokio::spawn(write_batches(js.clone(), db, cfg.clone(), stats, rx, in_transit.clone(), shutdown.clone()));
    let received = receive_batches(&consumer, &cfg, tx, &in_transit, shutdown).await;
    if let Err(e) = &received {
        tracing::error!(message = "The consumer failed; committing the batches handed over, then stopping.", error = %format!("{e:#}"));
    }
    // The sender is gone: the writer commits what it was handed and stops.
    let written = writer.await.map_err(|e| anyhow::anyhow!("the batch writer failed: {e}"));
    js.client().flush().await.ok();
    match (written.and_then(|w| w), received) {
        (Err(w), Err(r)) => Err(w.context(format!("after the consumer failed: {r:#}"))),
        (w, r) => w.and(r),
    }
}

/// Receives and decodes messages, closes batches by size and interval, and hands each one,
/// aggregated, to the writer. Returns at shutdown (after handing over the batch in hand), on an
/// error of the consumer, or when the writer has stopped.
async fn receive_batches(
    consumer: &PullConsumer,
    cfg: &LoopConfig,
    tx: tokio::sync::mpsc::Sender<Prepared>,
    in_transit: &InTransit,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut pending: Vec<Received> = Vec::new();
    let mut records = 0usize;
    let mut opened: Option<Instant> = None;
    let mut messages = open_messages(consumer).await?;
    loop {
        let deadline = opened.map(|t| t + cfg.batch_interval);
        let full = records >= cfg.batch_size || pending.len() >= cfg.max_messages;
        if full || deadline.is_some_and(|d| clock::monotonic() >= d) {
            if !hand_over(&tx, in_transit, std::mem::take(&mut pending), opened.unwrap_or_else(clock::monotonic)).await? {
                return Ok(());
            }
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
                    pending.push(Received { msg, seq, decoded });
                    opened.get_or_insert_with(clock::monotonic);
                }
                Some(Err(e)) => {
                    // Missing heartbeats and the like are not fatal: the stream resumes after a reconnect.
                    tracing::warn!(message = "Consumer stream error.", error = %e);
                }
                None => {
                    tracing::warn!(message = "Consumer stream ended; reopening.");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    messages = open_messages(consumer).await?;
                }
            },
            () = tokio::time::sleep(sleep) => {}
            _ = shutdown.changed() => {
                tracing::info!(message = "Shutting down: committing the batch in hand.", messages = pending.len());
                if !pending.is_empty() {
                    hand_over(&tx, in_transit, pending, opened.unwrap_or_else(clock::monotonic)).await?;
                }
                return Ok(());
            }
            () = tx.closed() => return Ok(()),
        }
    }
}

/// Aggregates a closed batch off the async workers and hands it to the writer, once the writer
/// has taken the batch before (so at most two batches are prepared at a time: one waiting, one
/// being written). `false` when the writer has stopped (its own result says why).
async fn hand_over(
    tx: &tokio::sync::mpsc::Sender<Prepared>,
    in_transit: &InTransit,
    batch: Vec<Received>,
    opened: Instant,
) -> anyhow::Result<bool> {
    let number = in_transit.add(&batch);
    let Ok(slot) = tx.reserve().await else { return Ok(false) };
    let prepared = tokio::task::spawn_blocking(move || Prepared::new(number, batch, opened))
        .await
        .map_err(|e| anyhow::anyhow!("preparing a batch failed: {e}"))?;
    slot.send(prepared);
    Ok(true)
}

/// Applies, commits and acknowledges the batches handed over, in order, until the sender is gone.
async fn write_batches(
    js: jetstream::Context,
    db: DatabaseConnection,
    cfg: LoopConfig,
    stats: Arc<SinkStats>,
    mut rx: tokio::sync::mpsc::Receiver<Prepared>,
    in_transit: InTransit,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let wal = cfg.wal.clone().map(|limit| WalWatch::new(limit, crate::db::SQLITE_BUSY_TIMEOUT));
    let mut writer = Writer { js, db, cfg, stats, in_transit, wal };
    while let Some(batch) = rx.recv().await {
        writer.in_transit.remove(batch.number);
        writer.commit(batch, &mut shutdown).await?;
    }
    Ok(())
}

/// What the writer task works with.
struct Writer {
    js: jetstream::Context,
    db: DatabaseConnection,
    cfg: LoopConfig,
    stats: Arc<SinkStats>,
    in_transit: InTransit,
    wal: Option<WalWatch>,
}

/// Reply subjects of the messages of the batches the receiver has closed and the writer has not
/// taken yet (at most two: one in the channel, one waiting for room in it). The writer keeps
/// them alive with those of the batch it writes, so a slow write sends none of the messages in
/// hand into redelivery.
#[derive(Clone, Default)]
struct InTransit(Arc<std::sync::Mutex<InTransitList>>);

#[derive(Default)]
struct InTransitList {
    /// The number of the next batch closed.
    next: u64,
    batches: Vec<(u64, Vec<Subject>)>,
}

impl InTransit {
    fn list(&self) -> std::sync::MutexGuard<'_, InTransitList> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Registers a closed batch; returns its number.
    fn add(&self, batch: &[Received]) -> u64 {
        let mut list = self.list();
        let number = list.next;
        list.next += 1;
        list.batches.push((number, batch.iter().filter_map(|r| r.msg.reply.clone()).collect()));
        number
    }

    /// The writer has taken batch `number`.
    fn remove(&self, number: u64) {
        self.list().batches.retain(|(n, _)| *n != number);
    }

    fn replies(&self) -> Vec<Subject> {
        self.list().batches.iter().flat_map(|(_, r)| r.iter().cloned()).collect()
    }
}

/// Sends `AckKind::Progress` to the reply subjects `held` returns every third of `ack_wait`, the
/// first time a third after `since` (when the oldest of those messages arrived), so that
/// JetStream does not redeliver them while they wait. Runs until dropped.
async fn keep_alive(client: async_nats::Client, held: impl Fn() -> Vec<Subject>, mut since: Instant, ack_wait: Duration) -> Infallible {
    loop {
        tokio::time::sleep_until((since + ack_wait / 3).into()).await;
        since = clock::monotonic();
        for reply in held() {
            let _ = client.publish(reply, AckKind::Progress.into()).await;
        }
    }
}

/// Messages asked for per pull request.
const PULL_BATCH: usize = 100;

/// Opens the pull stream. (In async-nats 0.51 this only subscribes to an inbox and makes no
/// JetStream request; should it fail with a timeout, it is retried like the start-up calls.)
async fn open_messages(consumer: &PullConsumer) -> Result<pull::Stream, BusError> {
    retry_transient("opening the consumer's message stream", Backoff::ELECTION, || async {
        consumer
            .stream()
            .max_messages_per_batch(PULL_BATCH)
            .heartbeat(Duration::from_secs(5))
            .expires(Duration::from_secs(30))
            .messages()
            .await
            .map_err(|e| BusError::jetstream("opening the consumer's message stream", &e))
    })
    .await
}

impl Writer {
    /// Applies a batch in one transaction (retrying on failure), acknowledges it, then lets the
    /// WAL watch look ([`crate::wal`]; also after each failed attempt).
    async fn commit(&mut self, prepared: Prepared, shutdown: &mut tokio::sync::watch::Receiver<bool>) -> anyhow::Result<()> {
        let Self { js, db, cfg, stats, in_transit, wal } = self;
        let (js, db, cfg, stats, in_transit) = (&*js, &*db, &*cfg, &**stats, &*in_transit);
        let started = clock::monotonic();
        let batch = &prepared.batch;
        let attempts = async {
            let mut attempt = 0u32;
            loop {
                match apply(db, cfg, stats, &prepared, started).await {
                    Ok(o) => return Ok(o),
                    Err(e) => {
                        attempt += 1;
                        stats.add_error(&format!("{e:#}"));
                        crate::db::discard_sqlite_connection(db).await;
                        // The WAL may be what filled the disk ([`crate::wal`]).
                        if let Some(wal) = wal.as_mut() {
                            wal.after_batch(db).await;
                            stats.set_wal_bytes(wal.file_bytes());
                        }
                        let wait = Duration::from_millis(200u64.saturating_mul(1 << attempt.min(6)).min(10_000));
                        tracing::error!(message = "Batch failed; retrying.", error = %e, attempt, retry_in = ?wait, messages = batch.len());
                        if *shutdown.borrow() {
                            anyhow::bail!("shutting down with an uncommitted batch; JetStream will redeliver it: {e}");
                        }
                        tokio::select! {
                            () = tokio::time::sleep(wait) => {}
                            _ = shutdown.changed() => {}
                        }
                    }
                }
            }
        };
        // While the batch is written (a busy wait for SQLite's lock included) or retried, its
        // messages and those of the batches closed behind it get progress acks, counted from the
        // batch's first message: a batch that waited behind another one may be close to its
        // acknowledgement deadline already when its write begins.
        let own: Vec<Subject> = batch.iter().filter_map(|d| d.msg.reply.clone()).collect();
        let held = || own.iter().cloned().chain(in_transit.replies()).collect();
        let outcome = tokio::select! {
            outcome = attempts => outcome?,
            never = keep_alive(js.client(), held, prepared.opened, cfg.ack_wait) => match never {},
        };
        // Committed: now, and only now, acknowledge. Dead-lettering waits for JetStream's
        // acknowledgement of each copy, which may take long when NATS is slow: meanwhile the
        // batches closed behind this one keep getting progress acks.
        let acks = async {
            for d in batch {
                if let Err(reason) = &d.decoded {
                    let copied = dead_letter(js, d, &reason.to_string()).await;
                    let deliveries = d.msg.info().map_or(0, |i| i.delivered);
                    let kind = if copied {
                        AckKind::Term
                    } else if deliveries < DEAD_LETTER_TRIES {
                        AckKind::Nak(Some(DEAD_LETTER_RETRY))
                    } else {
                        tracing::error!(
                            message = "Gave up on a dead-letter copy JetStream keeps refusing; the message is terminated without one.",
                            sequence = d.seq,
                            subject = %d.msg.subject,
                            deliveries
                        );
                        AckKind::Term
                    };
                    let _ = d.msg.ack_with(kind).await;
                } else {
                    let _ = d.msg.ack().await;
                }
            }
        };
        tokio::select! {
            () = acks => {}
            never = keep_alive(js.client(), || in_transit.replies(), clock::monotonic(), cfg.ack_wait) => match never {},
        }
        stats.committed(&outcome);
        // Acknowledged and counted: now the WAL may take the connection for a checkpoint, while
        // the batches behind keep getting progress acks.
        if let Some(wal) = wal.as_mut() {
            tokio::select! {
                _ = wal.after_batch(db) => {}
                never = keep_alive(js.client(), || in_transit.replies(), clock::monotonic(), cfg.ack_wait) => match never {},
            }
            stats.set_wal_bytes(wal.file_bytes());
        }
        Ok(())
    }
}

/// How long a poison message whose dead-letter copy JetStream did not acknowledge waits before it
/// is delivered again (and the copy tried again).
pub const DEAD_LETTER_RETRY: Duration = Duration::from_secs(2);

/// Deliveries of a poison message after which a copy JetStream still refuses (one that can never
/// be stored: larger than the server's payload limit once the headers are added, say) is given up,
/// with an error in the log, so such messages cannot hold the consumer's slots for ever: about a
/// minute of tries.
pub const DEAD_LETTER_TRIES: i64 = 30;

/// Copies a poison message to the dead-letter subject (id `dlq-<sequence>`, so a retry is
/// deduplicated by JetStream); whether JetStream acknowledged the copy.
async fn dead_letter(js: &jetstream::Context, d: &Delivered, reason: &str) -> bool {
    let subject = subject::deadletter(d.msg.subject.as_str());
    let publish = PublishMessage::build()
        .payload(d.msg.payload.clone())
        .message_id(format!("dlq-{}", d.seq))
        .header("Ntpscope-Error", reason.chars().take(500).collect::<String>().as_str())
        .header("Ntpscope-Original-Subject", d.msg.subject.as_str())
        .header("Ntpscope-Original-Sequence", d.seq.to_string().as_str());
    let failed = match js.send_publish(subject, publish).await {
        Ok(ack) => ack.await.err().map(|e| e.to_string()),
        Err(e) => Some(e.to_string()),
    };
    if let Some(error) = failed {
        tracing::warn!(
            message = "Dead-letter copy not stored; the message comes back later and the copy is tried again.",
            error,
            sequence = d.seq,
            retry_in = ?DEAD_LETTER_RETRY
        );
        return false;
    }
    tracing::warn!(message = "Dead-lettered a message.", sequence = d.seq, subject = %d.msg.subject, reason);
    true
}

/// A closed batch, with what it would change if none of its messages had been applied before.
struct Prepared {
    /// The receiver's number for the batch ([`InTransit`]).
    number: u64,
    /// When the batch's first message arrived.
    opened: Instant,
    batch: Vec<Delivered>,
    plan: Plan,
    deltas: BTreeMap<ClientKey, ClientDelta>,
}

impl Prepared {
    /// Works out the batch's ids, plan and aggregate (CPU only; no database).
    fn new(number: u64, received: Vec<Received>, opened: Instant) -> Self {
        let mut batch = Vec::with_capacity(received.len());
        let mut decoded = Vec::with_capacity(received.len());
        for r in received {
            let (id, header, records) = match r.decoded {
                Ok(b) => (b.message_id(), Ok(Header { records: b.records.len() as u64, sent_ns: b.sent_ns }), Some(b)),
                Err(e) => (format!("poison-{}", r.seq), Err(e), None),
            };
            batch.push(Delivered { msg: r.msg, seq: r.seq, id, decoded: header });
            decoded.push(records);
        }
        let plan = Plan::of(&batch, &HashSet::new());
        let deltas = aggregate::aggregate(plan.fresh.iter().filter_map(|&i| decoded[i].as_ref()));
        Self { number, opened, batch, plan, deltas }
    }
}

/// Which messages of a batch to apply, given the ids applied before, and the counts that follow.
struct Plan {
    /// Indexes of the messages to apply.
    fresh: Vec<usize>,
    /// Ids and sequences to record as applied (fresh and poison messages).
    applied: Vec<(String, u64)>,
    /// The counters of the batch; inserted/updated, lag and timing are filled in when written.
    delta: StateDelta,
    /// Agent hand-over times of the fresh messages (those the agent stamped).
    sent_times: Vec<i64>,
}

impl Plan {
    /// The plan for a batch of messages, given as (id, stream sequence, header or `None` for
    /// poison), in delivery order.
    fn new<'a>(messages: impl IntoIterator<Item = (&'a str, u64, Option<&'a Header>)>, applied_before: &HashSet<&str>) -> Self {
        let mut seen: HashSet<&str> = applied_before.clone();
        let mut plan = Self { fresh: Vec::new(), applied: Vec::new(), delta: StateDelta::default(), sent_times: Vec::new() };
        let delta = &mut plan.delta;
        for (i, (id, seq, header)) in messages.into_iter().enumerate() {
            delta.last_sequence = delta.last_sequence.max(seq);
            let n = header.map_or(0, |h| h.records);
            delta.total_received += n;
            // Applied before, or a copy earlier in this batch (one re-published beyond JetStream's
            // duplicate window can arrive beside the original).
            if !seen.insert(id) {
                delta.duplicates_skipped += 1;
                continue;
            }
            if let Some(h) = header {
                plan.fresh.push(i);
                if h.sent_ns > 0 {
                    plan.sent_times.push(h.sent_ns);
                }
                delta.total_processed += n;
                delta.messages_applied += 1;
            } else {
                delta.dead_lettered += 1;
                delta.processing_errors += 1;
            }
            plan.applied.push((id.to_string(), seq));
        }
        plan
    }

    /// The newest hand-over time of the fresh messages (0: none stamped).
    fn newest_sent(&self) -> i64 {
        self.sent_times.iter().copied().max().unwrap_or(0)
    }

    /// [`Plan::new`] for delivered messages.
    fn of(batch: &[Delivered], applied_before: &HashSet<&str>) -> Self {
        Self::new(batch.iter().map(|d| (d.id.as_str(), d.seq, d.decoded.as_ref().ok())), applied_before)
    }
}

/// The database work of one batch, in one transaction.
async fn apply(
    db: &DatabaseConnection,
    cfg: &LoopConfig,
    stats: &SinkStats,
    prepared: &Prepared,
    started: Instant,
) -> anyhow::Result<StateDelta> {
    let now = clock::unique_wall_ns();
    // The batch reads (applied ids) before it writes: take SQLite's write lock up front.
    let txn = store::begin_write(db).await?;
    let ids: Vec<String> = prepared.batch.iter().map(|d| d.id.clone()).collect();
    let seen = store::applied_ids(&txn, &ids).await?;
    let replanned;
    let (plan, deltas) = if seen.is_empty() {
        (&prepared.plan, &prepared.deltas)
    } else {
        // Redelivered messages: fold again without the ones already applied, from the payloads.
        let plan = Plan::of(&prepared.batch, &seen.iter().map(String::as_str).collect());
        let batches = plan
            .fresh
            .iter()
            .map(|&i| decode(&prepared.batch[i].msg))
            .collect::<Result<Vec<Batch>, WireError>>()
            .map_err(|e| anyhow::anyhow!("a message that decoded before no longer decodes (a bug): {e}"))?;
        let deltas = aggregate::aggregate(&batches);
        replanned = (plan, deltas);
        (&replanned.0, &replanned.1)
    };
    let mut delta = StateDelta { queue_size: stats.queue_size(), failed_attempts: stats.failures_unwritten(), ..plan.delta.clone() };
    let counts = store::upsert(&txn, deltas, now).await?;
    delta.total_inserted = counts.inserted;
    delta.total_updated = counts.updated;
    delta.batch_records = delta.total_processed;
    delta.batch_seconds = started.elapsed().as_secs_f64();
    let newest_sent = plan.newest_sent();
    delta.lag_seconds = (newest_sent > 0).then(|| (now - newest_sent) as f64 / 1e9);
    store::record_applied(&txn, &plan.applied, now).await?;
    delta.written_at = now;
    store::update_state(&txn, &cfg.consumer, subject::STREAM, &delta, now).await?;
    txn.commit().await?;
    // After the commit, in its own transaction: a row it cannot fill must not hold up batches.
    match store::fill_binary_addresses(db, store::FILL_PER_BATCH).await {
        Ok(0) => {}
        Ok(rows) => tracing::info!(message = "Filled in the binary address of copied rows.", rows),
        Err(e) => tracing::warn!(message = "Could not fill in the binary address of copied rows.", error = %e),
    }
    let committed = clock::wall_ns();
    let lags: Vec<u32> = plan.sent_times.iter().map(|s| u32::try_from((committed - s).max(0) / 1_000_000).unwrap_or(u32::MAX)).collect();
    stats.add_lags(&lags);
    Ok(delta)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_skips_applied_ids_and_copies_and_sets_poison_aside() {
        let h = |records, sent_ns| Header { records, sent_ns };
        let (a, b, c) = (h(3, 100), h(5, 0), h(7, 300));
        let messages = [("a", 10, Some(&a)), ("b", 11, Some(&b)), ("a", 12, Some(&a)), ("poison-13", 13, None), ("c", 14, Some(&c))];
        let fresh = Plan::new(messages, &HashSet::new());
        assert_eq!(fresh.fresh, [0, 1, 4]);
        assert_eq!(
            fresh.applied.iter().map(|(id, seq)| (id.as_str(), *seq)).collect::<Vec<_>>(),
            [("a", 10), ("b", 11), ("poison-13", 13), ("c", 14)]
        );
        let d = &fresh.delta;
        assert_eq!((d.total_received, d.total_processed, d.messages_applied), (18, 15, 3));
        assert_eq!((d.duplicates_skipped, d.dead_lettered, d.processing_errors, d.last_sequence), (1, 1, 1, 14));
        assert_eq!((fresh.newest_sent(), fresh.sent_times.clone()), (300, vec![100, 300]));

        // The writer finds "a" (and the poison message) applied by an earlier batch.
        let again = Plan::new(messages, &HashSet::from(["a", "poison-13"]));
        assert_eq!(again.fresh, [1, 4]);
        assert_eq!(again.applied.iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>(), ["b", "c"]);
        let d = &again.delta;
        assert_eq!((d.total_received, d.total_processed, d.messages_applied), (18, 12, 2));
        assert_eq!((d.duplicates_skipped, d.dead_lettered, d.last_sequence), (3, 0, 14));
        assert_eq!(again.newest_sent(), 300);
    }
}
