//! The API under load: `wrk` against the release `ntpscope-api` on a SQLite database of 5 M client
//! rows, with the real sink and a nats-server beside it (so health answers 200).
//!
//! ```text
//! cargo bench -p e2e --bench api                      # 5 M rows, 10 s per scenario
//! cargo bench -p e2e --bench api -- 1000000 5         # rows, seconds per scenario
//! ```
//!
//! The database is generated once (inside SQLite, by a recursive CTE) under
//! `target/bench-data/api-<rows>.db` and reused; the sink migrates it and keeps its state fresh.
//! It is created with the sink's page size; a file left from before 2026-12-05 keeps 4 KiB pages
//! (delete it to have it filled again).
//! Scenarios, each after an unmeasured warm-up of half its length: a 100-row page at a random
//! depth by cursor (keyset), page 1, lookup by a random client IP, health, and last the 100-row
//! page by `page` (OFFSET) at fixed depths for comparison; `wrk -t1 -c16 --latency`
//! (one wrk thread, as in the calibration of `../shared/notes/performance.md`; the load generator
//! shares the two cores with the server, and `NTPSCOPE_BENCH_WRK_THREADS=2` gives it a second).
//! Then 1 M rows are exported in each format by `curl` from a freshly started API, whose peak RSS
//! (`VmHWM`) is read just before it stops.
#![allow(clippy::disallowed_methods)] // a benchmark measures wall time

