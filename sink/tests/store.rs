//! The sink's database layer against real databases: an SQLite file and the machine's PostgreSQL
//! (`NTPSCOPE_TEST_PG_URL`, default `postgres://postgres@127.0.0.1:5432/test`, each test in its
//! own schema). Every test body runs on both.

use std::collections::BTreeMap;

use entity::{ntp_clients, sink_state};
use ntp_wire::{Batch, PacketSummary, Record, Session, SessionOutcome};
use ntpscope_sink::{
    aggregate::{self, ClientDelta, ClientKey},
    db,
    store::{self, StateDelta},
};
use sea_orm::{ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter, TransactionTrait};

const T0: i64 = 1_767_225_600_000_000_000;

struct TestDb {
    db: DatabaseConnection,
    dir: Option<tempfile::TempDir>,
    pg_schema: Option<(String, String)>,
}

impl TestDb {
    async fn sqlite() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("ntp.db").display());
        let db = db::connect_and_migrate(&url).await.expect("sqlite");
        Self { db, dir: Some(dir), pg_schema: None }
    }

    async fn postgres() -> Self {
        let (url, schema) = pg_schema().await;
        let db = db::connect_and_migrate(&url).await.expect("postgres");
        Self { db, dir: None, pg_schema: Some((base_pg_url(), schema)) }
    }

    async fn drop_schema(self) {
        if let Some((base, schema)) = self.pg_schema {
            let admin = sea_orm::Database::connect(base).await.expect("pg admin");
            admin.execute_unprepared(&format!("DROP SCHEMA {schema} CASCADE")).await.expect("drop schema");
        }
    }
}

