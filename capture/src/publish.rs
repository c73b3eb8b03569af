//! Publishing record batches to JetStream: async acks, many in flight, bounded buffering, retries
//! with the same message id.
//!
//! Batches from the capture threads are split into messages of at most `max_records` records and
//! `max_message_bytes` bytes, encoded once, and kept until JetStream acknowledges them. A failed
//! or timed-out ack re-sends the *same bytes with the same `Nats-Msg-Id`*: JetStream's duplicate
//! window drops the copy if the first one was stored after all, and the sink's applied-message
//! table covers anything older than the window.
//!
//! Memory is bounded by `buffer_bytes`: while the buffer is full the publisher stops taking
//! batches from the capture threads, whose bounded channel then makes a live capture drop and
//! count records (a file replay waits instead). On shutdown (a signal) the buffer gets
//! `drain_timeout` to empty, and what is left is counted as dropped; at the end of a file replay
//! nobody asked to stop, so the publisher waits for the bus as long as it takes.

use std::{
    collections::VecDeque,
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use async_nats::jetstream::{self, context::PublishErrorKind, message::PublishMessage};
use bytes::Bytes;
use futures_util::{StreamExt, stream::FuturesUnordered};
use ntp_wire::{Batch, Record, batch};
use tokio::sync::mpsc;

use crate::{clock, source};

/// Publisher limits.
#[derive(Debug, Clone)]
pub struct PublishConfig {
    /// Agent id written into every batch.
    pub agent: String,
    /// Messages awaiting their ack at once.
    pub max_inflight: usize,
    /// Bytes of encoded messages kept (in flight or waiting).
    pub buffer_bytes: usize,
    /// Records per message.
    pub max_records: usize,
    /// Encoded bytes per message (the server's max payload is 1 MiB by default).
    pub max_message_bytes: usize,
    /// How long shutdown (a signal) waits for the buffer to empty.
    pub drain_timeout: Duration,
}

/// Counters of the publisher, shared with the status reporter.
#[derive(Debug, Default)]
pub struct PublisherStats {
    /// Messages acknowledged by JetStream.
    pub messages_acked: AtomicU64,
    /// Records in acknowledged messages.
    pub records_acked: AtomicU64,
    /// Acknowledged messages that JetStream reported as duplicates (a retry of a stored message).
    pub duplicates: AtomicU64,
    /// Re-sends after a failed or timed-out ack.
    pub retries: AtomicU64,
    /// Messages waiting or in flight.
    pub buffered_messages: AtomicU64,
    /// Bytes waiting or in flight.
    pub buffered_bytes: AtomicU64,
    /// Records given up at shutdown (buffer not drained in time) or unencodable.
    pub records_dropped: AtomicU64,
    /// Wall time of the last ack, Unix ns.
    pub last_ack_ns: AtomicU64,
}

impl PublisherStats {
    /// A name → value snapshot for status documents and summaries.
    pub fn snapshot(&self) -> std::collections::BTreeMap<String, u64> {
        [
            ("messages_acked", &self.messages_acked),
            ("records_acked", &self.records_acked),
            ("duplicates", &self.duplicates),
            ("retries", &self.retries),
            ("buffered_messages", &self.buffered_messages),
            ("buffered_bytes", &self.buffered_bytes),
            ("records_dropped", &self.records_dropped),
            ("last_ack_ns", &self.last_ack_ns),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.load(Ordering::Relaxed)))
        .collect()
    }
}

/// One encoded message.
#[derive(Debug, Clone)]
struct Outgoing {
    subject: String,
    id: String,
    payload: Bytes,
    records: u64,
}

type AckFuture = Pin<Box<dyn Future<Output = (Outgoing, Result<jetstream::publish::PublishAck, String>)> + Send>>;