use std::{
    fmt::Write as _,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use sea_orm::{ConnectionTrait, Database, Statement};
use sea_orm_migration::MigratorTrait;

use netlab::bench::{anon_rss_mib, cpu_seconds, peak_rss_mib, release_bin};

fn term(child: &mut Child) {
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let _ = child.wait();
}

/// Every column the sink writes, with plausible values derived from `n`; `last_seen` is a
/// permutation of `n`, so sorting by it does not follow insertion order.
const FILL: &str = "WITH RECURSIVE s(n) AS (SELECT ?1 UNION ALL SELECT n + 1 FROM s WHERE n < ?2)
INSERT INTO ntp_clients (host, interface_name, client_ip, client_ip_bin, client_port, server_ip, server_port, ntp_version,
  stratum, precision, root_delay, root_dispersion, reference_id, leap_indicator, poll_interval, reference_timestamp,
  originate_timestamp, receive_timestamp, transmit_timestamp, client_to_server_latency, server_processing_time,
  total_process_time, packet_length, session_timestamp, first_seen, last_seen, last_kiss_code, last_kiss_at, last_mode, t1_randomized, session_count,
  answered_count, unanswered_count, kod_count, retransmit_count, interleaved_count, t1_randomized_count, nts_count,
  extension_count, mac_count, observation_count, symmetric_count, broadcast_count, control_count, private_count,
  monlist_count, latency_count, latency_sum, latency_min, latency_max, processing_count, processing_sum, processing_min,
  processing_max, turnaround_count, turnaround_sum, turnaround_min, turnaround_max, created_at, updated_at)
SELECT 'ntp' || (n % 4) || '.example.net', CASE WHEN n % 8 < 4 THEN 'eth0' ELSE 'eth1' END,
  CASE WHEN n % 5 = 0 THEN printf('2001:db8:%x:%x::1', (n >> 15) + 1, (n & 32767) + 1)
       ELSE printf('%d.%d.%d.%d', 11 + (n >> 24), (n >> 16) & 255, (n >> 8) & 255, n & 255) END,
  CASE WHEN n % 5 = 0 THEN unhex(printf('20010db8%04x%04x0000000000000001', (n >> 15) + 1, (n & 32767) + 1))
       ELSE unhex(printf('00000000000000000000ffff%02x%02x%02x%02x', 11 + (n >> 24), (n >> 16) & 255, (n >> 8) & 255, n & 255)) END,
  1024 + n % 60000, '198.18.0.1', 123, 4, 2, -24, 0.015, 0.02, '198.18.0.2', 0, 6,
  t * 4, t * 4 + 1, t * 4 + 2, t * 4 + 3, 0.0001 * (n % 100), 0.00001 * (n % 10), 0.0002 * (n % 100), 48, t, t - (n % 86400) * 1000000000, t,
  CASE WHEN n % 97 = 0 THEN 'RATE' END, CASE WHEN n % 97 = 0 THEN t - 1000000000 END,
  3, 0, 1 + n % 50, 1 + n % 50 - (n % 7 = 0), n % 7 = 0, n % 97 = 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
  1, 0.0001 * (n % 100), 0.0001 * (n % 100), 0.0001 * (n % 100), 1, 0.00001 * (n % 10), 0.00001 * (n % 10), 0.00001 * (n % 10),
  1, 0.0002 * (n % 100), 0.0002 * (n % 100), 0.0002 * (n % 100), t, t
FROM (SELECT n, 1780000000000000000 + ((n * 7919) % ?3) * 1000000 AS t FROM s)";

async fn fill(url: &str, rows: i64) {
    // Created as the sink creates it: with the sink's page size.
    let db = Database::connect(migration::creating_options(url)).await.expect("database");
    migration::Migrator::up(&db, None).await.expect("migrate");
    let b = db.get_database_backend();
    let present: i64 = db
        .query_one_raw(Statement::from_string(b, "SELECT COUNT(*) FROM ntp_clients"))
        .await
        .expect("count")
        .and_then(|r| r.try_get_by_index(0).ok())
        .unwrap_or(0);
    let started = Instant::now();
    let chunk = 250_000;
    let mut from = present + 1;
    while from <= rows {
        let to = (from + chunk - 1).min(rows);
        db.execute_raw(Statement::from_sql_and_values(b, FILL, [from.into(), to.into(), rows.into()])).await.expect("fill");
        eprintln!("api bench: {to} of {rows} rows");
        from = to + 1;
    }
    if present < rows {
        eprintln!("api bench: filled in {:.0} s", started.elapsed().as_secs_f64());
    }
}

/// A random sample of rows: (id, `last_seen`, `client_ip`).
async fn sample(url: &str, n: usize) -> Vec<(i64, i64, String)> {
    let db = Database::connect(url).await.expect("database");
    let b = db.get_database_backend();
    let sql = format!(
        "SELECT id, last_seen, client_ip FROM ntp_clients WHERE id IN (SELECT abs(random()) % (SELECT MAX(id) FROM ntp_clients) + 1 FROM generate_series(1, {n}))"
    );
    // generate_series is an extension; a recursive CTE works on every SQLite build.
    let sql = sql.replace(
        &format!("generate_series(1, {n})"),
        &format!("(WITH RECURSIVE g(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM g WHERE i < {n}) SELECT i FROM g)"),
    );
    db.query_all_raw(Statement::from_string(b, sql))
        .await
        .expect("sample")
        .iter()
        .map(|r| (r.try_get_by_index(0).expect("id"), r.try_get_by_index(1).expect("last_seen"), r.try_get_by_index(2).expect("ip")))
        .collect()
}

fn cursor(last_seen: i64, id: i64) -> String {
    use base64::Engine as _;
    let json = format!(r#"{{"k":"last_seen","o":"desc","v":{last_seen},"id":{id}}}"#);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
}

fn curl(args: &[&str]) -> String {
    let out = Command::new("curl").arg("-sS").args(args).output().expect("curl");
    assert!(out.status.success(), "curl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// wrk's figures for one scenario.
struct Wrk {
    rps: f64,
    /// Requests completed.
    requests: f64,
    p50_ms: f64,
    p99_ms: f64,
    non_2xx: u64,
}

fn ms(s: &str) -> f64 {
    let (num, unit) = s.split_at(s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len()));
    let v: f64 = num.parse().unwrap_or(f64::NAN);
    match unit {
        "us" => v / 1000.0,
        "s" => v * 1000.0,
        "m" => v * 60_000.0,
        _ => v,
    }
}

/// wrk threads (`NTPSCOPE_BENCH_WRK_THREADS`, default 1).
fn wrk_threads() -> u32 {
    std::env::var("NTPSCOPE_BENCH_WRK_THREADS").ok().and_then(|v| v.parse().ok()).unwrap_or(1)
}

fn wrk(base: &str, paths: &[String], seconds: u32, dir: &Path) -> Wrk {
    let script = dir.join("paths.lua");
    let mut lua = String::from("paths = {\n");
    for p in paths {
        let _ = writeln!(lua, "  \"{p}\",");
    }
    lua.push_str("}\nrequest = function()\n  return wrk.format(\"GET\", paths[math.random(#paths)])\nend\n");
    std::fs::write(&script, lua).expect("lua");
    let out = Command::new("wrk")
        .args([&format!("-t{}", wrk_threads()), "-c16", &format!("-d{seconds}s"), "--latency", "-s", script.to_str().expect("path"), base])
        .output()
        .expect("wrk (apt install wrk)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let find = |prefix: &str| {
        text.lines().map(str::trim).find(|l| l.starts_with(prefix)).and_then(|l| l.split_whitespace().nth(1)).map(str::to_owned)
    };
    let non_2xx =
        text.lines().find(|l| l.contains("Non-2xx")).and_then(|l| l.rsplit(' ').next()).and_then(|v| v.trim().parse().ok()).unwrap_or(0);
    Wrk {
        requests: text
            .lines()
            .find(|l| l.contains("requests in"))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::NAN),
        rps: text
            .lines()
            .find(|l| l.starts_with("Requests/sec:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::NAN),
        p50_ms: find("50%").map_or(f64::NAN, |v| ms(&v)),
        p99_ms: find("99%").map_or(f64::NAN, |v| ms(&v)),
        non_2xx,
    }
}

struct Api {
    child: Child,
    base: String,
}

fn start_api(db_path: &Path, nats_url: &str, log: &Path) -> Api {
    let port = netlab::free_port().expect("port");
    let child = Command::new(release_bin("ntpscope-api"))
        .args(["--listen", &format!("127.0.0.1:{port}"), "--db-path", db_path.to_str().expect("path")])
        .env("NTPSCOPE_NATS_URL", nats_url)
        .env("NTPSCOPE_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).expect("log"))
        .spawn()
        .expect("api");
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while Command::new("curl")
        .args(["-sf", "-o", "/dev/null", &format!("{base}/api/ntp/history/health")])
        .status()
        .map_or(true, |s| !s.success())
    {
        assert!(Instant::now() < deadline, "the API did not become healthy; see {}", log.display());
        std::thread::sleep(Duration::from_millis(200));
    }
    Api { child, base }
}

/// One export of 1 M rows in `format` by a fresh API: its report line.
fn export(db_path: &Path, nats_url: &str, dir: &Path, format: &str) -> String {
    let mut api = start_api(db_path, nats_url, &dir.join(format!("api-{format}.log")));
    let body = format!(r#"{{"format":"{format}","limit":1000000}}"#);
    // Anonymous memory (heap, stacks) sampled while the export runs: VmHWM also counts the
    // pages of the database file the API maps, which are the kernel's page cache.
    let pid = api.child.id();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut peak = 0.0_f64;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(anon_rss_mib(pid));
                std::thread::sleep(Duration::from_millis(50));
            }
            peak
        })
    };
    let cpu = cpu_seconds(pid);
    let started = Instant::now();
    let out = curl(&[
        "-X",
        "POST",
        "-H",
        "Content-Type: application/json",
        "-d",
        &body,
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{size_download}",
        &format!("{}/api/ntp/history/export", api.base),
    ]);
    let secs = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pid) - cpu;
    assert!(out.starts_with("200 "), "export {format}: {out}");
    let rss = peak_rss_mib(api.child.id());
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let anon = sampler.join().unwrap_or(f64::NAN);
    term(&mut api.child);
    let line = format!(
        "| export 1 M rows as {format} | {:.0} rows/s ({secs:.2} s) | HTTP {out} bytes | API peak RSS {rss:.0} MiB (file map included), peak anonymous {anon:.0} MiB | API CPU {cpu:.2} s |",
        1_000_000.0 / secs
    );
    eprintln!("{line}");
    line
}

fn main() {
    let mut nums = std::env::args().skip(1).filter_map(|a| a.parse::<i64>().ok());
    let rows = nums.next().unwrap_or(5_000_000);
    let seconds = nums.next().map_or(10, |s| u32::try_from(s).expect("seconds"));
    let status = Command::new(env!("CARGO"))
        .args(["build", "--release", "-p", "ntpscope-api", "-p", "ntpscope-sink"])
        .status()
        .expect("cargo build");
    assert!(status.success());
    let data = release_bin("ntpscope-api").parent().and_then(Path::parent).expect("target").join("bench-data");
    std::fs::create_dir_all(&data).expect("bench-data");
    let db_path = data.join(format!("api-{rows}.db"));
    let url = format!("sqlite://{}?mode=rwc", db_path.display());
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(fill(&url, rows));
    let picks = rt.block_on(sample(&url, 2000));
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = netlab::NatsServer::start().expect("nats-server");
    let mut sink = Command::new(release_bin("ntpscope-sink"))
        .args(["--db-path", db_path.to_str().expect("path")])
        .env("NTPSCOPE_NATS_URL", &nats.url)
        .env("NO_COLOR", "1")
        .stderr(std::fs::File::create(dir.path().join("sink.log")).expect("log"))
        .spawn()
        .expect("sink");
    let mut api = start_api(&db_path, &nats.url, &dir.path().join("api.log"));
    let health = curl(&[&format!("{}/api/ntp/history/health", api.base)]);
    eprintln!("api bench: health {health}");

    // One check per scenario before it runs: the cursor page holds the row after the sampled one.
    let (id, last_seen, _) = &picks[0];
    let first = curl(&[&format!("{}/api/ntp/history/clients?page_size=1&cursor={}", api.base, cursor(*last_seen, *id))]);
    let v: serde_json::Value = serde_json::from_str(&first).expect("page JSON");
    let next = v["clients"][0]["last_seen"].as_str().unwrap_or_default().to_string();
    assert!(!next.is_empty() || *last_seen == picks.iter().map(|p| p.1).min().unwrap_or(0), "cursor page: {first}");

    let mut report = String::new();
    // Each scenario is first run unmeasured for half its time: the measured run sees the steady
    // state (the API's map of the file faulted in), not the first touch of 2 000 random pages.
    let mut run = |name: &str, paths: Vec<String>| {
        let _ = wrk(&api.base, &paths, seconds.div_ceil(2), dir.path());
        let cpu = cpu_seconds(api.child.id());
        let w = wrk(&api.base, &paths, seconds, dir.path());
        // The API's CPU per request: the work a request costs, which holds still while the
        // machine's speed (and so the rate) swings between runs.
        let per_request_ms = (cpu_seconds(api.child.id()) - cpu) * 1000.0 / w.requests;
        let line = format!(
            "| {name} | {:.0} req/s | p50 {:.2} ms | p99 {:.2} ms | non-2xx {} | API CPU {per_request_ms:.3} ms/req |",
            w.rps, w.p50_ms, w.p99_ms, w.non_2xx
        );
        eprintln!("{line}");
        report.push_str(&line);
        report.push('\n');
    };
    run(
        "page by cursor, random depth",
        picks.iter().map(|(id, t, _)| format!("/api/ntp/history/clients?page_size=100&cursor={}", cursor(*t, *id))).collect(),
    );
    run("page 1 (no cursor)", vec!["/api/ntp/history/clients?page_size=100".into()]);
    run("client by IP, random", picks.iter().map(|(_, _, ip)| format!("/api/ntp/history/clients/{ip}")).collect());
    run("health", vec!["/api/ntp/history/health".into()]);
    // OFFSET last: wrk stops waiting at the end of a scenario, but a deep OFFSET read still
    // running then would weigh on the next scenario.
    let pages = u64::try_from(rows).expect("rows") / 100;
    for page in [10, pages / 100, pages / 10, pages / 2, pages] {
        run(&format!("page by OFFSET, page {page}"), vec![format!("/api/ntp/history/clients?page_size=100&page={page}")]);
    }
    term(&mut api.child);

    for format in ["csv", "ndjson", "json"] {
        report.push_str(&export(&db_path, &nats.url, dir.path(), format));
        report.push('\n');
    }
    term(&mut sink);
    println!("\nntpscope-api, {rows} rows, wrk -t{} -c16 -d{seconds}s --latency\n{report}", wrk_threads());
}
