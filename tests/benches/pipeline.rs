//! End-to-end throughput: pcap → agent → nats-server → sink → committed SQLite rows, all three
//! processes (release builds) on this machine at once.
//!
//! ```text
//! cargo bench -p e2e --bench pipeline              # 2 M sessions over 200 k clients
//! cargo bench -p e2e --bench pipeline -- 500000    # fewer sessions
//! cargo bench -p e2e --bench pipeline -- --replay-speed=2   # offered at 20 k sessions/s
//! cargo bench -p e2e --bench pipeline -- --replay-speed=2 --batch-interval=0.5   # the sink's interval (default 1 s)
//! ```
//!
//! Without `--replay-speed` the agent reads the file flat out, so the figure is the rate the
//! pipeline sustains and the latency is mostly queueing in the stream. With it the agent paces
//! the file at its timestamps (one request every 100 µs, so 10 k sessions/s) times the factor:
//! the latency at that offered load.
//!
//! Throughput is sessions divided by the time from the agent's start to the commit that makes
//! the table hold every session. Latency is, per applied message, the sink's commit time minus
//! the time the agent handed the message to NATS (the sink logs p50/p99/max on exit); the agent
//! adds at most its batching interval (100 ms) before that. Peak RSS comes from
//! `/proc/<pid>/status` (VmHWM) of each process just before it exits.
#![allow(clippy::disallowed_methods)] // a benchmark measures wall time

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use netlab::bench::{cpu_seconds, peak_rss_mib, release_bin};

/// One integer from the database, through the `sqlite3` shell.
fn query_i64(db: &Path, sql: &str) -> Result<i64, String> {
    let out = Command::new("sqlite3").arg(db).arg(sql).output().map_err(|e| format!("sqlite3: {e}"))?;
    if !out.status.success() {
        return Err(format!("sqlite3: {}", String::from_utf8_lossy(&out.stderr)));
    }
    String::from_utf8_lossy(&out.stdout).trim().parse().map_err(|e| format!("not a count: {e}"))
}

/// Records the sink has committed: one row of `sink_state`, written in the transaction that
/// applies them (0 while the sink has not created its tables yet). Polling it costs little (a
/// `sqlite3` process every 50 ms); summing `session_count` over the table that often (as the
/// first version of this bench did) is a full scan competing with the sink for CPU. The generated
/// capture holds request/response pairs only, so every record is one session.
fn records_committed(db: &Path) -> i64 {
    query_i64(db, "SELECT COALESCE(SUM(total_processed),0) FROM sink_state").unwrap_or(0)
}

/// Sessions in the table; any failure to read them is an error, not zero.
fn sessions_stored(db: &Path) -> i64 {
    query_i64(db, "SELECT COALESCE(SUM(session_count),0) FROM ntp_clients").expect("sessions in the table")
}

fn term(child: &mut Child) {
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let _ = child.wait();
}

