//! Sink write throughput: the sea-orm path the sink uses vs raw rusqlite on the same batches.
//!
//! ```text
//! cargo bench -p ntpscope-sink --bench upsert            # SQLite, batch sizes 1k / 10k / 50k
//! cargo bench -p ntpscope-sink --bench upsert -- --pg    # also PostgreSQL (NTPSCOPE_TEST_PG_URL)
//! BENCH_SIZES=50000 BENCH_SEA_ONLY=1 perf stat …/upsert-* --bench   # the sink's path alone (profiles)
//! ```
//!
//! Workload: 1,000,000 session records over 200,000 client addresses (each address 5 times,
//! shuffled with a fixed seed), applied in stream order in batches of B records. Each batch is
//! aggregated per client (the sink's `aggregate`) and written in one transaction. "records/s" is
//! 1 M input records divided by the time of the write phase (aggregation excluded, reported
//! separately). All three variants run on the same bundled SQLite 3.51, the same schema (created
//! by the migrations) and the same pragmas. The two raw baselines bind through rusqlite, one row
//! per statement, each statement prepared once per transaction:
//!
//! - the sink's SQL text with `RETURNING created_at` to tell inserts from updates (the sink's form
//!   on PostgreSQL, and on SQLite until it counted inserts by id range instead);
//! - the fastest equivalent found: a lookup of the key in the unique index, then the upsert
//!   without `RETURNING`. SQLite compiles `RETURNING` as a temporary trigger, and a statement
//!   with a trigger counts as one that may write several rows; such a statement keeps a
//!   statement journal when it may also abort half-way. Since migration `m20261204_000004` and
//!   the sink's `INSERT OR FAIL` it cannot (see `store::upsert_sql_with`), so the two raw
//!   forms now differ by the cost of the returned row alone.
//!
//! Every variant allocates through mimalloc, as the sink binary does (since commit 01ae539;
//! earlier figures in docs/performance.md were measured with glibc's malloc).
#![allow(clippy::disallowed_methods)] // a benchmark measures wall time

use std::time::{Duration, Instant};

use ntp_wire::{Batch, PacketSummary, Record, Session, SessionOutcome};
use ntpscope_sink::{aggregate, db, store};
use sea_orm::{ConnectionTrait, DbBackend, TransactionTrait, Value};

/// The sink binary's allocator (see sink/src/main.rs), for every variant alike.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const EVENTS: u32 = 1_000_000;
const CLIENTS: u32 = 200_000;
const T0: i64 = 1_767_225_600_000_000_000;

fn session(i: u32, client: u32) -> Record {
    let t = T0 + i64::from(i) * 1_000;
    let req = PacketSummary { mode: 3, version: 4, length: 48, transmit_ts: u64::from(i) + 1, ..PacketSummary::default() };
    let ip = std::net::Ipv4Addr::from(0xc612_0000u32 + client); // 198.18.0.0/15
    Record::Session(Session {
        id: u64::from(i),
        outcome: if i % 10 == 9 { SessionOutcome::Unanswered } else { SessionOutcome::Answered },
        client_ip: ip.into(),
        client_port: 1024 + (client % 60_000) as u16,
        server_ip: "198.19.255.1".parse().expect("ip"),
        server_port: 123,
        vlan_id: None,
        inner_vlan_id: None,
        request_time_ns: t,
        response_time_ns: (i % 10 != 9).then_some(t + 20_000),
        request: req.clone(),
        response: (i % 10 != 9).then_some(PacketSummary { mode: 4, stratum: 2, root_delay: 100, reference_id: 0xc612_ff01, ..req }),
        retransmits: 0,
        t1_randomized: false,
        interleaved: false,
        client_to_server_latency_s: Some(1e-3 + f64::from(i % 97) * 1e-6),
        server_processing_time_s: Some(1e-5),
        total_process_time_s: Some(2e-5),
    })
}

