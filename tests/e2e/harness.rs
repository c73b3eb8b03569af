//! Helpers of the end-to-end suite: locating the binaries, running agents and sinks as real
//! processes, waiting on the database, and computing expected rows from JSON lines: every column
//! of `ntp_clients` the sink derives from records, compared column by column.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use sea_orm::{ConnectionTrait, DatabaseConnection, EntityTrait, IdenStatic, Iterable};
use serde_json::Value;

/// A workspace binary built by `cargo test --workspace` (next to the test executable).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let path = dir.join(name);
    if !path.is_file() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "--workspace", "--bin", name])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("cargo build");
        assert!(status.success(), "building {name}");
    }
    path
}

/// A capture fixture.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../capture/tests/fixtures").join(name)
}

/// Runs the agent on a file and returns its output (stdout: JSON lines, stderr ends in the JSON summary).
pub fn agent(args: &[&str], nats_url: Option<&str>) -> Output {
    let mut cmd = Command::new(bin("ntpscope-capture"));
    cmd.args(args).args(["--summary", "json"]).env("NTPSCOPE_LOG", "warn");
    if let Some(url) = nats_url {
        cmd.args(["--output", "nats", "--nats-url", url]);
    }
    let out = cmd.output().expect("run the agent");
    assert!(out.status.success(), "agent {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out
}

/// The agent's JSON summary from its stderr (the last JSON line: log lines may follow it).
pub fn summary(out: &Output) -> Value {
    let text = String::from_utf8_lossy(&out.stderr);
    let line = text.lines().rev().find(|l| l.starts_with('{')).unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|e| panic!("summary JSON ({e}) in {text}"))
}

/// JSON lines of an agent run.
pub fn lines(out: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).expect("JSON line")).collect()
}

/// A sink process.
#[derive(Debug)]
pub struct Sink {
    child: Option<Child>,
    /// Its log file.
    pub log: PathBuf,
}

impl Sink {
    /// Starts `ntpscope-sink` against a database URL and a NATS URL.
    pub fn start(database_url: &str, nats_url: &str, log: &Path, extra: &[&str]) -> Self {
        let log_file = std::fs::OpenOptions::new().create(true).append(true).open(log).expect("sink log");
        let mut cmd = Command::new(bin("ntpscope-sink"));
        for (flag, default) in [("--batch-interval", "0.2"), ("--status-interval", "0.5"), ("--ack-wait", "5")] {
            if !extra.contains(&flag) {
                cmd.args([flag, default]);
            }
        }
        let child = cmd
            .args(extra)
            .env("DATABASE_URL", database_url)
            .env("NTPSCOPE_NATS_URL", nats_url)
            .env("NTPSCOPE_LOG", "info,async_nats=warn")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("start the sink");
        Self { child: Some(child), log: log.to_path_buf() }
    }

    /// SIGKILL, no chance to clean up.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait; returns the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = c.try_wait() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// How it ended, if it has (`None` while it runs).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Polls `f` until it returns true or `timeout` passes.
pub async fn wait_until<F, Fut>(timeout: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// One value of an `ntp_clients` column, as the end-to-end tests compare it.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    /// An integer column (NULL as `None`).
    Int(Option<i64>),
    /// A floating-point column, compared with a tolerance (sums add in another order, and JSON
    /// parsing may be off by an ulp).
    Float(Option<f64>),
    /// A text column.
    Text(Option<String>),
    /// A binary column.
    Bytes(Option<Vec<u8>>),
    /// A boolean column.
    Bool(bool),
}

impl Cell {
    fn same(&self, other: &Cell) -> bool {
        match (self, other) {
            (Cell::Float(Some(a)), Cell::Float(Some(b))) => (a - b).abs() <= 1e-12 + 1e-9 * a.abs().max(b.abs()),
            _ => self == other,
        }
    }
}

/// One client row: every column the sink derives from records, by column name (all but the
/// surrogate `id`, the key columns and the sink's wall-clock `created_at`/`updated_at`).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Totals {
    /// Column name → value.
    pub cols: BTreeMap<&'static str, Cell>,
}

