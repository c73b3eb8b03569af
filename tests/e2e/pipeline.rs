//! The pipeline end to end: capture agent → NATS JetStream (a private nats-server 2.15) → sink
//! → SQLite or PostgreSQL, checked against the agent's own JSON-lines output of the same input.
//!
//! The expected rows are computed from the JSON lines by this test's own code
//! ([`crate::harness::expected`]), never by the sink's aggregation.

use std::{collections::BTreeMap, process::Command, time::Duration};

use netlab::{NatsServer, pcapgen};
use sea_orm::EntityTrait;
use serde_json::Value;

use crate::harness::{self, Sink, agent, assert_same, expected, fixture, lines, open, stored, stored_records, summary, wait_until};

const FIXTURES: [&str; 9] = [
    "zeek-ntp.pcap",
    "zeek-ntp2.pcap",
    "zeek-NTP_sync.pcap",
    "zeek-ntpmode67.pcap",
    "tcpdump-ntp.pcap",
    "tcpdump-ntp-time-ef.pcap",
    "tcpdump-ntp-control.pcap",
    "leapsecond-ntp.pcap",
    "leapsecond-ntp_2P.pcap",
];

/// Replays every fixture through the bus and returns the JSON lines the agent printed for them.
fn replay_fixtures(nats_url: &str) -> Vec<Value> {
    let mut truth = Vec::new();
    for name in FIXTURES {
        let file = fixture(name);
        let args = ["-r", file.to_str().expect("path"), "--agent-id", "e2e-host", "--flush-pending"];
        truth.extend(lines(&agent(&args, None)));
        let published = summary(&agent(&args, Some(nats_url)));
        assert_eq!(published["publisher"]["records_dropped"], 0, "{name}: {published}");
    }
    truth
}