fn base_pg_url() -> String {
    std::env::var("NTPSCOPE_TEST_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A fresh schema in the test database; returns a URL whose search_path points at it.
async fn pg_schema() -> (String, String) {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let schema = format!("ntpscope_t{}_{}", std::process::id(), N.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    let admin = sea_orm::Database::connect(base_pg_url()).await.expect("PostgreSQL at NTPSCOPE_TEST_PG_URL");
    admin.execute_unprepared(&format!("CREATE SCHEMA {schema}")).await.expect("create schema");
    let sep = if base_pg_url().contains('?') { '&' } else { '?' };
    (format!("{}{sep}options=-c%20search_path%3D{schema}", base_pg_url()), schema)
}

fn session(ip: &str, t: i64, answered: bool, stratum: u8, latency: Option<f64>) -> Record {
    let req = PacketSummary { mode: 3, version: 4, length: 48, transmit_ts: 1, ..PacketSummary::default() };
    Record::Session(Session {
        id: t as u64,
        outcome: if answered { SessionOutcome::Answered } else { SessionOutcome::Unanswered },
        client_ip: ip.parse().expect("ip"),
        client_port: 40000,
        server_ip: "198.18.0.1".parse().expect("ip"),
        server_port: 123,
        vlan_id: Some(7),
        inner_vlan_id: None,
        request_time_ns: t,
        response_time_ns: answered.then_some(t + 20_000),
        request: req.clone(),
        response: answered.then_some(PacketSummary { mode: 4, stratum, ..req }),
        retransmits: 0,
        t1_randomized: false,
        interleaved: false,
        client_to_server_latency_s: latency,
        server_processing_time_s: answered.then_some(1e-5),
        total_process_time_s: answered.then_some(2e-5),
    })
}

/// A mode 6 query from `ip` at `t`: an observation, not a session.
fn observation(ip: &str, t: i64) -> Record {
    Record::Observation(ntp_wire::Observation {
        id: t as u64,
        time_ns: t,
        client_ip: ip.parse().expect("ip"),
        client_port: 40000,
        server_ip: "198.18.0.1".parse().expect("ip"),
        server_port: 123,
        from_client: true,
        vlan_id: None,
        inner_vlan_id: None,
        length: 12,
        leap: 0,
        version: 2,
        mode: 6,
        header: None,
        control: None,
        private: None,
    })
}

fn deltas(records: Vec<Record>) -> BTreeMap<ClientKey, ClientDelta> {
    aggregate::aggregate([&Batch::new("host-a", "eth0", records)])
}

async fn row(db: &DatabaseConnection, ip: &str) -> ntp_clients::Model {
    ntp_clients::Entity::find().filter(ntp_clients::Column::ClientIp.eq(ip)).one(db).await.expect("query").expect("row exists")
}

async fn upserts_add_counts_and_keep_the_newest_values(db: &DatabaseConnection) {
    let first = deltas(vec![session("198.18.0.2", T0 + 2_000, true, 2, Some(0.003)), session("198.18.0.3", T0, false, 0, None)]);
    let c = store::upsert(db, &first, T0 + 10).await.expect("first upsert");
    assert_eq!((c.inserted, c.updated), (2, 0));
    // An older session arrives later (a late replay): counts add, latest values stay.
    let second = deltas(vec![session("198.18.0.2", T0 + 1_000, true, 5, Some(0.001)), session("198.18.0.2", T0 + 500, false, 0, None)]);
    let c = store::upsert(db, &second, T0 + 20).await.expect("second upsert");
    assert_eq!((c.inserted, c.updated), (0, 1));
    let r = row(db, "198.18.0.2").await;
    assert_eq!((r.session_count, r.answered_count, r.unanswered_count), (3, 2, 1));
    assert_eq!(r.first_seen, T0 + 500);
    assert_eq!(r.last_seen, T0 + 2_000 + 20_000);
    assert_eq!(r.stratum, Some(2), "the older session must not overwrite the newer one");
    assert_eq!(r.session_timestamp, Some(T0 + 2_000));
    assert_eq!((r.latency_count, r.latency_min, r.latency_max), (2, Some(0.001), Some(0.003)));
    assert!((r.latency_sum - 0.004).abs() < 1e-12);
    assert_eq!(r.vlan_id, Some(7));
    assert_eq!((r.created_at, r.updated_at), (T0 + 10, T0 + 20));
    // A newer session does overwrite.
    store::upsert(db, &deltas(vec![session("198.18.0.2", T0 + 9_000, true, 3, None)]), T0 + 30).await.expect("third");
    let r = row(db, "198.18.0.2").await;
    assert_eq!((r.stratum, r.session_count, r.latency_count), (Some(3), 4, 2));
    // An unanswered-only client has no latency and NULL minima.
    let u = row(db, "198.18.0.3").await;
    assert_eq!((u.unanswered_count, u.latency_count, u.latency_min), (1, 0, None));
    // A batch with no session of a client (observations only) keeps its latest values; a
    // client first seen in observations (no session time stored) takes a session's, old or not.
    let b = [Batch::new("host-a", "eth0", vec![observation("198.18.0.2", T0 + 50_000), observation("198.18.0.4", T0 + 50_000)])];
    let c = store::upsert(db, &aggregate::aggregate(&b), T0 + 31).await.expect("observations");
    assert_eq!((c.inserted, c.updated), (1, 1));
    let r = row(db, "198.18.0.2").await;
    assert_eq!((r.stratum, r.session_timestamp, r.observation_count), (Some(3), Some(T0 + 9_000), 1));
    let o = row(db, "198.18.0.4").await;
    assert_eq!((o.stratum, o.session_timestamp, o.observation_count), (None, None, 1));
    store::upsert(db, &deltas(vec![session("198.18.0.4", T0 + 1_000, true, 4, None)]), T0 + 32).await.expect("a session at last");
    let o = row(db, "198.18.0.4").await;
    assert_eq!((o.stratum, o.session_timestamp, o.session_count, o.observation_count), (Some(4), Some(T0 + 1_000), 1, 1));
    // Rows copied in from the Flask seed have no binary address; the fill supplies it, seen
    // again or not, a limited number of rows a call.
    db.execute_unprepared(&format!(
        "INSERT INTO ntp_clients (host, interface_name, client_ip, first_seen, last_seen, session_count, created_at, updated_at) \
         VALUES ('host-a', 'eth0', '198.18.0.9', {T0}, {T0}, 1, {T0}, {T0}), ('host-a', 'eth0', '2001:db8::9', {T0}, {T0}, 1, {T0}, {T0}), \
         ('host-a', 'eth0', 'not an address', {T0}, {T0}, 1, {T0}, {T0})"
    ))
    .await
    .expect("copied rows");
    assert_eq!(row(db, "198.18.0.9").await.client_ip_bin, None);
    let c = store::upsert(db, &deltas(vec![session("198.18.0.9", T0 + 1_000, true, 2, None)]), T0 + 40).await.expect("seen again");
    assert_eq!((c.inserted, c.updated), (0, 1));
    assert_eq!(row(db, "198.18.0.9").await.session_count, 2);
    assert_eq!(store::fill_binary_addresses(db, 2).await.expect("fill"), 2, "at most the limit");
    assert_eq!(store::fill_binary_addresses(db, 2).await.expect("fill"), 1, "the rest");
    assert_eq!(store::fill_binary_addresses(db, 2).await.expect("fill"), 0, "nothing left, the unparsable address included");
    for (ip, want) in [
        ("198.18.0.9", ntpscope_sink::aggregate::ip_bytes("198.18.0.9".parse().expect("ip")).to_vec()),
        ("2001:db8::9", ntpscope_sink::aggregate::ip_bytes("2001:db8::9".parse().expect("ip")).to_vec()),
        ("not an address", Vec::new()),
        ("198.18.0.2", ntpscope_sink::aggregate::ip_bytes("198.18.0.2".parse().expect("ip")).to_vec()),
    ] {
        assert_eq!(row(db, ip).await.client_ip_bin, Some(want), "{ip}");
    }
}

async fn large_batches_chunk_and_count(db: &DatabaseConnection) {
    let records: Vec<Record> =
        (0..3000).map(|i| session(&format!("198.19.{}.{}", i / 250, i % 250), T0 + i64::from(i), true, 2, Some(0.001))).collect();
    let d = deltas(records);
    let txn = db.begin().await.expect("begin");
    let c = store::upsert(&txn, &d, T0 + 1).await.expect("upsert 3000 rows");
    txn.commit().await.expect("commit");
    assert_eq!((c.inserted, c.updated), (3000, 0));
    let c = store::upsert(db, &d, T0 + 2).await.expect("again");
    assert_eq!((c.inserted, c.updated), (0, 3000));
    let n = ntp_clients::Entity::find().all(db).await.expect("all").len();
    assert_eq!(n, 3000);
    // Known and new clients in one batch, after the row with the highest id was deleted (as a
    // cleanup may): each is counted once, as what it was.
    db.execute_unprepared("DELETE FROM ntp_clients WHERE id = (SELECT MAX(id) FROM ntp_clients)").await.expect("delete the newest");
    // And a row copied in with an explicit id far above the others.
    db.execute_unprepared(&format!(
        "INSERT INTO ntp_clients (id, host, interface_name, client_ip, first_seen, last_seen, session_count, created_at, updated_at) \
         VALUES (10000000, 'host-b', 'eth0', '198.18.1.1', {T0}, {T0}, 1, {T0}, {T0})"
    ))
    .await
    .expect("row with a high id");
    let mixed: Vec<Record> = (2000..3700)
        .map(|i| session(&format!("198.19.{}.{}", i / 250, i % 250), T0 + 10_000 + i64::from(i), true, 2, Some(0.001)))
        .collect();
    let c = store::upsert(db, &deltas(mixed), T0 + 3).await.expect("mixed");
    assert_eq!((c.inserted, c.updated), (701, 999));
    let n = ntp_clients::Entity::find().all(db).await.expect("all").len();
    assert_eq!(n, 3701);
    // Clients seen twice are bound in full, the widest rows, also past the bind limit.
    let twice: Vec<Record> = (0..2400)
        .map(|i| session(&format!("198.18.{}.{}", 100 + i % 1200 / 250, i % 1200 % 250), T0 + 20_000 + i64::from(i), true, 2, Some(0.001)))
        .collect();
    let d = deltas(twice);
    assert!(d.values().all(|d| store::shape_of(d) == store::Shape::Full));
    let c = store::upsert(db, &d, T0 + 4).await.expect("seen twice");
    assert_eq!((c.inserted, c.updated), (1200, 0));
    assert_eq!(row(db, "198.18.104.199").await.session_count, 2);
}

async fn applied_ids_and_state(db: &DatabaseConnection) {
    let ids: Vec<String> = (0..700).map(|i| format!("{i:032x}")).collect();
    let applied: Vec<(String, u64)> = ids.iter().take(600).cloned().zip(1..).collect();
    store::record_applied(db, &applied, T0).await.expect("record");
    store::record_applied(db, &applied[..10], T0 + 5).await.expect("re-record is harmless");
    let found = store::applied_ids(db, &ids).await.expect("lookup");
    assert_eq!(found.len(), 600);
    assert_eq!(store::prune_applied(db, T0 + 1).await.expect("prune"), 600);
    assert!(store::applied_ids(db, &ids).await.expect("lookup").is_empty());
    let d = StateDelta {
        last_sequence: 10,
        total_received: 5,
        total_processed: 4,
        dead_lettered: 1,
        total_inserted: 3,
        ..StateDelta::default()
    };
    store::update_state(db, "sink-a", "NTP", &d, T0).await.expect("state 1");
    let d2 = StateDelta { last_sequence: 7, total_received: 2, total_processed: 2, total_updated: 2, ..StateDelta::default() };
    store::update_state(db, "sink-a", "NTP", &d2, T0 + 1).await.expect("state 2");
    store::heartbeat(db, "sink-a", "NTP", 42, T0 + 2).await.expect("queue");
    let s = sink_state::Entity::find_by_id("sink-a".to_string()).one(db).await.expect("q").expect("row");
    assert_eq!((s.last_sequence, s.total_received, s.total_processed, s.batches), (10, 7, 6, 2));
    assert_eq!((s.total_inserted, s.total_updated, s.dead_lettered, s.queue_size), (3, 2, 1, 42));
    assert_eq!((s.last_commit_at, s.updated_at), (Some(T0 + 1), T0 + 2));
    // A sink that has applied nothing yet still leaves a heartbeat.
    store::heartbeat(db, "sink-b", "NTP", 0, T0 + 3).await.expect("first heartbeat");
    let s = sink_state::Entity::find_by_id("sink-b".to_string()).one(db).await.expect("q").expect("row");
    assert_eq!((s.batches, s.total_processed, s.last_commit_at, s.updated_at), (0, 0, None, T0 + 3));
}

/// A kiss-o'-death answer (stratum 0) with `code` as its reference id.
fn kiss(ip: &str, t: i64, code: [u8; 4]) -> Record {
    let Record::Session(mut s) = session(ip, t, true, 0, Some(0.001)) else { unreachable!("a session") };
    if let Some(r) = s.response.as_mut() {
        r.reference_id = u32::from_be_bytes(code);
    }
    Record::Session(s)
}

/// The row's kiss code and its time.
async fn kissed(db: &DatabaseConnection, ip: &str) -> (Option<String>, Option<i64>) {
    let r = row(db, ip).await;
    (r.last_kiss_code, r.last_kiss_at)
}

fn code(c: &str, t: i64) -> (Option<String>, Option<i64>) {
    (Some(c.to_string()), Some(t))
}

async fn the_latest_kiss_code_follows_the_newest_kiss(db: &DatabaseConnection) {
    let ip = "198.18.0.4";
    store::upsert(db, &deltas(vec![kiss(ip, T0 + 5_000, *b"RATE")]), T0 + 10).await.expect("first kiss");
    assert_eq!(kissed(db, ip).await, code("RATE", T0 + 5_000));
    // A late replay of older traffic (a DENY before the RATE) counts, but does not replace it.
    store::upsert(db, &deltas(vec![kiss(ip, T0 + 1_000, *b"DENY"), session(ip, T0 + 2_000, true, 2, None)]), T0 + 20).await.expect("late");
    let r = row(db, ip).await;
    assert_eq!((r.last_kiss_code.as_deref(), r.last_kiss_at, r.kod_count, r.session_count), (Some("RATE"), Some(T0 + 5_000), 2, 3));
    // Nor does a replayed kiss that arrives in one batch with newer traffic of the same client.
    store::upsert(db, &deltas(vec![kiss(ip, T0 + 1_500, *b"DENY"), session(ip, T0 + 8_000, true, 2, None)]), T0 + 25).await.expect("mixed");
    let r = row(db, ip).await;
    assert_eq!((r.last_kiss_code.as_deref(), r.last_kiss_at, r.kod_count), (Some("RATE"), Some(T0 + 5_000), 3));
    assert_eq!(r.last_seen, T0 + 8_000 + 20_000, "the newer session moved last_seen");
    // Newer traffic without a kiss keeps it; a newer kiss replaces it, and so does one of the
    // same time.
    store::upsert(db, &deltas(vec![session(ip, T0 + 9_000, true, 2, None)]), T0 + 30).await.expect("newer");
    assert_eq!(kissed(db, ip).await, code("RATE", T0 + 5_000));
    store::upsert(db, &deltas(vec![kiss(ip, T0 + 7_000, *b"RSTR")]), T0 + 40).await.expect("newer kiss, older than last_seen");
    assert_eq!(kissed(db, ip).await, code("RSTR", T0 + 7_000));
    store::upsert(db, &deltas(vec![kiss(ip, T0 + 7_000, *b"STEP")]), T0 + 45).await.expect("a kiss of the same time");
    assert_eq!(kissed(db, ip).await, code("STEP", T0 + 7_000));
    // A client first seen through a late replay takes its kiss code, old as it is; so does a
    // stored client that has none yet.
    store::upsert(db, &deltas(vec![kiss("198.18.0.5", T0, *b"DENY")]), T0 + 50).await.expect("first seen late");
    assert_eq!(kissed(db, "198.18.0.5").await, code("DENY", T0));
    store::upsert(db, &deltas(vec![session("198.18.0.6", T0 + 5_000, true, 2, None)]), T0 + 60).await.expect("no kiss");
    assert_eq!(kissed(db, "198.18.0.6").await, (None, None));
    let newer = row(db, "198.18.0.6").await.last_seen;
    store::upsert(db, &deltas(vec![kiss("198.18.0.6", T0 + 1_000, *b"RATE")]), T0 + 70).await.expect("an older kiss");
    let r = row(db, "198.18.0.6").await;
    assert_eq!((r.last_kiss_code.as_deref(), r.last_kiss_at, r.last_seen), (Some("RATE"), Some(T0 + 1_000), newer));
    // A row from before `last_kiss_at` existed (a code without a time) is judged by its
    // last_seen: an older kiss keeps the code, a kiss past last_seen replaces it.
    db.execute_unprepared(&format!("UPDATE ntp_clients SET last_kiss_at = NULL WHERE client_ip = '{ip}'")).await.expect("legacy row");
    let last_seen = row(db, ip).await.last_seen;
    store::upsert(db, &deltas(vec![kiss(ip, T0 + 8_500, *b"RATE")]), T0 + 80).await.expect("legacy, older kiss");
    assert_eq!(kissed(db, ip).await, (Some("STEP".into()), None));
    store::upsert(db, &deltas(vec![kiss(ip, last_seen, *b"DENY")]), T0 + 90).await.expect("legacy, newer kiss");
    assert_eq!(kissed(db, ip).await, code("DENY", last_seen));
}

/// Every kind of client a batch can hold, for host `host`: one answered session, one
/// unanswered, a kiss, a randomised T1 with retransmits, a session without latency, an IPv6
/// client ([`store::Shape::Single`] rows), and a client seen twice, a control query beside a
/// session, a non-finite latency and a response captured before its request (full rows).
fn every_kind(host: &str, interface: &str, t: i64) -> Batch {
    let mut records = vec![
        session("198.18.1.1", t, true, 2, Some(0.003)),
        session("198.18.1.2", t + 1, false, 0, None),
        kiss("198.18.1.3", t + 2, *b"RATE"),
        session("198.18.1.5", t + 4, true, 2, None),
        session("2001:db8::5", t + 5, true, 2, Some(0.25)),
        session("198.18.1.6", t + 6, true, 2, Some(0.001)),
        session("198.18.1.6", t + 7, true, 3, Some(0.002)),
        session("198.18.1.7", t + 8, true, 2, Some(0.001)),
        session("198.18.1.8", t + 9, true, 2, Some(f64::INFINITY)),
        session("198.18.1.9", t + 10, true, 2, Some(0.004)),
    ];
    if let Record::Session(s) = session("198.18.1.4", t + 3, true, 2, Some(0.002)) {
        records.push(Record::Session(ntp_wire::Session { t1_randomized: true, retransmits: 2, interleaved: true, ..s }));
    }
    // One client each with an NTS field (also an extension field), another extension field, a
    // MAC: every bit of a single session's packed flags set apart from the others.
    let ext = |field_type| vec![ntp_wire::Extension { field_type, length: 16 }];
    for (ip, dt, extensions, mac) in [
        ("198.18.1.10", 12, ext(0x0104), None),
        ("198.18.1.11", 13, ext(0x2005), None),
        ("198.18.1.12", 14, Vec::new(), Some(ntp_wire::Mac { key_id: 1, digest_len: 20 })),
    ] {
        if let Record::Session(mut s) = session(ip, t + dt, true, 2, Some(0.001)) {
            s.request.extensions = extensions;
            s.request.mac = mac;
            records.push(Record::Session(s));
        }
    }
    if let Record::Session(s) = &mut records[9] {
        s.response_time_ns = Some(t + 10 - 1_000);
    }
    records.push(observation("198.18.1.7", t + 11));
    Batch::new(host, interface, records)
}

/// The rows of `host`, without what tells the hosts' rows apart.
async fn rows_of(db: &DatabaseConnection, host: &str) -> Vec<ntp_clients::Model> {
    let mut rows = ntp_clients::Entity::find().filter(ntp_clients::Column::Host.eq(host)).all(db).await.expect("rows of the host");
    rows.sort_by(|a, b| (&a.interface_name, &a.client_ip).cmp(&(&b.interface_name, &b.client_ip)));
    rows.into_iter().map(|r| ntp_clients::Model { id: 0, host: String::new(), ..r }).collect()
}

/// The statements that bind a single session's row compactly leave exactly the rows that
/// binding every column leaves, new and updated, for every kind of client; so do statements
/// that bind the host and interface once and those that bind them per row (one call writes
/// two hosts and two interfaces, so some chunks span them).
async fn single_session_rows_leave_what_full_rows_leave(db: &DatabaseConnection) {
    for (i, t) in [T0, T0 + 100_000, T0 - 100_000].into_iter().enumerate() {
        let now = T0 + i as i64;
        for (prefix, single) in [("full", false), ("single", true)] {
            let (a, b) = (format!("{prefix}-a"), format!("{prefix}-b"));
            let batches = [every_kind(&a, "eth0", t), every_kind(&a, "eth1", t), every_kind(&b, "eth0", t)];
            let d = aggregate::aggregate(&batches);
            if single {
                let shapes: Vec<store::Shape> = d.values().map(store::shape_of).collect();
                assert_eq!(shapes.iter().filter(|s| **s == store::Shape::Single).count(), 27, "{shapes:?}");
            }
            let c = store::upsert_shaped(db, &d, now, single).await.expect("upsert");
            assert_eq!((c.inserted, c.updated), if i == 0 { (39, 0) } else { (0, 39) });
        }
        for host in ["a", "b"] {
            let (full, single) = (rows_of(db, &format!("full-{host}")).await, rows_of(db, &format!("single-{host}")).await);
            assert_eq!(full.len(), if host == "a" { 26 } else { 13 });
            assert_eq!(full, single, "batch {i}, host {host}");
        }
    }
    let rows = rows_of(db, "single-a").await;
    let r = &rows[13];
    assert_eq!((r.interface_name.as_str(), r.client_ip.as_str()), ("eth1", "198.18.1.1"));
    assert_eq!((r.session_count, r.answered_count, r.latency_count), (3, 3, 3));
}

/// Statements whose rows share their server's side bind it once, and leave exactly the rows
/// that binding everything per row leaves, new and updated (the third batch is older than the
/// second): clients answered in two server states, unanswered ones, clients seen twice, on two
/// interfaces of one host.
async fn shared_server_sides_leave_what_rows_bound_alone_leave(db: &DatabaseConnection) {
    for (i, t) in [T0, T0 + 100_000_000, T0 - 100_000_000].into_iter().enumerate() {
        let now = T0 + 10 + i as i64;
        for (host, compact) in [("alone", false), ("shared", true)] {
            let batches: Vec<Batch> = ["eth0", "eth1"]
                .into_iter()
                .map(|interface| {
                    let mut records = Vec::new();
                    for j in 0..300u32 {
                        let ip = format!("198.18.{}.{}", 2 + j / 250, j % 250);
                        let tj = t + i64::from(j) * 1_000;
                        let stratum = if j % 3 == 0 { 3 } else { 2 };
                        records.push(session(&ip, tj, j % 10 != 9, stratum, Some(0.001 * f64::from(j % 7))));
                        if j % 7 == 0 {
                            records.push(session(&ip, tj + 500, true, 2, Some(0.002)));
                        }
                    }
                    Batch::new(host, interface, records)
                })
                .collect();
            let d = aggregate::aggregate(&batches);
            if compact {
                let forms = store::statement_forms(db.get_database_backend(), &d);
                let has = |shape, shared| forms.iter().any(|(f, _)| f.shape == shape && f.shared_server == shared);
                assert!(has(store::Shape::Single, true) && has(store::Shape::Full, true), "{forms:?}");
                assert!(has(store::Shape::Single, false), "the unanswered clients are too few to share: {forms:?}");
            }
            let c = store::upsert_shaped(db, &d, now, compact).await.expect("upsert");
            assert_eq!((c.inserted, c.updated), if i == 0 { (600, 0) } else { (0, 600) });
        }
        let (alone, shared) = (rows_of(db, "alone").await, rows_of(db, "shared").await);
        assert_eq!(alone.len(), 600);
        assert_eq!(alone, shared, "batch {i}");
    }
}

#[tokio::test]
async fn sqlite_store() {
    for body in 0..6 {
        let t = TestDb::sqlite().await;
        match body {
            0 => upserts_add_counts_and_keep_the_newest_values(&t.db).await,
            1 => large_batches_chunk_and_count(&t.db).await,
            2 => the_latest_kiss_code_follows_the_newest_kiss(&t.db).await,
            3 => single_session_rows_leave_what_full_rows_leave(&t.db).await,
            4 => shared_server_sides_leave_what_rows_bound_alone_leave(&t.db).await,
            _ => applied_ids_and_state(&t.db).await,
        }
    }
}

#[tokio::test]
async fn postgres_store() {
    for body in 0..6 {
        let t = TestDb::postgres().await;
        match body {
            0 => upserts_add_counts_and_keep_the_newest_values(&t.db).await,
            1 => large_batches_chunk_and_count(&t.db).await,
            2 => the_latest_kiss_code_follows_the_newest_kiss(&t.db).await,
            3 => single_session_rows_leave_what_full_rows_leave(&t.db).await,
            4 => shared_server_sides_leave_what_rows_bound_alone_leave(&t.db).await,
            _ => applied_ids_and_state(&t.db).await,
        }
        t.drop_schema().await;
    }
}

/// Instructions of an SQLite program, as `(address, opcode, p4)`.
type Found = Vec<(i64, String, Option<String>)>;

/// What in SQLite's program for `sql` on the database at `path` could abort it half-way:
/// `(instructions in the program, function calls, halts with ABORT)`.
fn abort_sources(path: &std::path::Path, sql: &str) -> (usize, Found, Found) {
    const OE_ABORT: i64 = 2;
    let conn = rusqlite::Connection::open(path).expect("open");
    let mut stmt = conn.prepare(&format!("EXPLAIN {sql}")).expect("explain");
    let mut rows = stmt.raw_query();
    let (mut ops, mut calls, mut aborts) = (0, Vec::new(), Vec::new());
    while let Some(row) = rows.next().expect("row") {
        let (addr, opcode, p2): (i64, String, i64) = (row.get(0).expect("addr"), row.get(1).expect("opcode"), row.get(3).expect("p2"));
        let p4: Option<String> = row.get(5).expect("p4");
        ops += 1;
        if matches!(opcode.as_str(), "Function" | "PureFunc") {
            calls.push((addr, opcode, p4));
        } else if matches!(opcode.as_str(), "Halt" | "HaltIfNull") && p2 == OE_ABORT {
            aborts.push((addr, opcode, p4));
        }
    }
    (ops, calls, aborts)
}

/// SQLite keeps a statement journal (a copy of every page the statement changes) for a
/// statement that may write several rows and may abort half-way; the sink's multi-row upsert
/// always may write several rows, so it must not be able to abort. In the program SQLite
/// compiles for it on the migrated schema, that means: no SQL function calls (each counts as a
/// possible abort) and no constraint check that halts with ABORT (the `DO UPDATE` branch checks
/// the `NOT NULL` columns it changes with ABORT, whatever the statement says). A new `NOT NULL`
/// column in the upsert, or a `MIN()` in it, fails here.
#[tokio::test]
async fn the_sqlite_upsert_cannot_abort_half_way_so_it_needs_no_statement_journal() {
    let t = TestDb::sqlite().await;
    for form in store::Form::all() {
        let sql = store::upsert_sql(sea_orm::DbBackend::Sqlite, form, 4);
        let (ops, calls, aborts) = abort_sources(&t.dir.as_ref().expect("sqlite dir").path().join("ntp.db"), &sql);
        assert!(ops > 100, "EXPLAIN lists the program ({ops} ops)");
        assert!(calls.is_empty(), "function calls in the {form:?} upsert: {calls:?}");
        assert!(aborts.is_empty(), "checks that abort the {form:?} upsert: {aborts:?}");
    }
    let sql =
        store::upsert_sql(sea_orm::DbBackend::Sqlite, store::Form { shape: store::Shape::Full, shared_key: true, shared_server: false }, 4);

    // The same check sees the aborting NOT NULL checks of the DO UPDATE branch on the schema
    // before m20261204_000004, `INSERT OR FAIL` or not: why the migration is needed.
    let mut strict = TestDb::sqlite().await;
    let dir = strict.dir.take().expect("sqlite dir");
    let steps = migration::steps_to_undo("m20261204_000004_relax_upserted_columns");
    assert!(steps.is_some(), "the migration is among them");
    <migration::Migrator as migration::MigratorTrait>::down(&strict.db, steps).await.expect("down to before m20261204_000004");
    let (_, _, aborts) = abort_sources(&dir.path().join("ntp.db"), &sql);
    let halts = aborts.iter().filter(|(_, op, _)| op == "HaltIfNull").count();
    assert!(halts > 10, "the strict schema's NOT NULL checks abort ({halts})");
}

#[tokio::test]
async fn sqlite_is_in_wal_mode_so_readers_never_block_the_writer() {
    let t = TestDb::sqlite().await;
    let mode =
        t.db.query_one_raw(sea_orm::Statement::from_string(sea_orm::DbBackend::Sqlite, "PRAGMA journal_mode"))
            .await
            .expect("pragma")
            .expect("row");
    assert_eq!(mode.try_get_by_index::<String>(0).expect("text"), "wal");
}

async fn pragma_i64(db: &DatabaseConnection, pragma: &str) -> i64 {
    let row = db.query_one_raw(sea_orm::Statement::from_string(sea_orm::DbBackend::Sqlite, format!("PRAGMA {pragma}"))).await;
    row.expect("pragma").expect("row").try_get_by_index(0).expect("integer")
}

/// A database the sink creates has the sink's page size; one made before (SQLite's default
/// 4 KiB pages) keeps its own, migrates and takes upserts, because a WAL database cannot change
/// it and the sink must not fail on it.
#[tokio::test]
async fn new_databases_get_the_sinks_page_size_and_old_ones_keep_theirs() {
    let t = TestDb::sqlite().await;
    assert_eq!(pragma_i64(&t.db, "page_size").await, i64::from(migration::SQLITE_PAGE_SIZE));
    assert_ne!(migration::SQLITE_PAGE_SIZE, 4_096, "the test below needs a size other than SQLite's default");

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("old.db");
    let old = rusqlite::Connection::open(&path).expect("create");
    old.execute_batch("PRAGMA page_size = 4096; PRAGMA journal_mode = WAL; CREATE TABLE made_before (x)").expect("old file");
    drop(old);
    let db = db::connect_and_migrate(&format!("sqlite://{}?mode=rwc", path.display())).await.expect("old database opens");
    assert_eq!(pragma_i64(&db, "page_size").await, 4_096);
    let txn = db.begin().await.expect("begin");
    let counts = store::upsert(&txn, &deltas(vec![session("198.18.0.9", T0, true, 2, Some(0.001))]), T0).await.expect("upsert");
    txn.commit().await.expect("commit");
    assert_eq!((counts.inserted, row(&db, "198.18.0.9").await.session_count), (1, 1));
}

/// The idle sink's probe takes SQLite's write lock and gives it back: it waits while another
/// process holds the lock (what the heartbeat's time limit reports), and it commits nothing, so
/// a reader's `PRAGMA data_version` (which moves at every commit by another connection, and with
/// it every reader's cache and map) stays put; the heartbeat's write does move it.
#[tokio::test]
async fn the_write_probe_waits_for_the_lock_and_commits_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ntp.db");
    let db = db::connect_and_migrate(&format!("sqlite://{}?mode=rwc", path.display())).await.expect("sqlite");
    let reader = rusqlite::Connection::open(&path).expect("reader");
    let version = || reader.query_row("PRAGMA data_version", [], |r| r.get::<_, i64>(0)).expect("data_version");
    let before = version();
    for _ in 0..3 {
        store::probe_write(&db).await.expect("probe");
    }
    assert_eq!(version(), before, "a probe committed something");
    store::heartbeat(&db, "sink-a", "NTP", 0, T0).await.expect("heartbeat");
    assert_ne!(version(), before, "the heartbeat's write is seen (else the check above proves nothing)");

    let other = rusqlite::Connection::open(&path).expect("other writer");
    other.execute_batch("BEGIN IMMEDIATE").expect("lock");
    let waited = tokio::time::timeout(std::time::Duration::from_millis(1500), store::probe_write(&db)).await;
    assert!(waited.is_err(), "the probe did not wait for the write lock: {waited:?}");
    other.execute_batch("ROLLBACK").expect("unlock");
    // The probe given up on leaves the sink's pool usable: the next one gets the lock.
    let next = tokio::time::timeout(std::time::Duration::from_secs(20), store::probe_write(&db)).await;
    assert!(matches!(next, Ok(Ok(()))), "probe after the lock: {next:?}");
}

#[tokio::test]
async fn the_write_probe_runs_on_postgres() {
    let t = TestDb::postgres().await;
    store::probe_write(&t.db).await.expect("probe");
    t.drop_schema().await;
}