/// Key of a row: (host, interface, client address).
pub type RowKey = (String, String, String);

/// Columns [`Totals`] leaves out: the surrogate key, the row key and the sink's own clock.
const NOT_COMPARED: [&str; 6] = ["id", "host", "interface_name", "client_ip", "created_at", "updated_at"];

fn parse_time(v: &Value) -> Option<i64> {
    v.as_str().and_then(ntp_wire::time::parse_rfc3339)
}

/// Count, sum, min and max of one metric.
#[derive(Debug, Default, Clone)]
struct Stat {
    count: i64,
    sum: f64,
    min: Option<f64>,
    max: Option<f64>,
}

impl Stat {
    fn add(&mut self, v: &Value) {
        let Some(v) = v.as_f64() else { return };
        self.count += 1;
        self.sum += v;
        self.min = Some(self.min.map_or(v, |m| m.min(v)));
        self.max = Some(self.max.map_or(v, |m| m.max(v)));
    }

    fn put(&self, name: &'static str, cols: &mut BTreeMap<&'static str, Cell>) {
        let [count, sum, min, max] = match name {
            "latency" => ["latency_count", "latency_sum", "latency_min", "latency_max"],
            "processing" => ["processing_count", "processing_sum", "processing_min", "processing_max"],
            _ => ["turnaround_count", "turnaround_sum", "turnaround_min", "turnaround_max"],
        };
        cols.insert(count, Cell::Int(Some(self.count)));
        cols.insert(sum, Cell::Float(Some(self.sum)));
        cols.insert(min, Cell::Float(self.min));
        cols.insert(max, Cell::Float(self.max));
    }
}

