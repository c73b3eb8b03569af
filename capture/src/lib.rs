//! `ntpscope-capture`: the capture agent's I/O shell around the pure `capture-proto` core.
//!
//! # Layout
//! - [`config`]: command line → validated [`Config`].
//! - [`source`]: libpcap handles (live or file), clear open errors, the blocking capture loop.
//! - [`output`]: JSON lines on stdout.
//! - [`publish`]: batches to NATS JetStream with async acks, bounded buffering and retries.
//! - [`status`]: the agent's status document in the `ntpscope_status` KV bucket.
//! - [`supervisor`]: the running sources; start and stop at run time.
//! - [`control`]: start/stop/list requests from the API over NATS request/reply.
//! - [`json`]: the JSON-lines view of records (seed column names).
//! - [`summary`]: the counter summary printed on exit.
//! - [`privileges`]: dropping root once the capture handles are open.
//! - [`clock`]: the agent's only clock reads.
//!
//! **Architecture invariant:** this is the only crate that links libpcap. Parsing and pairing
//! live in `capture-proto`, which never does I/O; this crate feeds it frames and capture times.
#![deny(clippy::unwrap_used)]

pub mod clock;
pub mod config;
pub mod control;
pub mod json;
pub mod output;
pub mod privileges;
pub mod publish;
pub mod source;
pub mod status;
pub mod summary;
pub mod supervisor;

use std::{
    future::Future,
    io,
    sync::{Arc, atomic::Ordering},
};

use anyhow::Context as _;
use tokio::sync::mpsc;

pub use ntpscope_bus::shutdown_signal;

pub use crate::config::{Cli, Config};
use crate::{config::SourceSpec, summary::RunSummary, supervisor::Supervisor};

/// Runs the agent until every source ends (files) or `shutdown` resolves (signals).
///
/// Opening is all-or-nothing: a missing interface or unreadable file fails before anything runs.
/// The summary is returned rather than printed so callers (main, tests) decide what to do.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<RunSummary> {
    // Connect before capturing: a bad URL or an old server is a start-up error, not a silent loss.
    let bus = match config.output {
        config::OutputKind::Nats => Some(connect_bus(&config).await?),
        _ => None,
    };
    let (tx, rx) = mpsc::channel(256);
    let supervisor = Arc::new(Supervisor::new(
        tx,
        supervisor::SourceDefaults {
            batch_records: config.batch_records.get(),
            batch_interval: config.batch_interval,
            flush_pending: config.flush_pending,
            progress: config.progress,
            replay_speed: config.replay_speed,
        },
    ));
    for spec in &config.sources {
        // Opening is all-or-nothing at start-up: a missing interface or file fails the run.
        if let Err(e) = supervisor.start(spec, config.analyzer, &config.live) {
            supervisor.shutdown();
            supervisor.join_all();
            return Err(e.into());
        }
    }
    // Handles open and the bus connected: root is no longer needed.
    match privileges::drop_privileges(&config.run_as, config.daemon) {
        Ok(privileges::Dropped::To { user, uid, gid, opener }) => {
            tracing::info!(message = "Dropped root privileges.", user, uid, gid, net_raw_kept_for_new_captures = opener);
        }
        Ok(privileges::Dropped::StayedRoot) => tracing::warn!(message = "Running as root, as --user root asks."),
        Ok(privileges::Dropped::NotRoot) => {}
        Err(e) => {
            supervisor.shutdown();
            supervisor.join_all();
            return Err(e.into());
        }
    }
    if !config.daemon {
        // Exit when the sources end (files), rather than wait for control requests.
        supervisor.close();
    }
    tracing::info!(message = "Capture started.", sources = ?config.sources.iter().map(SourceSpec::interface).collect::<Vec<_>>(), daemon = config.daemon);
    let publisher_stats = Arc::new(publish::PublisherStats::default());
    let (aux_stop_tx, aux_stop_rx) = tokio::sync::watch::channel(false);
    // A signal gives the publisher `drain_timeout` to empty its buffer; the end of a file does not.
    let (drain_tx, drain_rx) = tokio::sync::watch::channel(false);
    let mut aux_tasks = Vec::new();
    let mut output = match bus {
        Some((client, js, kv)) => {
            aux_tasks.push(tokio::spawn(status::report(
                kv,
                config.agent_id.clone(),
                supervisor.clone(),
                publisher_stats.clone(),
                config.bus.status_interval,
                aux_stop_rx.clone(),
            )));
            if config.daemon {
                let defaults = control::ControlDefaults { analyzer: config.analyzer, live: config.live.clone() };
                aux_tasks.push(tokio::spawn(control::serve(client, config.agent_id.clone(), supervisor.clone(), defaults, aux_stop_rx)));
            }
            spawn_publisher(&config, js, rx, publisher_stats.clone(), drain_rx)
        }
        None => spawn_writer(&config, rx),
    };
    let written = tokio::select! {
        res = &mut output => res,
        () = shutdown => {
            tracing::info!(message = "Stopping capture.");
            let _ = drain_tx.send(true);
            supervisor.shutdown();
            output.await
        }
    };
    supervisor.shutdown();
    let sup = supervisor.clone();
    tokio::task::spawn_blocking(move || sup.join_all()).await.context("joining capture threads")?;
    let _ = aux_stop_tx.send(true);
    for t in aux_tasks {
        let _ = t.await;
    }
    let output = written.context("output task")??;
    let mut summary = RunSummary::new(config.agent_id, supervisor.snapshot(), output);
    if config.output == config::OutputKind::Nats {
        summary.publisher = publisher_stats.snapshot();
    }
    Ok(summary)
}

