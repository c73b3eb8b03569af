//! `ntpscope-capture`: the capture agent's I/O shell around the pure `capture-proto` core.
//!
//! # Layout
//! - [`config`]: command line → validated [`Config`].
//! - [`source`]: libpcap handles (live or file), clear open errors, the blocking capture loop.
//! - [`output`]: JSON lines on stdout.
//! - [`publish`]: batches to NATS JetStream with async acks, bounded buffering and retries.
//! - [`status`]: the agent's status document in the `ntpscope_status` KV bucket.
//! - [`json`]: the JSON-lines view of records (seed column names).
//! - [`summary`]: the counter summary printed on exit.
//! - [`clock`]: the agent's only clock reads.
//!
//! **Architecture invariant:** this is the only crate that links libpcap. Parsing and pairing
//! live in `capture-proto`, which never does I/O; this crate feeds it frames and capture times.
#![deny(clippy::unwrap_used)]

pub mod clock;
pub mod config;
pub mod json;
pub mod output;
pub mod publish;
pub mod source;
pub mod status;
pub mod summary;

use std::{
    future::Future,
    io,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use anyhow::Context as _;
use tokio::sync::mpsc;

pub use crate::config::{Cli, Config};
use crate::{
    source::{LoopContext, SourceState, SourceStatus},
    summary::RunSummary,
};

/// Runs the agent until every source ends (files) or `shutdown` resolves (signals).
///
/// Opening is all-or-nothing: a missing interface or unreadable file fails before anything runs.
/// The summary is returned rather than printed so callers (main, tests) decide what to do.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<RunSummary> {
    let mut opened = Vec::with_capacity(config.sources.len());
    for spec in &config.sources {
        opened.push(source::open(spec, &config.live)?);
    }
    // Connect before capturing: a bad URL or an old server is a start-up error, not a silent loss.
    let bus = match config.output {
        config::OutputKind::Nats => Some(connect_bus(&config).await?),
        _ => None,
    };
    let interfaces: Vec<String> = config.sources.iter().map(|s| s.interface().to_string()).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel(256);
    let (statuses, threads) = spawn_sources(&config, opened, &stop, &tx)?;
    drop(tx);
    tracing::info!(message = "Capture started.", sources = ?interfaces);
    let publisher_stats = Arc::new(publish::PublisherStats::default());
    let (status_stop_tx, status_stop_rx) = tokio::sync::watch::channel(false);
    let mut status_task = None;
    let mut output = match bus {
        Some((js, kv)) => {
            status_task = Some(tokio::spawn(status::report(
                kv,
                config.agent_id.clone(),
                statuses.clone(),
                publisher_stats.clone(),
                config.bus.status_interval,
                status_stop_rx,
            )));
            spawn_publisher(&config, js, interfaces, rx, publisher_stats.clone())
        }
        None => spawn_writer(&config, interfaces, rx),
    };
    let written = tokio::select! {
        res = &mut output => res,
        () = shutdown => {
            tracing::info!(message = "Stopping capture.");
            stop.store(true, Ordering::Relaxed);
            output.await
        }
    };
    stop.store(true, Ordering::Relaxed);
    let join = tokio::task::spawn_blocking(move || {
        for t in threads {
            let _ = t.join();
        }
    });
    join.await.context("joining capture threads")?;
    let _ = status_stop_tx.send(true);
    if let Some(t) = status_task {
        let _ = t.await;
    }
    let output = written.context("output task")??;
    let sources: Vec<SourceStatus> = statuses
        .iter()
        .map(|s| s.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone())
        .collect();
    let mut summary = RunSummary::new(config.agent_id, sources, output);
    if config.output == config::OutputKind::Nats {
        summary.publisher = publisher_stats.snapshot();
    }
    Ok(summary)
}

type SharedStatus = Arc<Mutex<SourceStatus>>;