/// Every client 5 times, in a shuffled order (xorshift with a fixed seed).
fn events() -> Vec<u32> {
    let mut order: Vec<u32> = (0..EVENTS).map(|i| i % CLIENTS).collect();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in (1..order.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        order.swap(i, (x % (i as u64 + 1)) as usize);
    }
    order
}

fn batches(size: usize, order: &[u32]) -> Vec<Batch> {
    order
        .chunks(size)
        .enumerate()
        .map(|(b, chunk)| {
            let base = (b * size) as u32;
            let records = chunk.iter().enumerate().map(|(j, c)| session(base + j as u32, *c)).collect();
            Batch::new("bench", "eth0", records)
        })
        .collect()
}

#[derive(Default)]
struct Run {
    write: Duration,
    aggregate: Duration,
    rows: u64,
    inserted: u64,
    updated: u64,
}

impl Run {
    /// Every client was inserted exactly once; every other row written was an update.
    fn check_counts(&self) {
        assert_eq!((self.inserted, self.updated + u64::from(CLIENTS)), (u64::from(CLIENTS), self.rows), "inserted vs updated");
    }
}

async fn sea_orm_run(url: &str, batches: &[Batch]) -> Run {
    let db = db::connect_and_migrate(url).await.expect("open");
    // Experiments: BENCH_SQL (below) runs here too, on SQLite.
    if let Ok(extra) = std::env::var("BENCH_SQL")
        && db.get_database_backend() == DbBackend::Sqlite
    {
        db.execute_unprepared(&extra).await.expect("BENCH_SQL");
    }
    let mut run = Run::default();
    for (i, b) in batches.iter().enumerate() {
        let t = Instant::now();
        let deltas = aggregate::aggregate([b]);
        run.aggregate += t.elapsed();
        let t = Instant::now();
        let txn = db.begin().await.expect("begin");
        let counts = store::upsert(&txn, &deltas, T0 + i as i64).await.expect("upsert");
        run.inserted += counts.inserted;
        run.updated += counts.updated;
        txn.commit().await.expect("commit");
        run.write += t.elapsed();
        run.rows += deltas.len() as u64;
    }
    check(&db).await;
    run.check_counts();
    run
}

async fn check(db: &sea_orm::DatabaseConnection) {
    let backend = db.get_database_backend();
    let row = db
        .query_one_raw(sea_orm::Statement::from_string(
            backend,
            "SELECT CAST(COUNT(*) AS BIGINT), CAST(SUM(session_count) AS BIGINT) FROM ntp_clients",
        ))
        .await
        .expect("check")
        .expect("row");
    let (n, sessions): (i64, i64) = (row.try_get_by_index(0).expect("n"), row.try_get_by_index(1).expect("sum"));
    assert_eq!((n, sessions), (i64::from(CLIENTS), i64::from(EVENTS)), "every client once, every event counted");
}

fn to_sql(v: &Value) -> rusqlite::types::Value {
    use rusqlite::types::Value as R;
    match v {
        Value::Bool(b) => b.map_or(R::Null, |b| R::Integer(i64::from(b))),
        Value::Int(i) => i.map_or(R::Null, |i| R::Integer(i64::from(i))),
        Value::BigInt(i) => i.map_or(R::Null, R::Integer),
        Value::Double(d) => d.map_or(R::Null, R::Real),
        Value::String(s) => s.clone().map_or(R::Null, R::Text),
        Value::Bytes(b) => b.clone().map_or(R::Null, R::Blob),
        other => panic!("unexpected value {other:?}"),
    }
}

/// How the raw baseline tells inserted rows from updated ones.
#[derive(Clone, Copy, PartialEq)]
enum RawForm {
    /// The sink's SQL text, `RETURNING created_at` included.
    Returning,
    /// No `RETURNING` (with it, a statement keeps a statement journal; see the module doc);
    /// each key is looked up in the unique index first.
    Probe,
}

/// One key's existence, through the unique index alone.
const PROBE_SQL: &str = "SELECT COUNT(*) FROM ntp_clients WHERE host = ?1 AND interface_name = ?2 AND client_ip = ?3";

