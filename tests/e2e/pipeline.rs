//! The pipeline end to end: capture agent → NATS JetStream (a private nats-server 2.15) → sink
//! → SQLite or PostgreSQL, checked against the agent's own JSON-lines output of the same input.
//!
//! The expected rows are computed from the JSON lines by this test's own code
//! ([`crate::harness::expected`]), never by the sink's aggregation.

use std::{collections::BTreeMap, process::Command, time::Duration};

use netlab::{NatsServer, pcapgen};
use sea_orm::{ConnectionTrait, EntityTrait};
use serde_json::Value;

use crate::harness::{
    self, Sink, agent, assert_same, expected, fixture, lines, open, outstanding, stored, stored_records, summary, wait_until,
};

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
    // A row copied in from the Flask seed (README) gets the binary form of its address with the
    // sink's next batch, though that batch does not hold its client.
    db.execute_unprepared(
        "INSERT INTO ntp_clients (host, interface_name, client_ip, first_seen, last_seen, session_count, created_at, updated_at) \
         VALUES ('seed-host', 'eth0', '2001:db8::77', 1, 1, 1, 1, 1)",
    )
    .await
    .expect("copied row");
    let copied = || async {
        use sea_orm::{ColumnTrait, QueryFilter};
        let row = entity::ntp_clients::Entity::find().filter(entity::ntp_clients::Column::ClientIp.eq("2001:db8::77")).one(&db).await;
        row.expect("query").expect("copied row").client_ip_bin
    };
    assert_eq!(copied().await, None);
    let file = fixture(FIXTURES[0]);
    // Another agent id: the same agent's messages would have the same ids, which JetStream drops.
    summary(&agent(&["-r", file.to_str().expect("path"), "--agent-id", "e2e-other", "--flush-pending"], Some(&nats.url)));
    let want = "2001:db8::77".parse::<std::net::Ipv6Addr>().expect("ip").octets().to_vec();
    let filled = wait_until(Duration::from_secs(30), || async { copied().await.as_ref() == Some(&want) }).await;
    assert!(filled, "the copied row's binary address: {:?}", copied().await);
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

/// An idle sink publishes its status on the bus at every tick (0.5 s here) but writes its
/// database row only once per `--db-heartbeat-interval`: each commit makes every SQLite reader of
/// the API drop its page cache and memory map, and the row changes nothing the API shows while
/// the bus is up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_sink_writes_its_database_row_once_per_heartbeat_period() {
    let nats = NatsServer::start().expect("nats-server");
    let dir = tempfile::tempdir().expect("tempdir");
    let url = harness::sqlite_url(dir.path());
    let _sink = Sink::start(&url, &nats.url, &dir.path().join("sink.log"), &["--db-heartbeat-interval", "3"]);
    let db = open(&url).await;
    let row =
        || async { entity::sink_state::Entity::find_by_id(ntp_wire::subject::DEFAULT_CONSUMER.to_string()).one(&db).await.ok().flatten() };
    assert!(wait_until(Duration::from_secs(30), || async { row().await.is_some() }).await, "the sink never wrote its row");
    let client = async_nats::connect(&nats.url).await.expect("connect");
    let kv = async_nats::jetstream::new(client).get_key_value(ntp_wire::subject::STATUS_BUCKET).await.expect("status bucket");
    let key = ntp_wire::subject::sink_status_key(ntp_wire::subject::DEFAULT_CONSUMER).expect("key");
    let (mut writes, mut statuses) = (std::collections::BTreeSet::new(), std::collections::BTreeSet::new());
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(7) {
        writes.insert(row().await.expect("row").updated_at);
        if let Ok(Some(doc)) = kv.get(key.as_str()).await {
            statuses.insert(ntp_wire::status::decode::<ntp_wire::status::SinkStatus>(&doc).expect("status").updated_ns);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // About 14 status ticks, and the row written about 3 s apart: the value first seen and one
    // more per 3 s that passed. Written at every tick, it would change about 14 times.
    let most = 2 + started.elapsed().as_secs() / 3;
    assert!((2..=most as usize).contains(&writes.len()), "database row written at {writes:?} in {:?}", started.elapsed());
    assert!(statuses.len() >= 8, "status on the bus only {} times", statuses.len());
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
async fn killing_the_sink_repeatedly_loses_nothing_and_counts_nothing_twice_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    kill_the_sink_repeatedly(dir.path(), &harness::sqlite_url(dir.path())).await;
}

/// PostgreSQL tells inserted rows from updated ones by `RETURNING` and commits in another
/// process: the same kills, the same result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_sink_repeatedly_loses_nothing_and_counts_nothing_twice_postgres() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pg = harness::PgSchema::create().await;
    kill_the_sink_repeatedly(dir.path(), &pg.url).await;
    pg.drop_now().await;
}