/// What one client's JSON lines add up to.
#[derive(Debug, Default)]
struct Acc {
    counters: BTreeMap<&'static str, i64>,
    first_seen: i64,
    /// Last capture time and the mode of the packet seen then (later lines win ties).
    last: Option<(i64, i64)>,
    /// Newest kiss code with its request time.
    kiss: Option<(i64, String)>,
    latency: Stat,
    processing: Stat,
    turnaround: Stat,
    /// The newest session's request time and latest-value columns.
    latest: Option<(i64, Vec<(&'static str, Cell)>)>,
}

const COUNTERS: [&str; 16] = [
    "session_count",
    "answered_count",
    "unanswered_count",
    "kod_count",
    "retransmit_count",
    "interleaved_count",
    "t1_randomized_count",
    "nts_count",
    "extension_count",
    "mac_count",
    "observation_count",
    "symmetric_count",
    "broadcast_count",
    "control_count",
    "private_count",
    "monlist_count",
];

/// Latest-value columns, all NULL (and `t1_randomized` false) until a session arrives.
const LATEST: [&str; 22] = [
    "session_timestamp",
    "client_port",
    "server_ip",
    "server_port",
    "vlan_id",
    "ntp_version",
    "stratum",
    "precision",
    "leap_indicator",
    "poll_interval",
    "packet_length",
    "reference_id",
    "reference_timestamp",
    "originate_timestamp",
    "receive_timestamp",
    "transmit_timestamp",
    "t1_randomized",
    "root_delay",
    "root_dispersion",
    "client_to_server_latency",
    "server_processing_time",
    "total_process_time",
];

/// RFC 8915's extension field types (unique identifier, cookie, cookie placeholder, authenticator).
const NTS_FIELD_TYPES: [i64; 4] = [0x0104, 0x0204, 0x0304, 0x0404];

impl Acc {
    fn add(&mut self, name: &'static str, n: i64) {
        *self.counters.entry(name).or_default() += n;
    }

    fn see(&mut self, first: i64, last: i64, mode: i64) {
        self.first_seen = self.first_seen.min(first);
        if self.last.is_none_or(|(t, _)| last >= t) {
            self.last = Some((last, mode));
        }
    }

    fn session(&mut self, l: &Value) {
        let req = parse_time(&l["request_time"]).expect("request_time");
        let packets = [&l["request"], &l["response"]];
        self.add("session_count", 1);
        self.add(if l["outcome"] == "answered" { "answered_count" } else { "unanswered_count" }, 1);
        self.add("retransmit_count", l["retransmits"].as_i64().expect("retransmits"));
        self.add("interleaved_count", i64::from(l["interleaved"] == true));
        self.add("t1_randomized_count", i64::from(l["t1_randomized"] == true));
        let ext_types =
            || packets.into_iter().filter_map(|p| p["extensions"].as_array()).flatten().filter_map(|e| e["field_type"].as_i64());
        self.add("nts_count", i64::from(ext_types().any(|t| NTS_FIELD_TYPES.contains(&t))));
        self.add("extension_count", i64::from(ext_types().next().is_some()));
        self.add("mac_count", i64::from(packets.iter().any(|p| p.get("mac").is_some_and(|m| !m.is_null()))));
        if let Some(code) = l["kiss_code"].as_str() {
            self.add("kod_count", 1);
            if self.kiss.as_ref().is_none_or(|(t, _)| req >= *t) {
                self.kiss = Some((req, code.to_string()));
            }
        }
        self.latency.add(&l["client_to_server_latency_seconds"]);
        self.processing.add(&l["server_processing_time_seconds"]);
        self.turnaround.add(&l["total_process_time_seconds"]);
        if self.latest.as_ref().is_none_or(|(t, _)| req >= *t) {
            self.latest = Some((req, latest_columns(l, req)));
        }
    }

    fn observation(&mut self, l: &Value) {
        self.add("observation_count", 1);
        match l["mode"].as_i64().expect("mode") {
            1 | 2 => self.add("symmetric_count", 1),
            5 => self.add("broadcast_count", 1),
            6 => self.add("control_count", 1),
            7 => {
                self.add("private_count", 1);
                // MON_GETLIST and MON_GETLIST_1 (ntpdc's monlist).
                self.add("monlist_count", i64::from(matches!(l["private"]["request_code"].as_i64(), Some(20 | 42))));
            }
            _ => {}
        }
    }

    fn into_totals(self, client_ip: &str) -> Totals {
        let mut cols = BTreeMap::new();
        for name in COUNTERS {
            cols.insert(name, Cell::Int(Some(self.counters.get(name).copied().unwrap_or(0))));
        }
        cols.insert("first_seen", Cell::Int(Some(self.first_seen)));
        cols.insert("last_seen", Cell::Int(self.last.map(|(t, _)| t)));
        cols.insert("last_mode", Cell::Int(self.last.map(|(_, m)| m)));
        cols.insert("last_kiss_at", Cell::Int(self.kiss.as_ref().map(|(t, _)| *t)));
        cols.insert("last_kiss_code", Cell::Text(self.kiss.map(|(_, k)| k)));
        self.latency.put("latency", &mut cols);
        self.processing.put("processing", &mut cols);
        self.turnaround.put("turnaround", &mut cols);
        match self.latest {
            Some((_, latest)) => cols.extend(latest),
            None => {
                for name in LATEST {
                    let null = match name {
                        "t1_randomized" => Cell::Bool(false),
                        "server_ip" | "reference_id" => Cell::Text(None),
                        "root_delay" | "root_dispersion" | "client_to_server_latency" | "server_processing_time" | "total_process_time" => {
                            Cell::Float(None)
                        }
                        _ => Cell::Int(None),
                    };
                    cols.insert(name, null);
                }
            }
        }
        // The address as 16 bytes, IPv4 mapped into IPv6.
        let bin = client_ip.parse::<std::net::IpAddr>().ok().map(|ip| match ip {
            std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped().octets().to_vec(),
            std::net::IpAddr::V6(v6) => v6.octets().to_vec(),
        });
        cols.insert("client_ip_bin", Cell::Bytes(bin));
        Totals { cols }
    }
}

/// The latest-value columns of one session line: the flat fields describe the response, or the
/// request when unanswered (as the seed's rows do).
fn latest_columns(l: &Value, req: i64) -> Vec<(&'static str, Cell)> {
    let int = |k: &str| Cell::Int(l[k].as_i64());
    let float = |k: &str| Cell::Float(l[k].as_f64());
    vec![
        ("session_timestamp", Cell::Int(Some(req))),
        ("client_port", int("client_port")),
        ("server_ip", Cell::Text(l["server_ip"].as_str().map(String::from))),
        ("server_port", int("server_port")),
        ("vlan_id", int("vlan_id")),
        ("ntp_version", int("ntp_version")),
        ("stratum", int("stratum")),
        ("precision", int("precision")),
        ("leap_indicator", int("leap_indicator")),
        ("poll_interval", int("poll_interval")),
        ("packet_length", int("packet_length")),
        ("reference_id", Cell::Text(l["reference_id"].as_str().map(String::from))),
        ("reference_timestamp", Cell::Int(parse_time(&l["reference_timestamp"]))),
        ("originate_timestamp", Cell::Int(parse_time(&l["origin_timestamp"]))),
        ("receive_timestamp", Cell::Int(parse_time(&l["receive_timestamp"]))),
        ("transmit_timestamp", Cell::Int(parse_time(&l["transmit_timestamp"]))),
        ("t1_randomized", Cell::Bool(l["t1_randomized"] == true)),
        ("root_delay", float("root_delay")),
        ("root_dispersion", float("root_dispersion")),
        ("client_to_server_latency", float("client_to_server_latency_seconds")),
        ("server_processing_time", float("server_processing_time_seconds")),
        ("total_process_time", float("total_process_time_seconds")),
    ]
}

/// Rows computed from the agent's JSON lines, by this test's own code (never the sink's): counters
/// add, first/last seen are the earliest request and the latest packet, metrics keep
/// count/sum/min/max, and the latest-value columns come from the session with the newest request
/// (the later line on a tie, as the sink's "at least as new").
pub fn expected(lines: &[Value]) -> BTreeMap<RowKey, Totals> {
    let mut acc: BTreeMap<RowKey, Acc> = BTreeMap::new();
    for l in lines {
        let key = (
            l["host"].as_str().unwrap_or_default().to_string(),
            l["interface_name"].as_str().unwrap_or_default().to_string(),
            l["client_ip"].as_str().unwrap_or_default().to_string(),
        );
        let a = acc.entry(key).or_insert_with(|| Acc { first_seen: i64::MAX, ..Acc::default() });
        if l["record_type"] == "session" {
            let req = parse_time(&l["request_time"]).expect("request_time");
            // A session is last seen at its response; its mode is the response's (or the request's).
            let last = parse_time(&l["response_time"]).unwrap_or(req);
            let mode = l["response"]["mode"].as_i64().or_else(|| l["request"]["mode"].as_i64()).expect("mode");
            a.see(req, last, mode);
            a.session(l);
        } else {
            let t = parse_time(&l["time"]).expect("time");
            a.see(t, t, l["mode"].as_i64().expect("mode"));
            a.observation(l);
        }
    }
    acc.into_iter().map(|(k, a)| (k.clone(), a.into_totals(&k.2))).collect()
}

/// The same rows read back from `ntp_clients`; every column but [`NOT_COMPARED`] must be here.
pub async fn stored(db: &DatabaseConnection) -> BTreeMap<RowKey, Totals> {
    let rows = entity::ntp_clients::Entity::find().all(db).await.expect("read ntp_clients");
    let out: BTreeMap<RowKey, Totals> =
        rows.into_iter().map(|r| ((r.host.clone(), r.interface_name.clone(), r.client_ip.clone()), row_totals(r))).collect();
    if let Some(t) = out.values().next() {
        let compared: BTreeSet<&str> = t.cols.keys().copied().chain(NOT_COMPARED).collect();
        let all: BTreeSet<&str> = entity::ntp_clients::Column::iter().map(|c| c.as_str()).collect();
        let missing: Vec<_> = all.difference(&compared).collect();
        assert!(missing.is_empty(), "columns the end-to-end comparison does not check: {missing:?}");
    }
    out
}

fn row_totals(r: entity::ntp_clients::Model) -> Totals {
    let int = |v: Option<i32>| Cell::Int(v.map(i64::from));
    let big = |v: i64| Cell::Int(Some(v));
    let cols: BTreeMap<&'static str, Cell> = [
        ("client_ip_bin", Cell::Bytes(r.client_ip_bin)),
        ("client_port", int(r.client_port)),
        ("server_ip", Cell::Text(r.server_ip)),
        ("server_port", int(r.server_port)),
        ("vlan_id", int(r.vlan_id)),
        ("ntp_version", int(r.ntp_version)),
        ("stratum", int(r.stratum)),
        ("precision", int(r.precision)),
        ("root_delay", Cell::Float(r.root_delay)),
        ("root_dispersion", Cell::Float(r.root_dispersion)),
        ("reference_id", Cell::Text(r.reference_id)),
        ("leap_indicator", int(r.leap_indicator)),
        ("poll_interval", int(r.poll_interval)),
        ("reference_timestamp", Cell::Int(r.reference_timestamp)),
        ("originate_timestamp", Cell::Int(r.originate_timestamp)),
        ("receive_timestamp", Cell::Int(r.receive_timestamp)),
        ("transmit_timestamp", Cell::Int(r.transmit_timestamp)),
        ("client_to_server_latency", Cell::Float(r.client_to_server_latency)),
        ("server_processing_time", Cell::Float(r.server_processing_time)),
        ("total_process_time", Cell::Float(r.total_process_time)),
        ("packet_length", int(r.packet_length)),
        ("session_timestamp", Cell::Int(r.session_timestamp)),
        ("first_seen", big(r.first_seen)),
        ("last_seen", big(r.last_seen)),
        ("last_kiss_code", Cell::Text(r.last_kiss_code)),
        ("last_kiss_at", Cell::Int(r.last_kiss_at)),
        ("last_mode", int(r.last_mode)),
        ("t1_randomized", Cell::Bool(r.t1_randomized)),
        ("session_count", big(r.session_count)),
        ("answered_count", big(r.answered_count)),
        ("unanswered_count", big(r.unanswered_count)),
        ("kod_count", big(r.kod_count)),
        ("retransmit_count", big(r.retransmit_count)),
        ("interleaved_count", big(r.interleaved_count)),
        ("t1_randomized_count", big(r.t1_randomized_count)),
        ("nts_count", big(r.nts_count)),
        ("extension_count", big(r.extension_count)),
        ("mac_count", big(r.mac_count)),
        ("observation_count", big(r.observation_count)),
        ("symmetric_count", big(r.symmetric_count)),
        ("broadcast_count", big(r.broadcast_count)),
        ("control_count", big(r.control_count)),
        ("private_count", big(r.private_count)),
        ("monlist_count", big(r.monlist_count)),
        ("latency_count", big(r.latency_count)),
        ("latency_sum", Cell::Float(Some(r.latency_sum))),
        ("latency_min", Cell::Float(r.latency_min)),
        ("latency_max", Cell::Float(r.latency_max)),
        ("processing_count", big(r.processing_count)),
        ("processing_sum", Cell::Float(Some(r.processing_sum))),
        ("processing_min", Cell::Float(r.processing_min)),
        ("processing_max", Cell::Float(r.processing_max)),
        ("turnaround_count", big(r.turnaround_count)),
        ("turnaround_sum", Cell::Float(Some(r.turnaround_sum))),
        ("turnaround_min", Cell::Float(r.turnaround_min)),
        ("turnaround_max", Cell::Float(r.turnaround_max)),
    ]
    .into_iter()
    .collect();
    Totals { cols }
}

/// Compares every column of every row (floats within a relative 1e-9), and lists every
/// difference, not only the first.
pub fn assert_same(expected: &BTreeMap<RowKey, Totals>, got: &BTreeMap<RowKey, Totals>) {
    let mut diffs = Vec::new();
    for k in got.keys().filter(|k| !expected.contains_key(*k)) {
        diffs.push(format!("unexpected row {k:?}"));
    }
    for (k, e) in expected {
        let Some(g) = got.get(k) else {
            diffs.push(format!("missing row {k:?}"));
            continue;
        };
        let names: BTreeSet<&str> = e.cols.keys().chain(g.cols.keys()).copied().collect();
        for name in names {
            let (ev, gv) = (e.cols.get(name), g.cols.get(name));
            if !matches!((ev, gv), (Some(a), Some(b)) if a.same(b)) {
                diffs.push(format!("{k:?} {name}: expected {ev:?}, stored {gv:?}"));
            }
        }
    }
    let shown = diffs.iter().take(40).cloned().collect::<Vec<_>>().join("\n  ");
    assert!(
        diffs.is_empty(),
        "{} differences between the JSON lines and ntp_clients ({} rows expected):\n  {shown}",
        diffs.len(),
        expected.len()
    );
}

/// The sink's consumer: messages not yet delivered plus messages delivered and not acknowledged.
pub async fn outstanding(nats_url: &str) -> u64 {
    let js = async_nats::jetstream::new(async_nats::connect(nats_url).await.expect("connect"));
    let stream = js.get_stream(ntp_wire::subject::STREAM).await.expect("stream");
    let c = stream.consumer_info(ntp_wire::subject::DEFAULT_CONSUMER).await.expect("consumer");
    c.num_pending + c.num_ack_pending as u64
}

/// `SUM(session_count) + SUM(observation_count)` in the table.
pub async fn stored_records(db: &DatabaseConnection) -> i64 {
    let backend = db.get_database_backend();
    let sql = "SELECT CAST(COALESCE(SUM(session_count + observation_count), 0) AS BIGINT) FROM ntp_clients";
    db.query_one_raw(sea_orm::Statement::from_string(backend, sql))
        .await
        .ok()
        .flatten()
        .and_then(|r| r.try_get_by_index::<i64>(0).ok())
        .unwrap_or(-1)
}

/// An SQLite database URL in `dir`.
pub fn sqlite_url(dir: &Path) -> String {
    format!("sqlite://{}?mode=rwc", dir.join("ntp_clients.db").display())
}

/// Holds SQLite's write lock from another process (python3's sqlite3) until dropped.
pub fn lock_database(path: &Path) -> KillOnDrop {
    let script = "import sqlite3, sys, time\n\
                  c = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=60)\n\
                  c.execute('BEGIN EXCLUSIVE')\n\
                  print('locked', flush=True)\n\
                  time.sleep(3600)\n";
    let mut child = Command::new("python3").args(["-c", script]).arg(path).stdout(Stdio::piped()).spawn().expect("python3");
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().expect("stdout")).read_line(&mut line).expect("lock");
    assert_eq!(line.trim(), "locked");
    KillOnDrop(child)
}