fn rusqlite_run(path: &std::path::Path, batches: &[Batch], form: RawForm) -> Run {
    let mut conn = rusqlite::Connection::open(path).expect("open");
    conn.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=30000; \
         PRAGMA temp_store=MEMORY; PRAGMA cache_size=-131072;",
    )
    .expect("pragmas");
    for (k, v) in db::SQLITE_WRITER_PRAGMAS {
        conn.execute_batch(&format!("PRAGMA {k}={v};")).expect("writer pragma");
    }
    // Experiments: BENCH_SQL="PRAGMA …; DROP INDEX …;" runs on every SQLite variant before the load.
    if let Ok(extra) = std::env::var("BENCH_SQL") {
        conn.execute_batch(&extra).expect("BENCH_SQL");
    }
    let form_of = |shape| store::Form { shape, shared_key: true, shared_server: false };
    let sql_of = |shape: store::Shape| {
        let mut sql = store::upsert_sql_with(DbBackend::Sqlite, form_of(shape), 1, true);
        if std::env::var_os("BENCH_NO_GUARD").is_some() {
            // Experiment: latest-value columns overwritten unconditionally.
            let newer = "excluded.session_timestamp IS NOT NULL AND (ntp_clients.session_timestamp IS NULL OR excluded.session_timestamp >= ntp_clients.session_timestamp)";
            let mut out = String::new();
            for part in sql.split(&format!("CASE WHEN {newer} THEN ")) {
                if out.is_empty() {
                    out.push_str(part);
                } else {
                    let (col, rest) = part.split_once(" ELSE ").expect("else");
                    let (_, rest) = rest.split_once(" END").expect("end");
                    out.push_str(col);
                    out.push_str(rest);
                }
            }
            sql = out;
        }
        if form == RawForm::Probe {
            sql = sql.replace(" RETURNING created_at", "");
        }
        sql
    };
    let sql = [sql_of(store::Shape::Single), sql_of(store::Shape::Full)];
    let mut run = Run::default();
    let mut values = Vec::new();
    for (i, b) in batches.iter().enumerate() {
        let t = Instant::now();
        let deltas = aggregate::aggregate([b]);
        run.aggregate += t.elapsed();
        let t = Instant::now();
        let now = T0 + i as i64;
        let tx = conn.transaction().expect("begin");
        {
            let mut probe = (form == RawForm::Probe).then(|| tx.prepare(PROBE_SQL).expect("prepare"));
            let mut stmts = [tx.prepare(&sql[0]).expect("prepare"), tx.prepare(&sql[1]).expect("prepare")];
            for (k, d) in &deltas {
                values.clear();
                let shape = store::shape_of(d);
                values.extend(store::statement_values(form_of(shape), (k, d), now));
                store::row_values(k, d, form_of(shape), &mut values);
                let stmt = &mut stmts[usize::from(shape == store::Shape::Full)];
                let params: Vec<rusqlite::types::Value> = values.iter().map(to_sql).collect();
                let existed = match form {
                    RawForm::Returning => {
                        let created: i64 = stmt.query_row(rusqlite::params_from_iter(params), |r| r.get(0)).expect("upsert");
                        created != now
                    }
                    RawForm::Probe => {
                        let probe = probe.as_mut().expect("prepared for this form");
                        let n: i64 = probe.query_row([&k.host, &k.interface, &k.client_ip], |r| r.get(0)).expect("probe");
                        stmt.execute(rusqlite::params_from_iter(params)).expect("upsert");
                        n > 0
                    }
                };
                run.updated += u64::from(existed);
                run.inserted += u64::from(!existed);
            }
        }
        tx.commit().expect("commit");
        run.write += t.elapsed();
        run.rows += deltas.len() as u64;
    }
    let size: i64 =
        conn.query_row("SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()", [], |r| r.get(0)).unwrap_or(0);
    println!("  (raw database: {:.0} MB)", size as f64 / 1e6);
    let (n, sessions): (i64, i64) =
        conn.query_row("SELECT COUNT(*), SUM(session_count) FROM ntp_clients", [], |r| Ok((r.get(0)?, r.get(1)?))).expect("check");
    assert_eq!((n, sessions), (i64::from(CLIENTS), i64::from(EVENTS)));
    run.check_counts();
    run
}