/// One capture thread per source, each with its analyzer and a shared status.
fn spawn_sources(
    config: &Config,
    opened: Vec<(source::Handle, capture_proto::frame::LinkType)>,
    stop: &Arc<AtomicBool>,
    tx: &mpsc::Sender<source::Batch>,
) -> anyhow::Result<(Vec<SharedStatus>, Vec<std::thread::JoinHandle<()>>)> {
    let mut statuses = Vec::new();
    let mut threads = Vec::new();
    for (idx, ((handle, link), spec)) in opened.into_iter().zip(&config.sources).enumerate() {
        let status = Arc::new(Mutex::new(SourceStatus {
            interface: spec.interface().to_string(),
            kind: match spec {
                config::SourceSpec::Live { .. } => "live",
                config::SourceSpec::File { .. } => "file",
            },
            link: Some(link),
            counters: capture_proto::stats::Counters::default(),
            pcap: source::PcapStats::default(),
            records_dropped: 0,
            pairing_bytes: 0,
            state: SourceState::Running,
        }));
        statuses.push(status.clone());
        let mut analyzer = config.analyzer;
        analyzer.pairing.hash_seed = random_seed(idx);
        let ctx = LoopContext {
            source: idx,
            analyzer,
            stop: stop.clone(),
            tx: tx.clone(),
            batch_records: config.batch_records.get(),
            batch_interval: config.batch_interval,
            flush_pending: config.flush_pending,
            status,
            progress: config.progress,
        };
        let thread = std::thread::Builder::new()
            .name(format!("capture-{idx}"))
            .spawn(move || source::run(handle, link, &ctx))
            .context("spawning a capture thread")?;
        threads.push(thread);
    }
    Ok((statuses, threads))
}

type OutputTask = tokio::task::JoinHandle<anyhow::Result<output::OutputStats>>;

fn spawn_publisher(
    config: &Config,
    js: async_nats::jetstream::Context,
    interfaces: Vec<String>,
    rx: mpsc::Receiver<source::Batch>,
    stats: Arc<publish::PublisherStats>,
) -> OutputTask {
    let cfg = publish::PublishConfig {
        agent: config.agent_id.clone(),
        interfaces,
        max_inflight: config.bus.inflight,
        buffer_bytes: config.bus.buffer_bytes,
        max_records: config.batch_records.get().min(1000),
        max_message_bytes: 900 * 1024,
        drain_timeout: std::time::Duration::from_secs(30),
    };
    tokio::spawn(async move {
        publish::run(js, cfg, rx, stats.clone()).await;
        let acked = stats.messages_acked.load(Ordering::Relaxed);
        let records = stats.records_acked.load(Ordering::Relaxed);
        tracing::info!(message = "Publisher drained.", messages = acked, records);
        Ok(output::OutputStats { written: records, skipped: 0 })
    })
}

fn spawn_writer(config: &Config, interfaces: Vec<String>, rx: mpsc::Receiver<source::Batch>) -> OutputTask {
    let host = config.agent_id.clone();
    let (kind, observations) = (config.output, config.observations);
    tokio::task::spawn_blocking(move || {
        output::drain(rx, kind, observations, &host, &interfaces, io::BufWriter::with_capacity(1 << 16, io::stdout().lock()))
            .context("writing records")
    })
}

/// Connects to NATS, checks the server, converges the stream, opens the status bucket.
async fn connect_bus(config: &Config) -> anyhow::Result<(async_nats::jetstream::Context, async_nats::jetstream::kv::Store)> {
    let client = ntpscope_bus::connect(&config.bus.nats).await?;
    let js = async_nats::jetstream::ContextBuilder::new()
        .timeout(std::time::Duration::from_secs(5))
        .max_ack_inflight(config.bus.inflight.max(16) * 2)
        .build(client);
    match ntpscope_bus::ensure_stream(&js, &config.bus.stream).await? {
        ntpscope_bus::StreamOutcome::Created => tracing::info!(message = "Created stream NTP."),
        ntpscope_bus::StreamOutcome::Unchanged => {}
        ntpscope_bus::StreamOutcome::Updated(diffs) => {
            tracing::warn!(message = "Stream NTP had other limits; updated it.", changes = %diffs.join(", "));
        }
    }
    let kv = ntpscope_bus::status_store(&js).await?;
    Ok((js, kv))
}

/// A per-process random seed for the pairing hash, so a remote sender cannot aim collisions at
/// the table. std's `RandomState` draws from the OS once per process.
fn random_seed(idx: usize) -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(idx)
}

/// The agent's hostname, the default agent id.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
