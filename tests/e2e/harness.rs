//! Helpers of the end-to-end suite: locating the binaries, running agents and sinks as real
//! processes, waiting on the database, and computing expected rows from JSON lines.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use sea_orm::{ConnectionTrait, DatabaseConnection, EntityTrait};
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

/// Per-client totals, comparable between JSON lines and database rows.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Totals {
    /// Sessions.
    pub sessions: i64,
    /// Answered.
    pub answered: i64,
    /// Unanswered.
    pub unanswered: i64,
    /// Kiss-o'-death.
    pub kod: i64,
    /// Observations.
    pub observations: i64,
    /// Latency samples.
    pub latency_count: i64,
    /// Latency sum, nanoseconds (rounded, so sums compare exactly enough).
    pub latency_sum_ns: i64,
    /// Turnaround samples.
    pub turnaround_count: i64,
    /// First capture time.
    pub first_seen: i64,
    /// Last capture time.
    pub last_seen: i64,
}

/// Key of a row: (host, interface, client address).
pub type RowKey = (String, String, String);

fn parse_time(v: &Value) -> i64 {
    ntp_wire::time::parse_rfc3339(v.as_str().unwrap_or_default()).unwrap_or(0)
}

/// Totals per client computed from the agent's JSON lines (independently of the sink's code).
pub fn expected(lines: &[Value]) -> BTreeMap<RowKey, Totals> {
    let mut out: BTreeMap<RowKey, Totals> = BTreeMap::new();
    for l in lines {
        let key = (
            l["host"].as_str().unwrap_or_default().to_string(),
            l["interface_name"].as_str().unwrap_or_default().to_string(),
            l["client_ip"].as_str().unwrap_or_default().to_string(),
        );
        let (first, last) = if l["record_type"] == "session" {
            let req = parse_time(&l["request_time"]);
            (req, if l["response_time"].is_null() { req } else { parse_time(&l["response_time"]) })
        } else {
            let t = parse_time(&l["time"]);
            (t, t)
        };
        let t = out.entry(key).or_insert_with(|| Totals { first_seen: first, last_seen: last, ..Totals::default() });
        t.first_seen = t.first_seen.min(first);
        t.last_seen = t.last_seen.max(last);
        if l["record_type"] == "session" {
            t.sessions += 1;
            if l["outcome"] == "answered" {
                t.answered += 1;
            } else {
                t.unanswered += 1;
            }
            if !l["kiss_code"].is_null() {
                t.kod += 1;
            }
            if let Some(v) = l["client_to_server_latency_seconds"].as_f64() {
                t.latency_count += 1;
                t.latency_sum_ns += (v * 1e9).round() as i64;
            }
            if l["total_process_time_seconds"].as_f64().is_some() {
                t.turnaround_count += 1;
            }
        } else {
            t.observations += 1;
        }
    }
    out
}

/// The same totals read back from `ntp_clients`.
pub async fn stored(db: &DatabaseConnection) -> BTreeMap<RowKey, Totals> {
    entity::ntp_clients::Entity::find()
        .all(db)
        .await
        .expect("read ntp_clients")
        .into_iter()
        .map(|r| {
            (
                (r.host, r.interface_name, r.client_ip),
                Totals {
                    sessions: r.session_count,
                    answered: r.answered_count,
                    unanswered: r.unanswered_count,
                    kod: r.kod_count,
                    observations: r.observation_count,
                    latency_count: r.latency_count,
                    latency_sum_ns: (r.latency_sum * 1e9).round() as i64,
                    turnaround_count: r.turnaround_count,
                    first_seen: r.first_seen,
                    last_seen: r.last_seen,
                },
            )
        })
        .collect()
}

/// Compares with a tolerance of a few nanoseconds per latency sum (float sums in another order).
pub fn assert_same(expected: &BTreeMap<RowKey, Totals>, got: &BTreeMap<RowKey, Totals>) {
    assert_eq!(expected.len(), got.len(), "row count");
    for (k, e) in expected {
        let g = got.get(k).unwrap_or_else(|| panic!("missing row {k:?}"));
        let mut g2 = g.clone();
        assert!((g.latency_sum_ns - e.latency_sum_ns).abs() <= e.latency_count.max(1), "{k:?} latency sum {g:?} vs {e:?}");
        g2.latency_sum_ns = e.latency_sum_ns;
        assert_eq!(&g2, e, "row {k:?}");
    }
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