type OutputTask = tokio::task::JoinHandle<anyhow::Result<output::OutputStats>>;

fn spawn_publisher(
    config: &Config,
    js: async_nats::jetstream::Context,
    rx: mpsc::Receiver<source::Batch>,
    stats: Arc<publish::PublisherStats>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> OutputTask {
    let cfg = publish::PublishConfig {
        agent: config.agent_id.clone(),
        max_inflight: config.bus.inflight,
        buffer_bytes: config.bus.buffer_bytes,
        max_records: config.batch_records.get().min(1000),
        max_message_bytes: 900 * 1024,
        drain_timeout: std::time::Duration::from_secs(30),
    };
    tokio::spawn(async move {
        publish::run(js, cfg, rx, stats.clone(), stop).await;
        let acked = stats.messages_acked.load(Ordering::Relaxed);
        let records = stats.records_acked.load(Ordering::Relaxed);
        tracing::info!(message = "Publisher drained.", messages = acked, records);
        Ok(output::OutputStats { written: records, skipped: 0 })
    })
}

fn spawn_writer(config: &Config, rx: mpsc::Receiver<source::Batch>) -> OutputTask {
    let host = config.agent_id.clone();
    let (kind, observations) = (config.output, config.observations);
    tokio::task::spawn_blocking(move || {
        output::drain(rx, kind, observations, &host, io::BufWriter::with_capacity(1 << 16, io::stdout().lock())).context("writing records")
    })
}

/// Connects to NATS, checks the server, converges the stream, opens the status bucket.
async fn connect_bus(
    config: &Config,
) -> anyhow::Result<(async_nats::Client, async_nats::jetstream::Context, async_nats::jetstream::kv::Store)> {
    let client = ntpscope_bus::connect(&config.bus.nats).await?;
    let js = async_nats::jetstream::ContextBuilder::new()
        .timeout(std::time::Duration::from_secs(5))
        .max_ack_inflight(config.bus.inflight.max(16) * 2)
        .build(client.clone());
    ntpscope_bus::ensure_stream(&js, &config.bus.stream).await?.log();
    let kv = ntpscope_bus::status_store(&js, &config.bus.stream).await?;
    Ok((client, js, kv))
}

/// The agent's hostname, the default agent id.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}