fn rate(run: &Run) -> f64 {
    f64::from(EVENTS) / run.write.as_secs_f64()
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let pg = std::env::args().any(|a| a == "--pg");
    let order = events();
    println!(
        "# sink upsert benchmark: {EVENTS} records, {CLIENTS} clients, {} / {} values bound per row (one session / any; {} / {} when a statement's rows share their server's side)",
        store::row_width(store::Form { shape: store::Shape::Single, shared_key: true, shared_server: false }),
        store::row_width(store::Form { shape: store::Shape::Full, shared_key: true, shared_server: false }),
        store::row_width(store::Form { shape: store::Shape::Single, shared_key: true, shared_server: true }),
        store::row_width(store::Form { shape: store::Shape::Full, shared_key: true, shared_server: true })
    );
    let sizes: Vec<usize> = std::env::var("BENCH_SIZES")
        .ok()
        .map_or_else(|| vec![1_000, 10_000, 50_000], |v| v.split(',').filter_map(|s| s.parse().ok()).collect());
    let raw_only = std::env::var_os("BENCH_RAW_ONLY").is_some();
    let sea_only = std::env::var_os("BENCH_SEA_ONLY").is_some();
    for size in sizes {
        let batches = batches(size, &order);
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("seaorm.db").display());
        let sea = if raw_only { Run { write: Duration::from_secs(1), ..Run::default() } } else { sea_orm_run(&url, &batches).await };
        // The raw baselines get the identical schema from the migrations.
        let mut raw = Vec::new();
        for (name, form) in [("raw.db", RawForm::Returning), ("raw-probe.db", RawForm::Probe)] {
            if sea_only {
                raw.push(Run { write: Duration::from_secs(1), ..Run::default() });
                continue;
            }
            let path = dir.path().join(name);
            drop(db::connect_and_migrate(&format!("sqlite://{}?mode=rwc", path.display())).await.expect("schema"));
            raw.push(rusqlite_run(&path, &batches, form));
        }
        println!(
            "B = {size:>6}: sea-orm {:>7.0} records/s ({:.2} s write, {:.2} s aggregate, {} rows) | rusqlite, sink SQL + RETURNING {:>7.0} records/s ({:.2} s) | rusqlite, probe + no RETURNING {:>7.0} records/s ({:.2} s) | sea-orm = {:.0} % / {:.0} % of them",
            rate(&sea),
            sea.write.as_secs_f64(),
            sea.aggregate.as_secs_f64(),
            sea.rows,
            rate(&raw[0]),
            raw[0].write.as_secs_f64(),
            rate(&raw[1]),
            raw[1].write.as_secs_f64(),
            100.0 * rate(&sea) / rate(&raw[0]),
            100.0 * rate(&sea) / rate(&raw[1]),
        );
        if pg {
            let base = std::env::var("NTPSCOPE_TEST_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
            let schema = format!("ntpscope_bench_{}", std::process::id());
            let admin = sea_orm::Database::connect(&base).await.expect("pg");
            admin.execute_unprepared(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}")).await.expect("schema");
            let sep = if base.contains('?') { '&' } else { '?' };
            let run = sea_orm_run(&format!("{base}{sep}options=-c%20search_path%3D{schema}"), &batches).await;
            admin.execute_unprepared(&format!("DROP SCHEMA {schema} CASCADE")).await.expect("drop");
            println!("B = {size:>6}: PostgreSQL sea-orm {:>7.0} records/s ({:.2} s write)", rate(&run), run.write.as_secs_f64());
        }
    }
}