/// A replay published whole, then the sink killed (SIGKILL) at several points while it stores
/// it, and started once more: every record stored exactly once.
async fn kill_the_sink_repeatedly(dir: &std::path::Path, url: &str) {
    let (pcap, want, total) = synthetic(dir, 20_000);
    let nats = NatsServer::start().expect("nats-server");
    let args = ["-r", pcap.to_str().expect("path"), "--agent-id", "synth", "--flush-pending", "--batch-records", "100"];
    let published = summary(&agent(&args, Some(&nats.url)));
    assert_eq!(published["publisher"]["records_acked"].as_i64(), Some(total));
    let log = dir.join("sink.log");
    let sink_args = ["--batch-size", "100"];
    let db = open(url).await;
    let mut interrupted = 0;
    let mut kills = 0;
    for delay_ms in [300u64, 700, 450, 900, 600] {
        let mut sink = Sink::start(url, &nats.url, &log, &sink_args);
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
    let _sink = Sink::start(url, &nats.url, &log, &sink_args);
    stored_exactly_once(&db, &want, total, &format!("after {kills} kills")).await;
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

/// Waits (up to 30 s) until the sink is consuming: its state row appears, or it logs its start.
async fn consuming(db: &sea_orm::DatabaseConnection, sink: &Sink) -> bool {
    wait_until(Duration::from_secs(30), || async {
        entity::sink_state::Entity::find().all(db).await.is_ok_and(|r| !r.is_empty()) || sink.log_text().contains("Sink started")
    })
    .await
}

/// After a new sink has stored all `total` records: every row and counter as in `want`, nothing
/// counted twice (redeliveries get a second to do so, wrongly, before the comparison).
async fn stored_exactly_once(db: &sea_orm::DatabaseConnection, want: &BTreeMap<harness::RowKey, harness::Totals>, total: i64, what: &str) {
    let done = wait_until(Duration::from_secs(90), || async { stored_records(db).await == total }).await;
    assert!(done, "stored {} of {total} {what}", stored_records(db).await);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_same(want, &stored(db).await);
    let state = entity::sink_state::Entity::find().all(db).await.expect("state");
    assert_eq!(state[0].total_processed, total, "exactly-once counters");
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
    assert!(consuming(&db, &sink).await);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(stored_records(&db).await, 0, "nothing committed before shutdown");
    assert_eq!(sink.terminate(), Some(0), "{}", sink.log_text());
    assert_eq!(stored_records(&db).await, truth.len() as i64);
    assert_same(&expected(&truth), &stored(&db).await);
    assert_eq!(outstanding(&nats.url).await, 0, "every committed message acknowledged before exit");
}

/// A sink consuming from a fresh SQLite file in `dir`, then the synthetic capture of `requests`
/// published in messages of 100 records while another process holds the database's lock.
struct BehindALock {
    url: String,
    log: std::path::PathBuf,
    sink: Sink,
    db: sea_orm::DatabaseConnection,
    lock: harness::KillOnDrop,
    want: BTreeMap<harness::RowKey, harness::Totals>,
    total: i64,
    /// The agent's summary.
    published: Value,
}

async fn behind_a_lock(dir: &std::path::Path, nats_url: &str, requests: u32, sink_args: &[&str]) -> BehindALock {
    let (pcap, want, total) = synthetic(dir, requests);
    let url = harness::sqlite_url(dir);
    let log = dir.join("sink.log");
    let sink = Sink::start(&url, nats_url, &log, sink_args);
    let db = open(&url).await;
    assert!(consuming(&db, &sink).await, "{}", sink.log_text());
    let lock = harness::lock_database(&dir.join("ntp_clients.db"));
    let args = ["-r", pcap.to_str().expect("path"), "--agent-id", "synth", "--flush-pending", "--batch-records", "100"];
    let published = summary(&agent(&args, Some(nats_url)));
    assert_eq!(published["publisher"]["records_acked"].as_i64(), Some(total));
    BehindALock { url, log, sink, db, lock, want, total, published }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_batches_queued_behind_a_locked_database_commits_them_and_exits_zero() {
    // The writer waits for SQLite's lock with one batch, the next one is prepared and queued,
    // and the receiver holds a third when SIGTERM comes; the lock goes a second later. Every
    // batch in hand is committed and acknowledged, the sink exits 0, and a new sink stores the
    // rest (redelivered) exactly once.
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = NatsServer::start().expect("nats-server");
    let sink_args = ["--batch-size", "500", "--batch-interval", "0.2", "--ack-wait", "60"];
    let BehindALock { url, log, mut sink, db, lock, want, total, .. } = behind_a_lock(dir.path(), &nats.url, 3_000, &sink_args).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let release = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(1));
        drop(lock);
    });
    assert_eq!(sink.terminate(), Some(0), "{}", sink.log_text());
    release.join().expect("release the lock");
    let committed = stored_records(&db).await;
    assert!((1_500..=total).contains(&committed), "three batches of 500 committed at shutdown, stored {committed}");
    // Acknowledged are exactly the committed messages (of 100 records each): the rest is left for
    // the next sink.
    assert_eq!(outstanding(&nats.url).await, u64::try_from(total - committed).expect("count") / 100, "acknowledged = committed");
    let _sink = Sink::start(&url, &nats.url, &log, &sink_args);
    stored_exactly_once(&db, &want, total, "after the shutdown").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_waiting_for_a_locked_database_longer_than_ack_wait_are_not_redelivered() {
    // Three batches in hand for three ack waits: the writer's, in SQLite's busy wait behind a lock
    // another process holds; the one queued behind it; the one the receiver waits to hand over.
    // Progress acks keep every message from redelivery: JetStream delivers each message once and
    // the sink skips no copy. Without them each batch would come again every three seconds.
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = NatsServer::start().expect("nats-server");
    let sink_args = ["--batch-size", "500", "--batch-interval", "1", "--ack-wait", "3"];
    let BehindALock { mut sink, db, lock, want, total, published, .. } = behind_a_lock(dir.path(), &nats.url, 1_500, &sink_args).await;
    let messages = published["publisher"]["messages_acked"].as_u64().expect("messages");
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(stored_records(&db).await, 0, "the lock held");
    drop(lock);
    stored_exactly_once(&db, &want, total, "after the lock").await;
    let js = async_nats::jetstream::new(async_nats::connect(&nats.url).await.expect("connect"));
    let stream = js.get_stream(ntp_wire::subject::STREAM).await.expect("stream");
    let consumer = stream.consumer_info(ntp_wire::subject::DEFAULT_CONSUMER).await.expect("consumer");
    assert_eq!(consumer.delivered.consumer_sequence, messages, "deliveries, one per message");
    let state = entity::sink_state::Entity::find().all(&db).await.expect("state");
    assert_eq!(state[0].batches, 3, "the premise: three batches of 500 records were in hand");
    assert_eq!(state[0].duplicates_skipped, 0, "no copy reached the writer");
    assert_eq!(sink.terminate(), Some(0), "{}", sink.log_text());
}

/// A small capture in which every counter and latest-value column of `ntp_clients` gets a value
/// other than its default: a retransmission, an interleaved reply (RFC 9769), a randomised T1, a
/// kiss-o'-death, an unanswered request, NTS extension fields, a legacy MAC, VLAN tags, and
/// symmetric, broadcast, control and monlist packets. Written here, byte by byte, from the RFCs.
mod features {
    use std::{io::Write, path::Path};

    use netlab::pcapgen::ntp_time;

    /// Capture time of the first packet (2026-01-01T00:00:00Z), Unix ns.
    const T0: i64 = 1_767_225_600_000_000_000;
    const SERVER: [u8; 4] = [198, 18, 255, 1];
    const MS: i64 = 1_000_000;

    /// An NTP header: version 4 (mode 6/7: version 2 and their own layouts are built elsewhere).
    fn ntp(mode: u8, stratum: u8, refid: [u8; 4], org: u64, rx: u64, tx: u64) -> Vec<u8> {
        let mut p = vec![0u8; 48];
        p[0] = (4 << 3) | mode;
        p[1] = stratum;
        p[2] = 6;
        p[3] = 0xe9; // precision 2^-23
        if mode == 4 || mode == 2 || mode == 5 {
            p[4..8].copy_from_slice(&0x0000_0bd9u32.to_be_bytes());
            p[8..12].copy_from_slice(&0x0000_0630u32.to_be_bytes());
            p[16..24].copy_from_slice(&ntp_time(T0 - 60_000 * MS).to_be_bytes());
        }
        p[12..16].copy_from_slice(&refid);
        p[24..32].copy_from_slice(&org.to_be_bytes());
        p[32..40].copy_from_slice(&rx.to_be_bytes());
        p[40..48].copy_from_slice(&tx.to_be_bytes());
        p
    }

    /// An RFC 7822 extension field of `len` bytes (header included).
    fn ext(p: &mut Vec<u8>, field_type: u16, len: u16) {
        p.extend_from_slice(&field_type.to_be_bytes());
        p.extend_from_slice(&len.to_be_bytes());
        p.extend(std::iter::repeat_n(0x5a, usize::from(len) - 4));
    }

    /// Ethernet (optionally 802.1Q tagged) / IPv4 / UDP around `payload`.
    fn frame(vlan: Option<u16>, src: ([u8; 4], u16), dst: ([u8; 4], u16), payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
        if let Some(id) = vlan {
            f.extend_from_slice(&[0x81, 0x00]);
            f.extend_from_slice(&id.to_be_bytes());
        }
        f.extend_from_slice(&[0x08, 0x00]);
        let total = (20 + 8 + payload.len()) as u16;
        let mut ip = [0u8; 20];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&total.to_be_bytes());
        ip[8] = 64;
        ip[9] = 17;
        ip[12..16].copy_from_slice(&src.0);
        ip[16..20].copy_from_slice(&dst.0);
        let mut sum: u32 = ip.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], c[1]]))).sum();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        ip[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
        f.extend_from_slice(&ip);
        f.extend_from_slice(&src.1.to_be_bytes());
        f.extend_from_slice(&dst.1.to_be_bytes());
        f.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        f.extend_from_slice(&[0, 0]);
        f.extend_from_slice(payload);
        f
    }

    /// Writes the capture (nanosecond pcap, Ethernet); returns the number of records it yields.
    pub fn write(path: &Path) -> std::io::Result<usize> {
        let srv = (SERVER, 123);
        let (a, b, c, d, e) = (
            ([198, 18, 7, 1], 40001),
            ([198, 18, 7, 2], 40002),
            ([198, 18, 7, 3], 40003),
            ([198, 18, 7, 4], 123),
            ([198, 18, 7, 5], 40005),
        );
        let at = |ms: i64| T0 + ms * MS;
        let t = |ms: i64| ntp_time(at(ms));
        let mut frames: Vec<(i64, Vec<u8>)> = Vec::new();
        let mut push = |ms: i64, vlan: Option<u16>, src, dst, payload: Vec<u8>| frames.push((at(ms), frame(vlan, src, dst, &payload)));
        // Client a (VLAN 100): a request sent twice, then answered: one session, one retransmit.
        let t1 = ntp_time(at(0) - MS / 2);
        push(0, Some(100), a, srv, ntp(3, 0, [0; 4], 0, 0, t1));
        push(300, Some(100), a, srv, ntp(3, 0, [0; 4], 0, 0, t1));
        push(320, Some(100), srv, a, ntp(4, 2, [198, 18, 255, 254], t1, t(310), t(310) + 40_000));
        // An interleaved exchange: the request's receive field is when the client got the last
        // reply; the server's reply echoes it and sends the previous transmit time.
        push(1000, Some(100), a, srv, ntp(3, 0, [0; 4], t(310), t(321), t(1000) - 9_000));
        push(1020, Some(100), srv, a, ntp(4, 2, [198, 18, 255, 254], t(321), t(1010), t(310) + 40_000));
        // A randomised T1 (chrony, ntpd-rs): answered, no latency.
        push(2000, Some(100), a, srv, ntp(3, 0, [0; 4], 0, 0, 0x1234_5678_9abc_def0));
        push(2010, Some(100), srv, a, ntp(4, 2, [198, 18, 255, 254], 0x1234_5678_9abc_def0, t(2005), t(2006)));
        // A kiss-o'-death. Over a's sessions, no metric has its minimum or maximum last, so a
        // merge that keeps the newest value instead of the extreme shows.
        let t1 = ntp_time(at(3000) - 50 * MS);
        push(3000, Some(100), a, srv, ntp(3, 0, [0; 4], 0, 0, t1));
        push(3030, Some(100), srv, a, ntp(4, 0, *b"RATE", t1, t(3000), t(3000) + 200_000));
        // The newest session is unanswered: the latest values come from a request.
        push(4000, Some(100), a, srv, ntp(3, 0, [0; 4], 0, 0, t(4000) - 5_000));
        // Client b: an NTS exchange (unique identifier, cookie, authenticator), then a plain one.
        let mut req = ntp(3, 0, [0; 4], 0, 0, t(500) - 3_000);
        ext(&mut req, 0x0104, 36);
        ext(&mut req, 0x0204, 104);
        ext(&mut req, 0x0404, 40);
        push(500, None, b, srv, req);
        let mut resp = ntp(4, 1, *b"GPS\0", t(500) - 3_000, t(505), t(506));
        ext(&mut resp, 0x0104, 36);
        ext(&mut resp, 0x0404, 72);
        push(510, None, srv, b, resp);
        push(1500, None, b, srv, ntp(3, 0, [0; 4], 0, 0, t(1500) - 2_000));
        push(1504, None, srv, b, ntp(4, 1, *b"GPS\0", t(1500) - 2_000, t(1502), t(1503)));
        // Client c (VLAN 200): a symmetric-key MAC (key id 8, MD5) on both packets.
        let mac = |mut p: Vec<u8>| {
            p.extend_from_slice(&8u32.to_be_bytes());
            p.extend_from_slice(&[0xab; 16]);
            p
        };
        push(600, Some(200), c, srv, mac(ntp(3, 0, [0; 4], 0, 0, t(600) - 4_000)));
        push(605, Some(200), srv, c, mac(ntp(4, 2, [198, 18, 255, 254], t(600) - 4_000, t(602), t(603))));
        // Peer d: broadcast, then a symmetric active/passive pair.
        push(700, None, d, ([198, 18, 7, 255], 123), ntp(5, 2, [198, 18, 255, 254], 0, 0, t(700)));
        push(800, None, d, srv, ntp(1, 3, [198, 18, 255, 1], 0, 0, t(800)));
        push(810, None, srv, d, ntp(2, 2, [198, 18, 255, 254], t(800), t(805), t(806)));
        // Client e: an ntpdc monlist query (mode 7, implementation 3, MON_GETLIST_1) and an ntpq
        // readvar (mode 6, opcode 2), both version 2.
        let mut monlist = vec![0x17, 0x00, 3, 42, 0, 0, 0, 0];
        monlist.resize(48, 0);
        push(900, None, e, srv, monlist);
        push(950, None, e, srv, vec![0x16, 0x02, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0]);
        frames.sort_by_key(|(t, _)| *t);
        let mut w = std::io::BufWriter::new(std::fs::File::create(path)?);
        // Nanosecond magic, version 2.4, no zone or accuracy, snap length 65535, Ethernet.
        w.write_all(&0xa1b2_3c4du32.to_le_bytes())?;
        w.write_all(&[2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0])?;
        w.write_all(&65_535u32.to_le_bytes())?;
        w.write_all(&1u32.to_le_bytes())?;
        for (ns, f) in &frames {
            w.write_all(&((ns / 1_000_000_000) as u32).to_le_bytes())?;
            w.write_all(&((ns % 1_000_000_000) as u32).to_le_bytes())?;
            w.write_all(&(f.len() as u32).to_le_bytes())?;
            w.write_all(&(f.len() as u32).to_le_bytes())?;
            w.write_all(f)?;
        }
        w.flush()?;
        // a: 5 sessions, b: 2, c: 1, d: 3 observations, e: 2.
        Ok(13)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_column_matches_on_a_capture_that_sets_every_column() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pcap = dir.path().join("features.pcap");
    let n = features::write(&pcap).expect("write pcap");
    let args = ["-r", pcap.to_str().expect("path"), "--agent-id", "features", "--flush-pending", "--batch-records", "1"];
    let truth = lines(&agent(&args, None));
    assert_eq!(truth.len(), n, "{truth:#?}");
    let want = expected(&truth);
    // The capture must give every counter a non-zero value somewhere, or this test proves nothing.
    for (name, _) in want.values().next().expect("rows").cols.iter().filter(|(k, _)| k.ends_with("_count")) {
        assert!(want.values().any(|t| !matches!(t.cols.get(name), Some(harness::Cell::Int(Some(0))))), "{name} is 0 in every row");
    }
    let a = &want[&("features".to_string(), "features.pcap".to_string(), "198.18.7.1".to_string())].cols;
    for (col, v) in [("session_count", 5), ("retransmit_count", 1), ("interleaved_count", 1), ("t1_randomized_count", 1), ("kod_count", 1)]
    {
        assert_eq!(a[col], harness::Cell::Int(Some(v)), "{col}");
    }
    assert_eq!(a["last_kiss_code"], harness::Cell::Text(Some("RATE".into())));
    assert!(matches!(a["last_kiss_at"], harness::Cell::Int(Some(t)) if t > 0), "{:?}", a["last_kiss_at"]);
    assert_eq!(a["vlan_id"], harness::Cell::Int(Some(100)));
    // One record per message and one message per transaction: every column goes through the
    // upsert's merge, not only through the sink's in-memory aggregation.
    let nats = NatsServer::start().expect("nats-server");
    let published = summary(&agent(&args, Some(&nats.url)));
    assert_eq!(published["publisher"]["records_acked"].as_u64(), Some(n as u64), "{published}");
    let url = harness::sqlite_url(dir.path());
    let _sink = Sink::start(&url, &nats.url, &dir.path().join("sink.log"), &["--batch-size", "1"]);
    let db = open(&url).await;
    let done = wait_until(Duration::from_secs(60), || async { stored_records(&db).await == n as i64 }).await;
    assert!(done, "stored {} of {n}", stored_records(&db).await);
    assert_same(&want, &stored(&db).await);
}