fn main() {
    let requests: u32 = std::env::args().find_map(|a| a.parse().ok()).unwrap_or(2_000_000);
    let speed: Option<String> = std::env::args().find_map(|a| a.strip_prefix("--replay-speed=").map(str::to_string));
    let interval: String =
        std::env::args().find_map(|a| a.strip_prefix("--batch-interval=").map(str::to_string)).unwrap_or_else(|| "1".into());
    let status = Command::new(env!("CARGO"))
        .args(["build", "--release", "-p", "ntpscope-capture", "-p", "ntpscope-sink"])
        .status()
        .expect("cargo build");
    assert!(status.success());
    let dir = tempfile::tempdir().expect("tempdir");
    let pcap = dir.path().join("pipeline.pcap");
    let spec = netlab::pcapgen::Spec { requests, clients: 200_000, ..netlab::pcapgen::Spec::default() };
    let (answered, unanswered) = netlab::pcapgen::write(&pcap, &spec).expect("pcap");
    let total = i64::try_from(answered + unanswered).expect("count");
    let nats = netlab::NatsServer::start().expect("nats-server");
    let db = dir.path().join("ntp_clients.db");
    let sink_log = dir.path().join("sink.log");
    let mut sink = Command::new(release_bin("ntpscope-sink"))
        .args(["--db-path", db.to_str().expect("path"), "--batch-size", "100000", "--batch-interval", &interval, "--ack-wait", "60"])
        .env("NTPSCOPE_NATS_URL", &nats.url)
        .env("NO_COLOR", "1")
        .stderr(std::fs::File::create(&sink_log).expect("log"))
        .spawn()
        .expect("sink");
    std::thread::sleep(Duration::from_secs(2));
    let nats_pid = nats.pid().expect("nats-server runs");
    let (sink_cpu0, nats_cpu0) = (cpu_seconds(sink.id()), cpu_seconds(nats_pid));
    let start = Instant::now();
    let mut agent = Command::new(release_bin("ntpscope-capture"));
    agent.args(["-r", pcap.to_str().expect("path"), "--output", "nats", "--nats-url", &nats.url, "--flush-pending", "--summary", "none"]);
    if let Some(speed) = &speed {
        agent.args(["--replay-speed", speed]);
    }
    let agent = agent.stdout(Stdio::null()).spawn().expect("agent");
    let agent_pid = agent.id();
    let mut agent_rss = 0.0f64;
    let mut agent_cpu = f64::NAN;
    let mut agent = agent;
    let mut agent_done = None;
    loop {
        if agent_done.is_none() {
            agent_rss = agent_rss.max(peak_rss_mib(agent_pid));
            // Read before the wait that reaps it: the last reading is at most 50 ms old.
            agent_cpu = cpu_seconds(agent_pid);
            if let Ok(Some(s)) = agent.try_wait() {
                assert!(s.success(), "agent failed");
                agent_done = Some(start.elapsed());
            }
        }
        if records_committed(&db) >= total {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(1200), "pipeline did not finish");
        std::thread::sleep(Duration::from_millis(50));
    }
    let elapsed = start.elapsed();
    assert_eq!(sessions_stored(&db), total, "the table holds every session once");
    let sink_rss = peak_rss_mib(sink.id());
    let sink_cpu = cpu_seconds(sink.id()) - sink_cpu0;
    let nats_cpu = cpu_seconds(nats_pid) - nats_cpu0;
    term(&mut sink);
    let log = std::fs::read_to_string(&sink_log).unwrap_or_default();
    let lag = log.lines().find(|l| l.contains("Sink stopped")).unwrap_or("(no lag line)").to_string();
    println!(
        "# pipeline benchmark: {total} sessions ({answered} answered, {unanswered} unanswered), 200000 clients, sink --batch-interval {interval}, {}",
        speed.as_ref().map_or_else(
            || "file read flat out".to_string(),
            |s| format!("replayed at {s}x its pace ({} k sessions/s offered)", s.parse::<f64>().map_or(f64::NAN, |f| f * 10.0))
        )
    );
    println!(
        "pcap → committed rows: {:.2} s = {:.0} sessions/s (agent finished publishing after {:.2} s)",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64(),
        agent_done.map_or(f64::NAN, |d| d.as_secs_f64())
    );
    println!("peak RSS: agent {agent_rss:.0} MiB (sampled), sink {sink_rss:.0} MiB");
    let per_session = |cpu: f64| cpu * 1e6 / total as f64;
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    println!(
        "CPU: agent {agent_cpu:.2} s (sampled), nats-server {nats_cpu:.2} s, sink {sink_cpu:.2} s = {:.2} / {:.2} / {:.2} µs per session; {:.2} of the {cores} cores' {:.2} s",
        per_session(agent_cpu),
        per_session(nats_cpu),
        per_session(sink_cpu),
        agent_cpu + nats_cpu + sink_cpu,
        cores as f64 * elapsed.as_secs_f64()
    );
    println!("sink: {}", lag.split("Sink stopped.").nth(1).unwrap_or(&lag).trim());
    drop(nats);
}