async fn corpus_replay_matches(database_url: &str) {
    let nats = NatsServer::start().expect("nats-server");
    let dir = tempfile::tempdir().expect("tempdir");
    let _sink = Sink::start(database_url, &nats.url, &dir.path().join("sink.log"), &[]);
    let truth = replay_fixtures(&nats.url);
    let want = expected(&truth);
    let total = truth.len() as i64;
    let db = open(database_url).await;
    let done = wait_until(Duration::from_secs(60), || async { stored_records(&db).await == total }).await;
    assert!(done, "sink stored {} of {total} records", stored_records(&db).await);
    assert_same(&want, &stored(&db).await);
    let state = entity::sink_state::Entity::find().all(&db).await.expect("sink_state");
    assert_eq!(state.len(), 1);
    assert_eq!(state[0].total_processed, total);
    assert_eq!((state[0].dead_lettered, state[0].duplicates_skipped), (0, 0));
    // The agent's status document is in the KV bucket.
    let client = async_nats::connect(&nats.url).await.expect("connect");
    let js = async_nats::jetstream::new(client);
    let kv = js.get_key_value(ntp_wire::subject::STATUS_BUCKET).await.expect("status bucket");
    let key = ntp_wire::subject::agent_status_key("e2e-host").expect("key");
    let doc = kv.get(key).await.expect("get").expect("agent status present");
    let status: ntp_wire::status::AgentStatus = ntp_wire::status::decode(&doc).expect("decode");
    assert_eq!(status.agent, "e2e-host");
    assert!(!status.interfaces.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corpus_replay_through_the_bus_matches_the_json_lines_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    corpus_replay_matches(&harness::sqlite_url(dir.path())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corpus_replay_through_the_bus_matches_the_json_lines_postgres() {
    let pg = harness::PgSchema::create().await;
    corpus_replay_matches(&pg.url).await;
    pg.drop_now().await;
}

/// A synthetic capture and the truth for it.
fn synthetic(dir: &std::path::Path, requests: u32) -> (std::path::PathBuf, BTreeMap<harness::RowKey, harness::Totals>, i64) {
    let pcap = dir.join("synthetic.pcap");
    let spec = pcapgen::Spec { requests, clients: 3_000, unanswered_every: 10, clustered: true, ..pcapgen::Spec::default() };
    let (answered, unanswered) = pcapgen::write(&pcap, &spec).expect("write pcap");
    let args = ["-r", pcap.to_str().expect("path"), "--agent-id", "synth", "--flush-pending"];
    let truth = lines(&agent(&args, None));
    assert_eq!(truth.len() as u64, answered + unanswered);
    (pcap.clone(), expected(&truth), truth.len() as i64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_sink_repeatedly_loses_nothing_and_counts_nothing_twice() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (pcap, want, total) = synthetic(dir.path(), 20_000);
    let nats = NatsServer::start().expect("nats-server");
    let args = ["-r", pcap.to_str().expect("path"), "--agent-id", "synth", "--flush-pending", "--batch-records", "100"];
    let published = summary(&agent(&args, Some(&nats.url)));
    assert_eq!(published["publisher"]["records_acked"].as_i64(), Some(total));
    let url = harness::sqlite_url(dir.path());
    let log = dir.path().join("sink.log");
    let sink_args = ["--batch-size", "100"];
    let db = open(&url).await;
    let mut interrupted = 0;
    let mut kills = 0;
    for delay_ms in [300u64, 700, 450, 900, 600] {
        let mut sink = Sink::start(&url, &nats.url, &log, &sink_args);
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        sink.kill9();
        kills += 1;
        let n = stored_records(&db).await;
        if n == total {
            break;
        }
        if n > 0 {
            interrupted += 1;
        }
    }
    assert!(interrupted >= 1, "no kill landed mid-stream ({kills} kills); the test proves nothing");
    let _sink = Sink::start(&url, &nats.url, &log, &sink_args);
    let done = wait_until(Duration::from_secs(90), || async { stored_records(&db).await == total }).await;
    assert!(done, "stored {} of {total} after {kills} kills", stored_records(&db).await);
    // Give any redelivery a chance to (wrongly) count twice before comparing.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_same(&want, &stored(&db).await);
    let state = entity::sink_state::Entity::find().all(&db).await.expect("state");
    assert_eq!(state[0].total_processed, total, "exactly-once counters");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_nats_mid_stream_loses_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (pcap, want, total) = synthetic(dir.path(), 40_000);
    let mut nats = NatsServer::start().expect("nats-server");
    let url = harness::sqlite_url(dir.path());
    let _sink = Sink::start(&url, &nats.url, &dir.path().join("sink.log"), &["--batch-size", "500"]);
    let publisher = Command::new(harness::bin("ntpscope-capture"))
        .args(["-r", pcap.to_str().expect("path"), "--agent-id", "synth", "--flush-pending", "--batch-records", "100"])
        .args(["--output", "nats", "--nats-url", &nats.url, "--summary", "json"])
        .env("NTPSCOPE_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("agent");
    tokio::time::sleep(Duration::from_millis(300)).await;
    nats.restart().expect("restart nats-server");
    let out = publisher.wait_with_output().expect("agent exit");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let db = open(&url).await;
    let done = wait_until(Duration::from_secs(90), || async { stored_records(&db).await == total }).await;
    assert!(done, "stored {} of {total}", stored_records(&db).await);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_same(&want, &stored(&db).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_cut_off_from_nats_buffers_and_delivers_everything_later() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (pcap, want, total) = synthetic(dir.path(), 20_000);
    let mut nats = NatsServer::start().expect("nats-server");
    let publisher = Command::new(harness::bin("ntpscope-capture"))
        .args(["-r", pcap.to_str().expect("path"), "--agent-id", "synth", "--flush-pending", "--batch-records", "100"])
        .args(["--output", "nats", "--nats-url", &nats.url, "--summary", "json", "--publish-buffer-mib", "1"])
        .env("NTPSCOPE_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("agent");
    tokio::time::sleep(Duration::from_millis(150)).await;
    nats.kill();
    // Cut off for a while: the file replay fills the 1 MiB buffer and then waits.
    tokio::time::sleep(Duration::from_secs(4)).await;
    nats.restart().expect("restart nats-server");
    let out = publisher.wait_with_output().expect("agent exit");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let s = summary(&out);
    assert_eq!(s["publisher"]["records_acked"].as_i64(), Some(total), "{s}");
    assert_eq!(s["publisher"]["records_dropped"], 0);
    let url = harness::sqlite_url(dir.path());
    let _sink = Sink::start(&url, &nats.url, &dir.path().join("sink.log"), &["--batch-size", "1000"]);
    let db = open(&url).await;
    let done = wait_until(Duration::from_secs(60), || async { stored_records(&db).await == total }).await;
    assert!(done, "stored {} of {total}", stored_records(&db).await);
    assert_same(&want, &stored(&db).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_commits_the_batch_in_hand_and_exits_zero() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = NatsServer::start().expect("nats-server");
    let url = harness::sqlite_url(dir.path());
    let file = fixture("leapsecond-ntp_2P.pcap");
    let args = ["-r", file.to_str().expect("path"), "--agent-id", "term", "--flush-pending"];
    let truth = lines(&agent(&args, None));
    agent(&args, Some(&nats.url));
    // A batch that only closes on shutdown: huge size, long interval.
    let mut sink = Sink::start(
        &url,
        &nats.url,
        &dir.path().join("sink.log"),
        &["--batch-size", "100000", "--batch-interval", "60", "--ack-wait", "300"],
    );
    let db = open(&url).await;
    // Wait until the sink is consuming (its state row appears with the queue size).
    let ready = wait_until(Duration::from_secs(30), || async {
        entity::sink_state::Entity::find().all(&db).await.is_ok_and(|r| !r.is_empty()) || sink.log_text().contains("Sink started")
    })
    .await;
    assert!(ready);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(stored_records(&db).await, 0, "nothing committed before shutdown");
    assert_eq!(sink.terminate(), Some(0), "{}", sink.log_text());
    assert_eq!(stored_records(&db).await, truth.len() as i64);
    assert_same(&expected(&truth), &stored(&db).await);
}