/// Batch writes that fail are retried until they commit, and the failed attempts reach the
/// sink's database row with the commit, so that they stay readable once the sink has stopped
/// and its status on the bus is gone. The writes fail for as long as a trigger refuses them
/// (every batch records its message ids in `applied_batches`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_batch_writes_are_counted_in_the_sinks_row() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (pcap, want, total) = synthetic(dir.path(), 2_000);
    let nats = NatsServer::start().expect("nats-server");
    let args = ["-r", pcap.to_str().expect("path"), "--agent-id", "synth", "--flush-pending", "--batch-records", "100"];
    assert_eq!(summary(&agent(&args, Some(&nats.url)))["publisher"]["records_acked"].as_i64(), Some(total));
    let url = harness::sqlite_url(dir.path());
    let db = sea_orm::Database::connect(migration::creating_options(&url)).await.expect("create");
    <migration::Migrator as sea_orm_migration::MigratorTrait>::up(&db, None).await.expect("schema");
    db.execute_unprepared(
        "CREATE TRIGGER refuse BEFORE INSERT ON applied_batches BEGIN SELECT RAISE(ABORT, 'writes refused by the test'); END",
    )
    .await
    .expect("trigger");
    let mut sink = Sink::start(&url, &nats.url, &dir.path().join("sink.log"), &["--batch-size", "500"]);
    let refused =
        wait_until(Duration::from_secs(60), || async { sink.log_text().matches("writes refused by the test").count() >= 2 }).await;
    assert!(refused, "the sink never failed a write: {}", sink.log_text());
    assert_eq!(stored_records(&db).await, 0, "nothing committed while writes are refused");
    db.execute_unprepared("DROP TRIGGER refuse").await.expect("drop trigger");
    let done = wait_until(Duration::from_secs(60), || async { stored_records(&db).await == total }).await;
    assert!(done, "stored {} of {total}", stored_records(&db).await);
    assert_eq!(sink.terminate(), Some(0), "a clean stop");
    let logged = sink.log_text().matches("writes refused by the test").count();
    let row = entity::sink_state::Entity::find().all(&db).await.expect("sink_state");
    let failed: i64 = row.iter().map(|r| r.failed_attempts).sum();
    assert!(failed >= 2, "failed_attempts {failed} in the row");
    assert!(usize::try_from(failed).is_ok_and(|f| f <= logged), "{failed} counted, {logged} logged");
    assert_same(&want, &stored(&db).await);
}