/// Splits and encodes a capture batch into messages.
fn encode_batch(cfg: &PublishConfig, b: source::Batch, stats: &PublisherStats) -> Vec<Outgoing> {
    let interface = b.interface.to_string();
    let Ok(subject) = ntp_wire::subject::sessions(&cfg.agent, &interface) else {
        stats.records_dropped.fetch_add(b.records.len() as u64, Ordering::Relaxed);
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut records = b.records;
    while !records.is_empty() {
        let rest = records.split_off(records.len().min(cfg.max_records.max(1)));
        encode_chunk(cfg, &subject, &interface, records, stats, &mut out);
        records = rest;
    }
    out
}

fn encode_chunk(
    cfg: &PublishConfig,
    subject: &str,
    interface: &str,
    records: Vec<Record>,
    stats: &PublisherStats,
    out: &mut Vec<Outgoing>,
) {
    let n = records.len();
    let mut wire = Batch::new(cfg.agent.clone(), interface, records);
    wire.sent_ns = clock::wall_ns();
    match batch::encode(&wire) {
        Ok(bytes) if bytes.len() <= cfg.max_message_bytes || n == 1 => {
            out.push(Outgoing { subject: subject.to_string(), id: wire.message_id(), payload: Bytes::from(bytes), records: n as u64 });
        }
        Ok(_) => {
            // Too big for one message: halve and retry.
            let mut first = wire.records;
            let second = first.split_off(n / 2);
            encode_chunk(cfg, subject, interface, first, stats, out);
            encode_chunk(cfg, subject, interface, second, stats, out);
        }
        Err(e) => {
            tracing::error!(message = "Cannot encode a batch; records dropped.", error = %e, records = n);
            stats.records_dropped.fetch_add(n as u64, Ordering::Relaxed);
        }
    }
}

/// Runs until the capture threads hang up and the buffer is drained, or, once `stop` turns true
/// (a signal), until `drain_timeout` has passed.
pub async fn run(
    js: jetstream::Context,
    cfg: PublishConfig,
    mut rx: mpsc::Receiver<source::Batch>,
    stats: Arc<PublisherStats>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut stop_open = true;
    let mut queue: VecDeque<Outgoing> = VecDeque::new();
    let mut inflight: FuturesUnordered<AckFuture> = FuturesUnordered::new();
    let mut buffered: usize = 0;
    let mut input_open = true;
    let mut failures: u32 = 0;
    let mut pause_until: Option<tokio::time::Instant> = None;
    let mut drain_deadline: Option<tokio::time::Instant> = None;
    loop {
        // Send what the window allows, unless backing off after failures.
        let paused = pause_until.is_some_and(|t| t > tokio::time::Instant::from_std(clock::monotonic()));
        while !paused && inflight.len() < cfg.max_inflight {
            let Some(msg) = queue.pop_front() else { break };
            let publish = PublishMessage::build().payload(msg.payload.clone()).message_id(&msg.id);
            match js.send_publish(msg.subject.clone(), publish).await {
                Ok(ack) => inflight.push(Box::pin(async move {
                    let res = ack.await.map_err(|e| describe(&e));
                    (msg, res)
                })),
                Err(e) => {
                    tracing::warn!(message = "Publish failed; will retry.", error = %e);
                    queue.push_front(msg);
                    failures += 1;
                    pause_until = Some(backoff(failures));
                    break;
                }
            }
        }
        stats.buffered_messages.store((queue.len() + inflight.len()) as u64, Ordering::Relaxed);
        stats.buffered_bytes.store(buffered as u64, Ordering::Relaxed);
        if !input_open && queue.is_empty() && inflight.is_empty() {
            break;
        }
        if let Some(deadline) = drain_deadline
            && tokio::time::Instant::from_std(clock::monotonic()) >= deadline
        {
            let left: u64 = queue.iter().map(|m| m.records).sum::<u64>();
            tracing::error!(
                message = "Shutdown drain timed out; unacknowledged records dropped.",
                records = left,
                in_flight = inflight.len()
            );
            stats.records_dropped.fetch_add(left, Ordering::Relaxed);
            break;
        }
        let can_take = input_open && buffered < cfg.buffer_bytes;
        let wake =
            pause_until.or(drain_deadline).unwrap_or_else(|| tokio::time::Instant::from_std(clock::monotonic()) + Duration::from_hours(1));
        tokio::select! {
            Some((msg, res)) = inflight.next(), if !inflight.is_empty() => match res {
                Ok(ack) => {
                    failures = 0;
                    pause_until = None;
                    buffered = buffered.saturating_sub(msg.payload.len());
                    stats.messages_acked.fetch_add(1, Ordering::Relaxed);
                    stats.records_acked.fetch_add(msg.records, Ordering::Relaxed);
                    if ack.duplicate {
                        stats.duplicates.fetch_add(1, Ordering::Relaxed);
                    }
                    stats.last_ack_ns.store(clock::wall_ns().max(0) as u64, Ordering::Relaxed);
                }
                Err(e) => {
                    tracing::debug!(message = "Ack failed; re-sending with the same message id.", error = %e, id = %msg.id);
                    stats.retries.fetch_add(1, Ordering::Relaxed);
                    queue.push_front(msg);
                    failures += 1;
                    pause_until = Some(backoff(failures));
                }
            },
            batch = rx.recv(), if can_take => {
                if let Some(b) = batch {
                    for m in encode_batch(&cfg, b, &stats) {
                        buffered += m.payload.len();
                        queue.push_back(m);
                    }
                } else {
                    input_open = false;
                }
            },
            changed = stop.changed(), if stop_open && drain_deadline.is_none() => {
                if changed.is_ok() && *stop.borrow() {
                    drain_deadline = Some(tokio::time::Instant::from_std(clock::monotonic()) + cfg.drain_timeout);
                } else if changed.is_err() {
                    stop_open = false;
                }
            },
            () = tokio::time::sleep_until(wake) => {}
        }
    }
    stats.buffered_messages.store((queue.len() + inflight.len()) as u64, Ordering::Relaxed);
    stats.buffered_bytes.store(0, Ordering::Relaxed);
}

/// 100 ms doubling up to 5 s.
fn backoff(failures: u32) -> tokio::time::Instant {
    let ms = 100u64.saturating_mul(1 << failures.min(6)).min(5_000);
    tokio::time::Instant::from_std(clock::monotonic()) + Duration::from_millis(ms)
}

fn describe(e: &jetstream::context::PublishError) -> String {
    match e.kind() {
        PublishErrorKind::TimedOut => "ack timed out".to_string(),
        PublishErrorKind::StreamNotFound => "stream NTP not found".to_string(),
        _ => e.to_string(),
    }
}