/// Opens a database for reading in tests.
pub async fn open(url: &str) -> DatabaseConnection {
    sea_orm::Database::connect(url).await.expect("open database")
}

/// A PostgreSQL schema for one test (dropped on [`PgSchema::drop_now`]).
#[derive(Debug)]
pub struct PgSchema {
    /// URL with the schema on the search path.
    pub url: String,
    name: String,
}

impl PgSchema {
    /// Creates a fresh schema in the test database.
    pub async fn create() -> Self {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let base = base_pg_url();
        let name = format!("ntpscope_e2e{}_{}", std::process::id(), N.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        let admin = sea_orm::Database::connect(&base).await.expect("PostgreSQL (NTPSCOPE_TEST_PG_URL)");
        admin.execute_unprepared(&format!("CREATE SCHEMA {name}")).await.expect("create schema");
        let sep = if base.contains('?') { '&' } else { '?' };
        Self { url: format!("{base}{sep}options=-c%20search_path%3D{name}"), name }
    }

    /// Drops the schema.
    pub async fn drop_now(self) {
        let admin = sea_orm::Database::connect(base_pg_url()).await.expect("pg");
        let _ = admin.execute_unprepared(&format!("DROP SCHEMA {} CASCADE", self.name)).await;
    }
}

fn base_pg_url() -> String {
    std::env::var("NTPSCOPE_TEST_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A child process killed (SIGKILL) when dropped, so that a failing test leaves nothing running.
#[derive(Debug)]
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}
