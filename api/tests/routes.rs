//! Every endpoint against a real migrated database (an SQLite file and the machine's PostgreSQL),
//! through `poem::test::TestClient`: success, paging, filters, error bodies, auth.
//!
//! The rows are written by the sink's own store code from synthetic records, so the API reads
//! exactly what production writes.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use ntp_wire::{
    Batch, PacketSummary, Record, Session, SessionOutcome,
    status::{AgentStatus, InterfaceStatus},
    subject,
    time::{format_rfc3339, parse_rfc3339},
};
use ntpscope_api::{AppStateBuilder, app, clock, state::AppState};
use poem::test::TestClient;
use sea_orm::{ConnectionTrait, TransactionTrait};
use serde_json::Value;

const T0: i64 = 1_767_225_600_000_000_000;
const TOKEN: &str = "route-test-token-0123456789";
const WRONG_TOKEN: &str = "wrong-token-wrong-token";
/// How long the API waits for an agent's answer in these tests.
const CONTROL_TIMEOUT: Duration = Duration::from_millis(500);

fn session(ip: &str, t: i64, answered: bool, refid: [u8; 4], kod: bool) -> Record {
    let req = PacketSummary { mode: 3, version: 4, length: 48, transmit_ts: t as u64, ..PacketSummary::default() };
    let resp = PacketSummary { mode: 4, stratum: u8::from(!kod), reference_id: u32::from_be_bytes(refid), ..req.clone() };
    Record::Session(Session {
        id: t as u64,
        outcome: if answered { SessionOutcome::Answered } else { SessionOutcome::Unanswered },
        client_ip: ip.parse().expect("ip"),
        client_port: 40000,
        server_ip: "198.18.255.1".parse().expect("ip"),
        server_port: 123,
        vlan_id: None,
        inner_vlan_id: None,
        request_time_ns: t,
        response_time_ns: answered.then_some(t + 20_000),
        request: req,
        response: answered.then_some(resp),
        retransmits: 0,
        t1_randomized: false,
        interleaved: false,
        client_to_server_latency_s: answered.then_some(0.002),
        server_processing_time_s: answered.then_some(1e-5),
        total_process_time_s: answered.then_some(2e-5),
    })
}

/// 300 clients on two hosts and interfaces, one with a formula-like reference id, one KoD.
async fn seed(db: &sea_orm::DatabaseConnection) {
    let mut a = Vec::new();
    for i in 0..250u32 {
        a.push(session(&format!("198.18.{}.{}", i / 100, i % 100 + 1), T0 + i64::from(i) * 1_000_000_000, i % 10 != 0, *b"GPS\0", false));
    }
    a.push(session("2001:db8::5", T0 + 500_000_000_000, true, *b"=HYP", false));
    let mut b = Vec::new();
    for i in 0..49u32 {
        b.push(session(&format!("198.19.0.{}", i + 1), T0 + i64::from(i), true, *b"GPS\0", i == 0));
    }
    for (host, iface, records) in [("ntp1", "eth0", a), ("ntp2", "eth1.100", b)] {
        let deltas = ntpscope_sink::aggregate::aggregate([&Batch::new(host, iface, records)]);
        ntpscope_sink::store::upsert(db, &deltas, T0).await.expect("seed");
    }
    let state = ntpscope_sink::store::StateDelta { total_received: 300, total_processed: 300, ..Default::default() };
    ntpscope_sink::store::update_state(db, "ntpscope-sink", "NTP", &state, T0).await.expect("state");
}

struct Fixture {
    cli: TestClient<poem::endpoint::BoxEndpoint<'static>>,
    /// The application's state (shared with `cli`): tests plant a NATS connection in it.
    state: AppState,
    /// A writer connection opened the way the sink opens it.
    writer: sea_orm::DatabaseConnection,
    _dir: Option<tempfile::TempDir>,
    pg_schema: Option<String>,
}

fn base_pg_url() -> String {
    std::env::var("NTPSCOPE_TEST_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// What the API under test protects.
#[derive(Debug, Clone, Copy, Default)]
struct Protect {
    reads: bool,
    export: bool,
}

/// A migrated, empty database (its own PostgreSQL schema, or an SQLite file) and the API on it.
async fn empty_fixture(pg: bool, protect: Protect) -> Fixture {
    let (url, dir, schema) = if pg {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let schema = format!("ntpscope_api{}_{}", std::process::id(), N.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        let admin = sea_orm::Database::connect(base_pg_url()).await.expect("PostgreSQL");
        admin.execute_unprepared(&format!("CREATE SCHEMA {schema}")).await.expect("schema");
        (format!("{}?options=-c%20search_path%3D{schema}", base_pg_url()), None, Some(schema))
    } else {
        let dir = tempfile::tempdir().expect("tempdir");
        (format!("sqlite://{}?mode=rwc", dir.path().join("ntp.db").display()), Some(dir), None)
    };
    let writer = ntpscope_sink::db::connect_and_migrate(&url).await.expect("migrate");
    let db = ntpscope_api::open_database(&url).await.expect("open");
    let state =
        AppStateBuilder::new(db).tokens(&[TOKEN.to_string()], protect.reads, protect.export).control_timeout(CONTROL_TIMEOUT).build();
    // SQLite files are read through the rusqlite pool, PostgreSQL through sea-orm: both paths
    // answer every route test below.
    assert_eq!(state.reader.is_some(), !pg, "the read path for {url}");
    let cli = TestClient::new(poem::EndpointExt::boxed(poem::EndpointExt::map_to_response(app(state.clone()))));
    Fixture { cli, state, writer, _dir: dir, pg_schema: schema }
}

/// The API over the 300 clients of [`seed`].
async fn fixture(pg: bool, protect: Protect) -> Fixture {
    let f = empty_fixture(pg, protect).await;
    seed(&f.writer).await;
    f
}

async fn done(f: Fixture) {
    if let Some(schema) = f.pg_schema {
        let admin = sea_orm::Database::connect(base_pg_url()).await.expect("pg");
        let _ = admin.execute_unprepared(&format!("DROP SCHEMA {schema} CASCADE")).await;
    }
}

async fn json(resp: poem::test::TestResponse) -> (u16, Value) {
    let status = resp.0.status().as_u16();
    let text = resp.0.into_body().into_string().await.expect("body");
    (status, serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}")))
}

async fn get(f: &Fixture, path: &str, query: &[(&str, &str)]) -> (u16, Value) {
    let mut r = f.cli.get(path);
    for (k, v) in query {
        r = r.query(*k, v);
    }
    json(r.send().await).await
}

fn assert_error(status: u16, body: &Value, want: u16, field: Option<&str>) {
    assert_eq!(status, want, "{body}");
    assert_eq!(body["error"]["status"], want, "{body}");
    if let Some(f) = field {
        assert_eq!(body["error"]["field"], f, "{body}");
    }
}

async fn list_and_paging(f: &Fixture) {
    let (s, b) = get(f, "/api/ntp/history/clients", &[]).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!((b["total"].as_u64(), b["total_exact"].as_bool()), (Some(300), Some(true)));
    assert_eq!(b["clients"].as_array().map(Vec::len), Some(50));
    assert_eq!(b["pages"], 6);
    // Newest first.
    let first = &b["clients"][0];
    assert_eq!(first["client_ip"], "2001:db8::5");
    // Walk every page by cursor: 300 distinct rows in order.
    let mut seen = std::collections::HashSet::new();
    let mut cursor: Option<String> = None;
    let mut last: Option<i64> = None;
    loop {
        let mut q = vec![("page_size", "37")];
        if let Some(c) = &cursor {
            q.push(("cursor", c.as_str()));
        }
        let (s, b) = get(f, "/api/ntp/history/clients", &q).await;
        assert_eq!(s, 200, "{b}");
        for c in b["clients"].as_array().expect("clients") {
            assert!(seen.insert(c["id"].as_i64().expect("id")), "duplicate row across pages");
            let t = parse_rfc3339(c["last_seen"].as_str().expect("time")).expect("rfc3339");
            assert!(last.is_none_or(|l| t <= l), "not newest first");
            last = Some(t);
        }
        match b["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 300);
    // Offset paging agrees with the cursor walk's second page.
    let (_, p2) = get(f, "/api/ntp/history/clients", &[("page", "2"), ("page_size", "50")]).await;
    let (_, p1) = get(f, "/api/ntp/history/clients", &[("page_size", "50")]).await;
    let (_, c2) = get(f, "/api/ntp/history/clients", &[("page_size", "50"), ("cursor", p1["next_cursor"].as_str().expect("cursor"))]).await;
    assert_eq!(p2["clients"][0]["id"], c2["clients"][0]["id"]);
    // Other sorts.
    let (s, b) = get(f, "/api/ntp/history/clients", &[("sort", "client_ip"), ("order", "asc"), ("page_size", "3")]).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["clients"][0]["client_ip"], "198.18.0.1");
    let (s, b) = get(f, "/api/ntp/history/clients", &[("sort", "avg_latency"), ("page_size", "2")]).await;
    assert_eq!(s, 200, "{b}");
    let (s, _) = get(f, "/api/ntp/history/clients", &[("sort", "avg_latency"), ("cursor", b["next_cursor"].as_str().expect("c"))]).await;
    assert_eq!(s, 200);
}

async fn filters_and_errors(f: &Fixture) {
    let count = |b: &Value| b["total"].as_u64().unwrap_or(999);
    let (_, b) = get(f, "/api/ntp/history/clients", &[("interface_name", "eth1.100")]).await;
    assert_eq!(count(&b), 49);
    let (_, b) = get(f, "/api/ntp/history/clients", &[("host", "ntp1")]).await;
    assert_eq!(count(&b), 251);
    let (_, b) = get(f, "/api/ntp/history/clients", &[("cidr", "198.18.1.0/24")]).await;
    assert_eq!(count(&b), 100);
    let (_, b) = get(f, "/api/ntp/history/clients", &[("cidr", "2001:db8::/32")]).await;
    assert_eq!(count(&b), 1);
    let (_, b) = get(f, "/api/ntp/history/clients", &[("search_ip", "198.18.2.")]).await;
    assert_eq!(count(&b), 50);
    let (_, b) = get(f, "/api/ntp/history/clients", &[("has_unanswered", "true")]).await;
    assert_eq!(count(&b), 25);
    let (_, b) = get(f, "/api/ntp/history/clients", &[("has_kod", "true")]).await;
    assert_eq!(count(&b), 1);
    let (_, b) = get(f, "/api/ntp/history/clients", &[("since", "2026-01-01T00:03:20Z")]).await;
    assert_eq!(count(&b), 51, "last seen at or after 200 s");
    // Hostile strings are data, not SQL.
    let (s, b) = get(f, "/api/ntp/history/clients", &[("interface_name", "' OR 1=1 --"), ("host", "\"; DROP TABLE ntp_clients; --")]).await;
    assert_eq!((s, count(&b)), (200, 0));
    let (_, b) = get(f, "/api/ntp/history/clients", &[]).await;
    assert_eq!(count(&b), 300, "the table survived");
    for (q, field) in [
        (("page_size", "1001"), "page_size"),
        (("page_size", "0"), "page_size"),
        (("page", "0"), "page"),
        (("page", "abc"), "page"),
        (("cidr", "198.18.0.0/99"), "cidr"),
        (("since", "yesterday"), "since"),
        (("search_ip", "x%"), "search_ip"),
        (("sort", "nope"), "sort"),
        (("cursor", "not-a-cursor"), "cursor"),
        (("ntp_version", "7"), "ntp_version"),
    ] {
        let (s, b) = get(f, "/api/ntp/history/clients", &[q]).await;
        assert_error(s, &b, 400, Some(field));
    }
    // A cursor from another sort is refused.
    let (_, b) = get(f, "/api/ntp/history/clients", &[("page_size", "1")]).await;
    let c = b["next_cursor"].as_str().expect("cursor").to_string();
    let (s, b) = get(f, "/api/ntp/history/clients", &[("cursor", &c), ("sort", "first_seen")]).await;
    assert_error(s, &b, 400, Some("cursor"));
    // A cursor made by hand whose sort value is not of its sort's kind is refused before it
    // reaches the database (PostgreSQL will not compare a bigint with bytes); one whose value
    // is of the kind is a cursor like any other.
    let made = |k: &str, v: &str| {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!(r#"{{"k":"{k}","o":"desc","v":{v},"id":1}}"#))
    };
    for (sort, v, want) in [
        ("last_seen", r#""00ff""#, 400),
        ("last_seen", "1.5", 400),
        ("last_seen", r#"{"f":4611686018427387904}"#, 400),
        ("session_count", "2.5", 400),
        ("client_ip", "5", 400),
        ("client_ip", "0.5", 400),
        ("client_ip", r#""zz""#, 400),
        ("avg_latency", r#""00ff""#, 400),
        ("avg_latency", r#"{"f":18444492273895866368}"#, 400), // a NaN's bits
        ("last_seen", "1767225600000000000", 200),
        ("client_ip", r#""c6120001""#, 200),
        ("avg_latency", "1", 200),
        ("avg_latency", "0.002", 200),
        ("avg_processing_time", r#"{"f":4611686018427387904}"#, 200),
    ] {
        let (s, b) = get(f, "/api/ntp/history/clients", &[("cursor", &made(sort, v)), ("sort", sort)]).await;
        if want == 200 {
            assert_eq!(s, 200, "{sort} {v}: {b}");
        } else {
            assert_error(s, &b, want, Some("cursor"));
        }
    }
    let (s, b) = get(f, "/api/ntp/no/such/route", &[]).await;
    assert_error(s, &b, 404, None);
}

async fn detail_search_and_statistics(f: &Fixture) {
    let (s, b) = get(f, "/api/ntp/history/clients/2001:DB8:0:0::5", &[]).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["client_ip"], "2001:db8::5");
    assert_eq!(b["records"].as_array().map(Vec::len), Some(1));
    let (s, b) = get(f, "/api/ntp/history/clients/198.18.0.1", &[]).await;
    assert_eq!((s, b["total_sessions"].as_i64()), (200, Some(1)));
    let (s, b) = get(f, "/api/ntp/history/clients/198.18.99.99", &[]).await;
    assert_error(s, &b, 404, None);
    let (s, b) = get(f, "/api/ntp/history/clients/not-an-ip", &[]).await;
    assert_error(s, &b, 400, Some("client_ip"));
    // The seed's search body.
    let body = serde_json::json!({
        "filters": {"client_ips": ["198.18.0.1", "198.19.0.1"], "interface_names": ["eth0", "eth1.100"]},
        "pagination": {"page": 1, "page_size": 10}
    });
    let (s, b) = json(f.cli.post("/api/ntp/history/search").body_json(&body).send().await).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["total"], 2);
    let (s, b) =
        json(f.cli.post("/api/ntp/history/search").body_json(&serde_json::json!({"filters": {"client_ips": ["nope"]}})).send().await).await;
    assert_error(s, &b, 400, Some("client_ips"));
    let (s, b) =
        json(f.cli.post("/api/ntp/history/search").body_json(&serde_json::json!({"pagination": {"page_size": 5000}})).send().await).await;
    assert_error(s, &b, 400, Some("page_size"));
    // Values of the wrong type name their field too, however deep.
    for (body, field) in [
        (serde_json::json!({"pagination": {"page_size": "many"}}), "pagination.page_size"),
        (serde_json::json!({"filters": {"min_sessions": "x"}}), "filters.min_sessions"),
        (serde_json::json!({"filters": {"client_ips": ["198.18.0.1", 7]}}), "filters.client_ips[1]"),
        (serde_json::json!({"sort": "loudest"}), "sort"),
    ] {
        let (s, b) = json(f.cli.post("/api/ntp/history/search").body_json(&body).send().await).await;
        assert_error(s, &b, 400, Some(field));
    }
    let (s, b) = json(f.cli.post("/api/ntp/history/search").content_type("application/json").body("{not json").send().await).await;
    assert_error(s, &b, 400, None);
    // Statistics.
    let (s, b) = get(f, "/api/ntp/history/interfaces/statistics", &[]).await;
    assert_eq!(s, 200, "{b}");
    let ifaces = b["interfaces"].as_array().expect("interfaces");
    assert_eq!(ifaces.len(), 2);
    let eth0 = ifaces.iter().find(|i| i["interface_name"] == "eth0").expect("eth0");
    assert_eq!((eth0["clients"].as_i64(), eth0["sessions"].as_i64(), eth0["unanswered"].as_i64()), (Some(251), Some(251), Some(25)));
    assert!((eth0["client_to_server_latency"]["avg"].as_f64().expect("avg") - 0.002).abs() < 1e-12);
    let (s, b) = get(f, "/api/ntp/history/service/statistics", &[]).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["sink"]["total_processed"], 300);
    assert_eq!(b["total_clients"], 300);
    // The same figures for Prometheus.
    let resp = f.cli.get("/api/ntp/metrics").send().await;
    assert_eq!(resp.0.status().as_u16(), 200);
    let content_type = resp.0.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    let text = resp.0.into_body().into_string().await.expect("body");
    for want in [
        r#"ntpscope_interface_clients{host="ntp1",interface="eth0"} 251"#,
        r#"ntpscope_interface_sessions{host="ntp1",interface="eth0",outcome="unanswered"} 25"#,
        r#"ntpscope_interface_clients{host="ntp2",interface="eth1.100"} 49"#,
        r#"ntpscope_sink_processed_records_total{consumer="ntpscope-sink"} 300"#,
        "ntpscope_stored_clients 300",
    ] {
        assert!(text.lines().any(|l| l == want), "missing {want}:\n{text}");
    }
    // Without NATS: health says so with reasons; control is unavailable, in JSON.
    let (s, b) = get(f, "/api/ntp/history/health", &[]).await;
    assert_eq!(s, 503);
    assert!(b["reasons"].as_array().expect("reasons").iter().any(|r| r.as_str().is_some_and(|r| r.starts_with("nats"))), "{b}");
    let (s, b) = get(f, "/api/ntp/interfaces", &[]).await;
    assert_error(s, &b, 503, None);
}

async fn export_streams(f: &Fixture) {
    // --max-export-rows caps every export, whatever limit the request asks for.
    let state = ntpscope_api::state::AppState { max_export_rows: 5, ..f.state.clone() };
    let capped = TestClient::new(poem::EndpointExt::boxed(poem::EndpointExt::map_to_response(app(state))));
    let resp = capped.post("/api/ntp/history/export").body_json(&serde_json::json!({"format": "ndjson", "limit": 100})).send().await;
    assert_eq!(resp.0.status().as_u16(), 200);
    assert_eq!(resp.0.into_body().into_string().await.expect("ndjson").lines().count(), 5, "capped at --max-export-rows");
    let resp = f.cli.post("/api/ntp/history/export").body_json(&serde_json::json!({"format": "csv"})).send().await;
    assert_eq!(resp.0.status().as_u16(), 200);
    let disposition = resp.0.headers().get("content-disposition").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    assert!(disposition.starts_with("attachment; filename=\"ntp_clients_") && disposition.ends_with(".csv\""), "{disposition}");
    assert!(resp.0.headers().get("content-type").and_then(|v| v.to_str().ok()).is_some_and(|t| t.starts_with("text/csv")));
    let text = resp.0.into_body().into_string().await.expect("csv");
    assert!(text.starts_with("\u{feff}id,host,interface_name,client_ip"));
    assert_eq!(text.lines().count(), 301, "header + 300 rows");
    assert!(text.contains(",\"'=HYP\","), "formula-like reference id neutralised");
    let resp = f
        .cli
        .post("/api/ntp/history/export")
        .body_json(&serde_json::json!({"format": "ndjson", "limit": 7, "filters": {"hosts": ["ntp2"]}}))
        .send()
        .await;
    let text = resp.0.into_body().into_string().await.expect("ndjson");
    assert_eq!(text.lines().count(), 7);
    assert!(text.lines().all(|l| serde_json::from_str::<Value>(l).is_ok_and(|v| v["host"] == "ntp2")));
    let resp = f.cli.post("/api/ntp/history/export").body_json(&serde_json::json!({"format": "json"})).send().await;
    let v: Value = serde_json::from_str(&resp.0.into_body().into_string().await.expect("json")).expect("a JSON array");
    assert_eq!(v.as_array().map(Vec::len), Some(300));
    let (s, b) = json(f.cli.post("/api/ntp/history/export").body_json(&serde_json::json!({"format": "xml"})).send().await).await;
    assert_error(s, &b, 400, Some("format"));
    let (s, b) = json(f.cli.post("/api/ntp/history/export").body_json(&serde_json::json!({"limit": "all"})).send().await).await;
    assert_error(s, &b, 400, Some("limit"));
}

/// An export longer than one of the export's keyset chunks ([`ntpscope_api::export::CHUNK`]
/// rows): 4 500 clients whose last-seen times take three values, so that chunks end inside runs
/// of equal sort values. Every format, two sorts and a limit that ends one row into a chunk give
/// each row exactly once.
async fn exports_span_chunks(pg: bool) {
    let f = empty_fixture(pg, Protect::default()).await;
    let n = 4_500u32;
    let records: Vec<Record> = (0..n)
        .map(|i| {
            session(&format!("198.18.{}.{}", i / 250, i % 250 + 1), T0 + i64::from(i % 3) * 1_000_000_000, i % 7 != 0, *b"GPS\0", false)
        })
        .collect();
    let deltas = ntpscope_sink::aggregate::aggregate([&Batch::new("ntp1", "eth0", records)]);
    ntpscope_sink::store::upsert(&f.writer, &deltas, T0).await.expect("rows");
    assert!(u64::from(n) > 2 * ntpscope_api::export::CHUNK, "the export spans several chunks");
    let ids_of = |format: &str, text: &str| -> Vec<i64> {
        match format {
            "csv" => text.lines().skip(1).map(|l| l.split(',').next().and_then(|id| id.parse().ok()).expect("an id first")).collect(),
            "ndjson" => text.lines().map(|l| serde_json::from_str::<Value>(l).expect("a line")["id"].as_i64().expect("id")).collect(),
            _ => serde_json::from_str::<Value>(text)
                .expect("an array")
                .as_array()
                .expect("array")
                .iter()
                .map(|r| r["id"].as_i64().expect("id"))
                .collect(),
        }
    };
    let limit = ntpscope_api::export::CHUNK + 1;
    for format in ["csv", "ndjson", "json"] {
        for (sort, order) in [("last_seen", "desc"), ("client_ip", "asc")] {
            for want in [u64::from(n), limit] {
                let body = serde_json::json!({"format": format, "sort": sort, "order": order, "limit": want});
                let resp = f.cli.post("/api/ntp/history/export").body_json(&body).send().await;
                assert_eq!(resp.0.status().as_u16(), 200);
                let ids = ids_of(format, &resp.0.into_body().into_string().await.expect("body"));
                let distinct: BTreeSet<i64> = ids.iter().copied().collect();
                assert_eq!((ids.len() as u64, distinct.len() as u64), (want, want), "{format} {sort} {order} limit {want}");
            }
        }
    }
    // No request timeout cuts a cleanup short: with none left at all, a search times out and
    // a cleanup of every row still answers with its count.
    let state = ntpscope_api::state::AppState { request_timeout: Duration::ZERO, ..f.state.clone() };
    let hurried = TestClient::new(poem::EndpointExt::boxed(poem::EndpointExt::map_to_response(app(state))));
    let search = serde_json::json!({"filters": {"min_sessions": 1}, "sort": "session_count"});
    let (s, b) = json(hurried.post("/api/ntp/history/search").body_json(&search).send().await).await;
    assert_error(s, &b, 504, None);
    let cleanup = serde_json::json!({"before": "2100-01-01T00:00:00Z"});
    let (s, b) =
        json(hurried.post("/api/ntp/history/cleanup").header("Authorization", format!("Bearer {TOKEN}")).body_json(&cleanup).send().await)
            .await;
    assert_eq!((s, b["deleted"].as_u64()), (200, Some(u64::from(n))), "{b}");
    done(f).await;
}

async fn cleanup_needs_a_token(f: &Fixture) {
    let body = serde_json::json!({"before": "2026-01-01T00:01:00Z"});
    let (s, b) = json(f.cli.post("/api/ntp/history/cleanup").body_json(&body).send().await).await;
    assert_error(s, &b, 401, None);
    let (s, b) =
        json(f.cli.post("/api/ntp/history/cleanup").header("Authorization", format!("Bearer {WRONG_TOKEN}")).body_json(&body).send().await)
            .await;
    assert_error(s, &b, 403, None);
    let auth = format!("Bearer {TOKEN}");
    let (s, b) =
        json(f.cli.post("/api/ntp/history/cleanup").header("Authorization", &auth).body_json(&serde_json::json!({})).send().await).await;
    assert_error(s, &b, 400, Some("older_than_days"));
    let (s, b) = json(f.cli.post("/api/ntp/history/cleanup").header("Authorization", &auth).body_json(&body).send().await).await;
    assert_eq!(s, 200, "{b}");
    // eth1.100's 49 clients (last seen T0 + ≤ 48 ns + 20 µs) and eth0's first 60 (0..59 s).
    assert_eq!(b["deleted"], 49 + 60);
    let (_, b) = get(f, "/api/ntp/history/clients", &[]).await;
    assert_eq!(b["total"], 300 - 109);
    let (s, b) = json(f.cli.post("/api/ntp/interfaces/eth0/start").body_json(&serde_json::json!({"port": 123})).send().await).await;
    assert_error(s, &b, 401, None);
}

/// SQL injection, path traversal, NULs and oversized strings in every text parameter: never a
/// 5xx, always a JSON body, never a row that the literal text does not match, and the table
/// intact afterwards.
async fn hostile_strings_are_harmless(f: &Fixture) {
    const HOSTILE: [&str; 9] = [
        "' OR '1'='1",
        "eth0' OR 1=1 --",
        "\"; DROP TABLE ntp_clients; --",
        "1; DELETE FROM ntp_clients",
        "../../../../etc/passwd",
        "..%2f..%2fetc%2fpasswd",
        "%00\u{0}x",
        "198.18.0.0/16' UNION SELECT * FROM sink_state --",
        "\u{202e}ntp\u{fffd}",
    ];
    let list_params = ["search_ip", "interface_name", "host", "cidr", "since", "until", "cursor", "sort", "order", "ntp_version"];
    for h in HOSTILE {
        for p in list_params {
            let (s, b) = get(f, "/api/ntp/history/clients", &[(p, h)]).await;
            assert!(s == 200 || s == 400, "{p}={h:?}: {s} {b}");
            if s == 200 {
                assert_eq!(b["total"], 0, "{p}={h:?} matched rows: {b}");
            } else {
                assert_eq!(b["error"]["status"], 400, "{p}={h:?}: {b}");
            }
        }
        let encoded = h.bytes().fold(String::new(), |mut acc, c| {
            let _ = std::fmt::Write::write_fmt(&mut acc, format_args!("%{c:02X}"));
            acc
        });
        let resp = f.cli.get(format!("/api/ntp/history/clients/{encoded}")).send().await;
        let status = resp.0.status().as_u16();
        assert!(status == 400 || status == 404, "detail {h:?}: {status}");
        let body = serde_json::json!({"filters": {"client_ips": [h], "interface_names": [h], "hosts": [h], "search_ip": h}});
        let (s, b) = json(f.cli.post("/api/ntp/history/search").body_json(&body).send().await).await;
        assert!(s == 200 || s == 400, "search {h:?}: {s} {b}");
        if s == 200 {
            assert_eq!(b["total"], 0, "search {h:?} matched rows: {b}");
        }
        let body = serde_json::json!({"format": "ndjson", "filters": {"interface_names": [h]}});
        let r = f.cli.post("/api/ntp/history/export").body_json(&body).send().await;
        let status = r.0.status().as_u16();
        let text = r.0.into_body().into_string().await.expect("body");
        assert!(status == 200 && text.trim().is_empty() || status == 400, "export {h:?}: {status} {text}");
    }
    let long = "9".repeat(5000);
    let (s, b) = get(f, "/api/ntp/history/clients", &[("search_ip", &long)]).await;
    assert_error(s, &b, 400, Some("search_ip"));
    let (s, b) = get(f, "/api/ntp/history/clients", &[]).await;
    assert_eq!((s, b["total"].as_u64()), (200, Some(300)), "the table is intact: {b}");
}

/// Sends `method path` with an optional JSON body and an optional bearer token.
async fn call(f: &Fixture, method: &str, path: &str, body: Option<&Value>, token: Option<&str>) -> (u16, Value) {
    let mut r = if method == "GET" { f.cli.get(path) } else { f.cli.post(path) };
    if let Some(t) = token {
        r = r.header("Authorization", format!("Bearer {t}"));
    }
    if let Some(b) = body {
        r = r.body_json(b);
    }
    json(r.send().await).await
}

/// The start of a body, for assertion messages.
fn short(b: &Value) -> String {
    b.to_string().chars().take(300).collect()
}

fn content_type(resp: &poem::test::TestResponse) -> String {
    resp.0.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string()
}

/// A body over 1 MiB is refused before it is read: 413, JSON, on any endpoint that takes one.
async fn oversized_bodies_are_refused(f: &Fixture) {
    let ips: Vec<String> = (0..100_000).map(|i| format!("198.18.{}.{}", i / 256 % 256, i % 256)).collect();
    let body = serde_json::json!({"filters": {"client_ips": ips}});
    assert!(serde_json::to_vec(&body).expect("json").len() > 1 << 20);
    let (s, b) = json(f.cli.post("/api/ntp/history/search").body_json(&body).send().await).await;
    assert_eq!(s, 413, "{b}");
    assert_eq!(b["error"]["status"], 413, "{b}");
}

/// The Swagger UI and both forms of the spec, with their content types; the YAML served is the
/// generated contract (which `openapi_contract.rs` holds equal to `openapi.yaml`).
async fn docs_are_served(f: &Fixture) {
    let resp = f.cli.get("/docs").send().await;
    assert_eq!(resp.0.status().as_u16(), 200);
    assert!(content_type(&resp).starts_with("text/html"), "{}", content_type(&resp));
    let html = resp.0.into_body().into_string().await.expect("html");
    assert!(html.contains("Swagger UI") && html.contains("SwaggerUIBundle"), "{html:.300}");
    let resp = f.cli.get("/openapi.json").send().await;
    assert_eq!(resp.0.status().as_u16(), 200);
    assert!(content_type(&resp).starts_with("application/json"), "{}", content_type(&resp));
    let spec: Value = serde_json::from_str(&resp.0.into_body().into_string().await.expect("json")).expect("the spec is JSON");
    assert!(spec["openapi"].as_str().is_some_and(|v| v.starts_with("3.")), "{}", spec["openapi"]);
    assert!(spec["paths"]["/api/ntp/history/clients"]["get"].is_object());
    assert!(spec["components"]["securitySchemes"]["bearerAuth"].is_object());
    let resp = f.cli.get("/openapi.yaml").send().await;
    assert_eq!(resp.0.status().as_u16(), 200);
    assert!(content_type(&resp).starts_with("application/x-yaml"), "{}", content_type(&resp));
    assert_eq!(resp.0.into_body().into_string().await.expect("yaml"), ntpscope_api::spec_yaml());
    assert!(spec["servers"].as_array().is_none_or(Vec::is_empty), "no --public-url, no servers: {}", spec["servers"]);
    // Behind a proxy, --public-url is the server the document names.
    let state = ntpscope_api::state::AppState { public_url: Some("https://ntp.example.net/ntpscope".into()), ..f.state.clone() };
    let cli = TestClient::new(poem::EndpointExt::boxed(poem::EndpointExt::map_to_response(app(state))));
    let spec: Value =
        serde_json::from_str(&cli.get("/openapi.json").send().await.0.into_body().into_string().await.expect("json")).expect("JSON");
    assert_eq!(spec["servers"][0]["url"], "https://ntp.example.net/ntpscope", "{}", spec["servers"]);
}

/// One client of [`catalog`], as the test wrote it.
#[derive(Debug, Clone)]
struct Inserted {
    ip: String,
    first_seen: i64,
    last_seen: i64,
    sessions: i64,
    version: i32,
    unanswered: i64,
    /// Mean client-to-server latency, summed as the sink sums it (per batch, then the batches'
    /// sums added in the upsert); -1 without an answered session, as the API sorts it.
    avg_latency: f64,
}

fn with_version(r: Record, version: u8) -> Record {
    let Record::Session(mut s) = r else { panic!("a session") };
    s.request.version = version;
    if let Some(resp) = &mut s.response {
        resp.version = version;
    }
    Record::Session(s)
}

/// 60 clients on one interface with 1–5 sessions 100 s apart, NTP versions 3 and 4 mixed across
/// a client's sessions, every fourth session unanswered, latencies in thirds of a millisecond (no
/// short decimal holds them), clients 20 apart alike in all but time (so averages tie); written by
/// the sink's store in two batches (rows inserted, then updated). Returns what each row must
/// say, computed from the sessions: first seen at the earliest request, last seen at the latest
/// packet (the response, 20 µs after its request, or the request when unanswered), the newest
/// session's version.
async fn catalog(db: &sea_orm::DatabaseConnection) -> Vec<Inserted> {
    let mut batches = [Vec::new(), Vec::new()];
    let mut out = Vec::new();
    for i in 0..60i64 {
        let ip = format!("198.18.7.{}", i + 1);
        let n = 1 + i * 7 % 5;
        let base = T0 + (i * 37 % 60) * 1_000_000_000;
        let mut c = Inserted {
            ip: ip.clone(),
            first_seen: i64::MAX,
            last_seen: i64::MIN,
            sessions: n,
            version: 0,
            unanswered: 0,
            avg_latency: -1.0,
        };
        let mut newest = i64::MIN;
        let (mut sums, mut answered_count) = ([0.0f64; 2], 0);
        for j in 0..n {
            let t = base + j * 100_000_000_000;
            let answered = (i + j) % 4 != 0;
            let version = if (i + j) % 3 == 0 { 3 } else { 4 };
            let Record::Session(mut s) = with_version(session(&ip, t, answered, *b"GPS\0", false), version) else { unreachable!() };
            let latency = (1 + (i % 20) * 5 + j) as f64 / 3.0 * 1e-3;
            s.client_to_server_latency_s = answered.then_some(latency);
            batches[usize::from(j % 2 == 1)].push(Record::Session(s));
            if answered {
                sums[usize::from(j % 2 == 1)] += latency;
                answered_count += 1;
            } else {
                c.unanswered += 1;
            }
            c.first_seen = c.first_seen.min(t);
            c.last_seen = c.last_seen.max(if answered { t + 20_000 } else { t });
            if t > newest {
                newest = t;
                c.version = i32::from(version);
            }
        }
        if answered_count > 0 {
            c.avg_latency = (sums[0] + sums[1]) / f64::from(answered_count);
        }
        out.push(c);
    }
    for (n, records) in (0i64..).zip(batches) {
        let deltas = ntpscope_sink::aggregate::aggregate([&Batch::new("ntp1", "eth0", records)]);
        ntpscope_sink::store::upsert(db, &deltas, T0 + n).await.expect("catalog");
    }
    out
}

fn ips(b: &Value) -> BTreeSet<String> {
    b["clients"].as_array().expect("clients").iter().map(|c| c["client_ip"].as_str().expect("client_ip").to_string()).collect()
}

fn ids(b: &Value) -> Vec<i64> {
    b["clients"].as_array().expect("clients").iter().map(|c| c["id"].as_i64().expect("id")).collect()
}

/// The list returns exactly the inserted clients `want` picks, and a total that says so.
async fn check_filter(f: &Fixture, query: &[(&str, &str)], rows: &[Inserted], want: impl Fn(&Inserted) -> bool) {
    let mut q = query.to_vec();
    q.push(("page_size", "1000"));
    let (s, b) = get(f, "/api/ntp/history/clients", &q).await;
    assert_eq!(s, 200, "{query:?}: {b}");
    let expected: BTreeSet<String> = rows.iter().filter(|c| want(c)).map(|c| c.ip.clone()).collect();
    assert!(!expected.is_empty() && expected.len() < rows.len(), "{query:?} does not discriminate in the test data");
    assert_eq!(ips(&b), expected, "{query:?}");
    assert_eq!(b["total"].as_u64(), Some(expected.len() as u64), "{query:?}");
}

/// `until` (exclusive), `since` (inclusive), `ntp_version` and `min_sessions`, alone and
/// together, by query string and by search body.
async fn filters_match_the_inserted_rows(f: &Fixture, rows: &[Inserted]) {
    let mut lasts: Vec<i64> = rows.iter().map(|c| c.last_seen).collect();
    lasts.sort_unstable();
    // Exactly some client's last_seen: that client is not "before" it.
    let (since, until) = (lasts[lasts.len() / 4], lasts[lasts.len() / 2]);
    let (since_s, until_s) = (format_rfc3339(since), format_rfc3339(until));
    check_filter(f, &[("until", &until_s)], rows, |c| c.last_seen < until).await;
    check_filter(f, &[("since", &since_s), ("until", &until_s)], rows, |c| since <= c.last_seen && c.last_seen < until).await;
    check_filter(f, &[("ntp_version", "3")], rows, |c| c.version == 3).await;
    check_filter(f, &[("ntp_version", "4")], rows, |c| c.version == 4).await;
    check_filter(f, &[("min_sessions", "3")], rows, |c| c.sessions >= 3).await;
    check_filter(f, &[("min_sessions", "5")], rows, |c| c.sessions >= 5).await;
    let combined = |c: &Inserted| c.version == 4 && c.sessions >= 2 && c.last_seen < until;
    check_filter(f, &[("ntp_version", "4"), ("min_sessions", "2"), ("until", &until_s)], rows, combined).await;
    let body = serde_json::json!({
        "filters": {"ntp_version": 4, "min_sessions": 2, "until": until_s},
        "pagination": {"page_size": 1000}
    });
    let (s, b) = json(f.cli.post("/api/ntp/history/search").body_json(&body).send().await).await;
    assert_eq!(s, 200, "{b}");
    let expected: BTreeSet<String> = rows.iter().filter(|c| combined(c)).map(|c| c.ip.clone()).collect();
    assert_eq!(ips(&b), expected, "search body");
}

/// A sort key's value for an inserted client.
type SortValue = fn(&Inserted) -> i64;

/// Every id in order, following `next_cursor` from the first page.
async fn walk(f: &Fixture, sort: &str, order: &str, page_size: &str) -> Vec<i64> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut q = vec![("sort", sort), ("order", order), ("page_size", page_size)];
        if let Some(c) = &cursor {
            q.push(("cursor", c.as_str()));
        }
        let (s, b) = get(f, "/api/ntp/history/clients", &q).await;
        assert_eq!(s, 200, "{b}");
        out.extend(ids(&b));
        match b["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return out,
        }
    }
}

/// Every sort but `client_ip` (checked on the seeded rows), both orders, by cursor and by page,
/// against the order of the inserted data (ties broken by row id in the same direction).
async fn sorts_follow_the_inserted_rows(f: &Fixture, rows: &[Inserted]) {
    // Row ids are the database's: take them from the API, every sort value from the data.
    let (s, b) = get(f, "/api/ntp/history/clients", &[("page_size", "1000")]).await;
    assert_eq!(s, 200, "{b}");
    let by_ip: BTreeMap<&str, &Inserted> = rows.iter().map(|c| (c.ip.as_str(), c)).collect();
    let mut id_of = BTreeMap::new();
    for c in b["clients"].as_array().expect("clients") {
        let ip = c["client_ip"].as_str().expect("ip");
        let want = by_ip[ip];
        assert_eq!(c["first_seen"].as_str().and_then(parse_rfc3339), Some(want.first_seen), "{ip} first_seen");
        assert_eq!(c["last_seen"].as_str().and_then(parse_rfc3339), Some(want.last_seen), "{ip} last_seen");
        assert_eq!(c["session_count"].as_i64(), Some(want.sessions), "{ip} session_count");
        assert_eq!(c["ntp_version"].as_i64(), Some(i64::from(want.version)), "{ip} ntp_version");
        id_of.insert(ip.to_string(), c["id"].as_i64().expect("id"));
    }
    assert_eq!(id_of.len(), rows.len());
    // Floats compare as their bits do once negative ones are flipped (all of them finite here).
    let keys: [(&str, SortValue); 6] = [
        ("first_seen", |c| c.first_seen),
        ("last_seen", |c| c.last_seen),
        ("session_count", |c| c.sessions),
        ("unanswered_count", |c| c.unanswered),
        ("kod_count", |_| 0),
        ("avg_latency", |c| {
            let b = c.avg_latency.to_bits() as i64;
            if b < 0 { b ^ i64::MAX } else { b }
        }),
    ];
    let averages: BTreeSet<u64> = rows.iter().map(|c| c.avg_latency.to_bits()).collect();
    assert!(averages.len() > 10 && averages.len() < rows.len(), "averages neither all alike nor all different");
    for (sort, key) in keys {
        for order in ["asc", "desc"] {
            let mut want: Vec<(i64, i64)> = rows.iter().map(|c| (key(c), id_of[&c.ip])).collect();
            want.sort_unstable();
            if order == "desc" {
                want.reverse();
            }
            let want: Vec<i64> = want.into_iter().map(|(_, id)| id).collect();
            assert_eq!(walk(f, sort, order, "7").await, want, "sort={sort} order={order}, by cursor");
            let (s, b) = get(f, "/api/ntp/history/clients", &[("sort", sort), ("order", order), ("page", "3"), ("page_size", "7")]).await;
            assert_eq!(s, 200, "{b}");
            assert_eq!(ids(&b), want[14..21], "sort={sort} order={order}, page 3");
        }
    }
}

/// List filters and sorts on data whose expected answers the test computes itself.
async fn computed_filters_and_sorts(pg: bool) {
    let f = empty_fixture(pg, Protect::default()).await;
    let rows = catalog(&f.writer).await;
    filters_match_the_inserted_rows(&f, &rows).await;
    sorts_follow_the_inserted_rows(&f, &rows).await;
    done(f).await;
}

/// `older_than_days` counts back from the server's clock: rows last seen 10 days, 3 days and an
/// hour ago; 5 days removes the first, half a day the second, and nothing is left to remove then.
async fn cleanup_older_than_days(pg: bool) {
    const DAY: i64 = 86_400 * 1_000_000_000;
    let f = empty_fixture(pg, Protect::default()).await;
    let now = clock::wall_ns();
    let ages = [("198.18.9.1", 10 * DAY), ("198.18.9.2", 3 * DAY), ("198.18.9.3", DAY / 24)];
    let records = ages.iter().map(|(ip, age)| session(ip, now - age, false, *b"GPS\0", false)).collect();
    let deltas = ntpscope_sink::aggregate::aggregate([&Batch::new("ntp1", "eth0", records)]);
    ntpscope_sink::store::upsert(&f.writer, &deltas, now).await.expect("rows");
    let auth = format!("Bearer {TOKEN}");
    let cleanup = |body: Value| {
        let req = f.cli.post("/api/ntp/history/cleanup").header("Authorization", &auth).body_json(&body);
        async move { json(req.send().await).await }
    };
    for bad in [
        serde_json::json!({"older_than_days": -1}),
        serde_json::json!({"older_than_days": 36501}),
        serde_json::json!({"older_than_days": "7"}),
    ] {
        let (s, b) = cleanup(bad).await;
        assert_error(s, &b, 400, Some("older_than_days"));
    }
    let (s, b) = cleanup(serde_json::json!({"older_than_days": 1, "before": "2026-01-01T00:00:00Z"})).await;
    assert_error(s, &b, 400, Some("older_than_days"));
    let before = clock::wall_ns();
    let (s, b) = cleanup(serde_json::json!({"older_than_days": 5})).await;
    let after = clock::wall_ns();
    assert_eq!((s, b["deleted"].as_u64()), (200, Some(1)), "{b}");
    let cutoff = b["cutoff"].as_str().and_then(parse_rfc3339).expect("cutoff");
    assert!(before - 5 * DAY <= cutoff && cutoff <= after - 5 * DAY, "cutoff {} is not 5 days before the call", b["cutoff"]);
    let (_, b) = get(&f, "/api/ntp/history/clients", &[]).await;
    assert_eq!(ips(&b), BTreeSet::from(["198.18.9.2".to_string(), "198.18.9.3".to_string()]));
    let (s, b) = cleanup(serde_json::json!({"older_than_days": 0.5})).await;
    assert_eq!((s, b["deleted"].as_u64()), (200, Some(1)), "{b}");
    let (_, b) = get(&f, "/api/ntp/history/clients", &[]).await;
    assert_eq!(ips(&b), BTreeSet::from(["198.18.9.3".to_string()]));
    let (s, b) = cleanup(serde_json::json!({"older_than_days": 0.5})).await;
    assert_eq!((s, b["deleted"].as_u64()), (200, Some(0)), "{b}");
    done(f).await;
}

/// With `--protect-reads`, every read needs a token whatever its method (search and export are
/// `POST`s); health, the Swagger UI and the spec stay open.
async fn protected_reads(pg: bool) {
    let f = fixture(pg, Protect { reads: true, export: false }).await;
    let search = serde_json::json!({"filters": {"hosts": ["ntp2"]}});
    let export = serde_json::json!({"format": "json", "limit": 3});
    let reads: [(&str, &str, Option<&Value>, u16); 7] = [
        ("GET", "/api/ntp/history/clients", None, 200),
        ("GET", "/api/ntp/history/clients/198.18.0.1", None, 200),
        ("GET", "/api/ntp/history/interfaces/statistics", None, 200),
        ("GET", "/api/ntp/history/service/statistics", None, 200),
        ("POST", "/api/ntp/history/search", Some(&search), 200),
        ("POST", "/api/ntp/history/export", Some(&export), 200),
        // Without NATS the interfaces are unavailable, but only to a caller with a token.
        ("GET", "/api/ntp/interfaces", None, 503),
    ];
    for (method, path, body, ok) in reads {
        let (s, b) = call(&f, method, path, body, None).await;
        assert_eq!((s, b["error"]["status"].as_u64()), (401, Some(401)), "{method} {path} without a token: {}", short(&b));
        let (s, b) = call(&f, method, path, body, Some(WRONG_TOKEN)).await;
        assert_eq!((s, b["error"]["status"].as_u64()), (403, Some(403)), "{method} {path} with a wrong token: {}", short(&b));
        let (s, b) = call(&f, method, path, body, Some(TOKEN)).await;
        assert_eq!(s, ok, "{method} {path} with the token: {}", short(&b));
    }
    let (s, b) = call(&f, "GET", "/api/ntp/metrics", None, None).await;
    assert_eq!((s, b["error"]["status"].as_u64()), (401, Some(401)), "metrics without a token: {}", short(&b));
    let metrics = f.cli.get("/api/ntp/metrics").header("Authorization", format!("Bearer {TOKEN}")).send().await;
    assert_eq!(metrics.0.status().as_u16(), 200, "metrics with the token");
    // The scheme's name is case-insensitive; a scheme other than Bearer is no token.
    for (header, want) in [(format!("bearer {TOKEN}"), 200), (format!("BEARER {TOKEN}"), 200), (format!("Basic {TOKEN}"), 401)] {
        let resp = f.cli.get("/api/ntp/history/clients").header("Authorization", header.as_str()).send().await;
        assert_eq!(resp.0.status().as_u16(), want, "{header}");
    }
    let (_, b) = call(&f, "POST", "/api/ntp/history/search", Some(&search), Some(TOKEN)).await;
    assert_eq!(b["total"], 49);
    let (_, b) = call(&f, "POST", "/api/ntp/history/export", Some(&export), Some(TOKEN)).await;
    assert_eq!(b.as_array().map(Vec::len), Some(3));
    let (s, b) = get(&f, "/api/ntp/history/health", &[]).await;
    assert_eq!(s, 503, "health stays open (and unhealthy without NATS): {b}");
    docs_are_served(&f).await;
    done(f).await;
}

/// With `--protect-export` alone, export needs a token and the other reads do not.
async fn protected_export(pg: bool) {
    let f = fixture(pg, Protect { reads: false, export: true }).await;
    let export = serde_json::json!({"format": "json"});
    let (s, b) = call(&f, "POST", "/api/ntp/history/export", Some(&export), None).await;
    assert_error(s, &b, 401, None);
    let (s, b) = call(&f, "POST", "/api/ntp/history/export", Some(&export), Some(WRONG_TOKEN)).await;
    assert_error(s, &b, 403, None);
    let (s, b) = call(&f, "POST", "/api/ntp/history/export", Some(&export), Some(TOKEN)).await;
    assert_eq!((s, b.as_array().map(Vec::len)), (200, Some(300)), "{b}");
    let (s, b) = get(&f, "/api/ntp/history/clients", &[]).await;
    assert_eq!((s, b["total"].as_u64()), (200, Some(300)), "{b}");
    let (s, b) = call(&f, "POST", "/api/ntp/history/search", Some(&serde_json::json!({})), None).await;
    assert_eq!((s, b["total"].as_u64()), (200, Some(300)), "{b}");
    done(f).await;
}

/// Each host's interfaces in the database, joined with its agent's live status: the capture state
/// and libpcap's drops where the agent reports the interface, "agent offline" where its status is
/// stale, "unknown" where no agent reports it.
async fn interface_statistics_join_the_agents_live_status(f: &Fixture, kv: &async_nats::jetstream::kv::Store, live: &AgentStatus) {
    let mut stale = live.clone();
    stale.agent = "old-agent".into();
    stale.updated_ns = clock::wall_ns() - 3_600 * 1_000_000_000;
    let doc = ntp_wire::status::encode(&stale).expect("encode");
    kv.put(subject::agent_status_key("old-agent").expect("key"), doc.into()).await.expect("put status");
    let rows = [("silent-agent", "eth0"), ("silent-agent", "eth9"), ("old-agent", "eth0"), ("nobody", "eth0")];
    for (i, (host, iface)) in rows.into_iter().enumerate() {
        let records = vec![session(&format!("198.18.8.{}", i + 1), T0, true, *b"GPS\0", false)];
        let deltas = ntpscope_sink::aggregate::aggregate([&Batch::new(host, iface, records)]);
        ntpscope_sink::store::upsert(&f.writer, &deltas, T0).await.expect("rows");
    }
    let (s, b) = get(f, "/api/ntp/history/interfaces/statistics", &[]).await;
    assert_eq!(s, 200, "{b}");
    let of = |host: &str, iface: &str| {
        let all = b["interfaces"].as_array().expect("interfaces");
        let row = all.iter().find(|r| r["host"] == host && r["interface_name"] == iface).unwrap_or_else(|| panic!("{host}/{iface}: {b}"));
        (row["capture_state"].as_str().map(str::to_string), row["pcap_dropped"].as_u64(), row["pcap_if_dropped"].as_u64())
    };
    assert_eq!(of("silent-agent", "eth0"), (Some("running".into()), Some(7), Some(2)));
    assert_eq!(of("silent-agent", "eth9"), (Some("unknown".into()), None, None));
    assert_eq!(of("old-agent", "eth0"), (Some("agent offline".into()), Some(7), Some(2)));
    assert_eq!(of("nobody", "eth0"), (Some("unknown".into()), None, None));
    kv.purge(subject::agent_status_key("old-agent").expect("key")).await.expect("forget old-agent");
}

/// Capture stop (and start): the token first; then 503 without NATS; 404 when no agent has
/// reported or the named one has no responder; 504 when an agent that is online in the status
/// bucket never answers. Stop takes no body, an empty one, `null` or an object.
async fn capture_control(pg: bool) {
    let f = empty_fixture(pg, Protect::default()).await;
    let stop = "/api/ntp/interfaces/eth0/stop";
    let auth = format!("Bearer {TOKEN}");
    // Reads are not protected here: no Authorization header of any shape refuses them.
    for header in ["Basic x", "garbage", "Bearer", &format!("Bearer {WRONG_TOKEN}")] {
        let resp = f.cli.get("/api/ntp/history/clients").header("Authorization", header).send().await;
        assert_eq!(resp.0.status().as_u16(), 200, "{header}");
    }
    let (s, b) = json(f.cli.post(stop).send().await).await;
    assert_error(s, &b, 401, None);
    let (s, b) = json(f.cli.post(stop).header("Authorization", format!("Bearer {WRONG_TOKEN}")).send().await).await;
    assert_error(s, &b, 403, None);
    let (s, b) = json(f.cli.post(stop).header("Authorization", &auth).send().await).await;
    assert_error(s, &b, 503, None);
    for empty in ["", "null", "{}"] {
        let (s, b) = json(f.cli.post(stop).header("Authorization", &auth).content_type("application/json").body(empty).send().await).await;
        assert_error(s, &b, 503, None);
    }
    let long_agent = format!("{{\"agent\": \"{}\"}}", "a".repeat(300));
    for (bad, field) in [("{not json", None), ("[1]", Some("body")), (long_agent.as_str(), Some("agent"))] {
        let (s, b) =
            json(f.cli.post(stop).header("Authorization", &auth).content_type("application/json").body(bad.to_string()).send().await).await;
        assert_error(s, &b, 400, field);
        if field.is_none() {
            assert!(b["error"]["field"].is_null(), "{b}");
        }
    }
    let (s, b) = json(f.cli.post(stop).header("Authorization", &auth).content_type("text/plain").body("agent=a").send().await).await;
    assert_error(s, &b, 415, None);
    let (s, b) = json(f.cli.post(stop).header("Authorization", &auth).body("{}").send().await).await;
    assert_error(s, &b, 415, None);

    let nats = netlab::NatsServer::start().expect("nats-server (run scripts/install-deps.sh or set NATS_SERVER_BIN)");
    let api_conn = async_nats::connect(&nats.url).await.expect("connect");
    let js = async_nats::jetstream::new(api_conn.clone());
    let kv = ntpscope_bus::status_store(&js, &ntpscope_bus::StreamSettings::default()).await.expect("status bucket");
    *f.state.bus.write().await = Some(ntpscope_api::state::Bus { client: api_conn, js, kv: Some(kv.clone()) });
    let (s, b) = json(f.cli.post(stop).header("Authorization", &auth).send().await).await;
    assert_error(s, &b, 404, None);
    assert!(b["error"]["message"].as_str().is_some_and(|m| m.contains("no agent")), "{b}");
    let (s, b) = json(f.cli.post(stop).header("Authorization", &auth).body_json(&serde_json::json!({"agent": "ghost"})).send().await).await;
    assert_error(s, &b, 404, None);
    assert!(b["error"]["message"].as_str().is_some_and(|m| m.contains("ghost")), "{b}");

    // An agent online in the status bucket whose control subject has a subscriber that never
    // answers.
    let agent = "silent-agent";
    let status = AgentStatus {
        agent: agent.into(),
        version: "test".into(),
        updated_ns: clock::wall_ns(),
        interfaces: vec![InterfaceStatus {
            name: "eth0".into(),
            kind: "live".into(),
            state: "running".into(),
            pcap_dropped: 7,
            pcap_if_dropped: 2,
            ..Default::default()
        }],
        ..Default::default()
    };
    let doc = ntp_wire::status::encode(&status).expect("encode");
    kv.put(subject::agent_status_key(agent).expect("key"), doc.into()).await.expect("put status");
    interface_statistics_join_the_agents_live_status(&f, &kv, &status).await;
    let agent_conn = async_nats::connect(&nats.url).await.expect("connect");
    let mut requests = agent_conn.subscribe(subject::control(agent).expect("subject")).await.expect("subscribe");
    agent_conn.flush().await.expect("flush");
    for body in [None, Some(serde_json::json!({})), Some(serde_json::json!({"agent": agent}))] {
        let (s, b) = call(&f, "POST", stop, body.as_ref(), Some(TOKEN)).await;
        assert_error(s, &b, 504, None);
        assert!(b["error"]["message"].as_str().is_some_and(|m| m.contains(agent) && m.contains("did not answer")), "{b}");
    }
    let (s, b) = call(&f, "POST", "/api/ntp/interfaces/eth0/start", Some(&serde_json::json!({"port": 123})), Some(TOKEN)).await;
    assert_error(s, &b, 504, None);
    let (s, b) = get(&f, "/api/ntp/interfaces", &[]).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["agents_offline"], serde_json::json!([agent]), "{b}");
    assert_eq!(b["interfaces"][0]["state"], "unknown", "{b}");
    // Every one of those requests reached the agent's subject and went unanswered.
    let mut n = 0;
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(200), futures_util::StreamExt::next(&mut requests)).await {
        n += 1;
    }
    assert_eq!(n, 5, "3 stops, 1 start, 1 list");
    drop(nats);
    done(f).await;
}

/// The unfiltered total follows the sink's inserted-row counter without counting the table
/// again; rows written behind the sink's back wait for the next count, which a cleanup by this
/// API brings forward (`ntpscope_api::total`).
async fn the_total_follows_the_sink(pg: bool) {
    let f = empty_fixture(pg, Protect::default()).await;
    let total = async || get(&f, "/api/ntp/history/clients", &[]).await.1["total"].as_u64();
    let statistics = async || get(&f, "/api/ntp/history/service/statistics", &[]).await.1["total_clients"].as_u64();
    let write = async |ips: &[&str], t: i64, counted: bool| {
        let records = ips.iter().map(|ip| session(ip, t, true, *b"GPS\0", false)).collect();
        let deltas = ntpscope_sink::aggregate::aggregate([&Batch::new("ntp1", "eth0", records)]);
        let counts = ntpscope_sink::store::upsert(&f.writer, &deltas, t).await.expect("rows");
        let inserted = if counted { counts.inserted } else { 0 };
        let state = ntpscope_sink::store::StateDelta { total_inserted: inserted, ..Default::default() };
        ntpscope_sink::store::update_state(&f.writer, "ntpscope-sink", "NTP", &state, t).await.expect("state");
    };
    let now = clock::wall_ns();
    write(&["198.18.7.1", "198.18.7.2"], now - 86_400 * 1_000_000_000, false).await; // an import: not counted by a sink
    write(&["198.18.7.3"], now, true).await;
    assert_eq!(total().await, Some(3), "the first request counts the table");
    // The sink inserts three clients and updates one: the total moves by three.
    write(&["198.18.7.3", "198.18.7.4", "198.18.7.5", "198.18.7.6"], now + 1, true).await;
    // The first request after the TTL is served the last total and reads the counter behind it.
    tokio::time::sleep(ntpscope_api::total::TOTAL_TTL).await;
    assert_eq!(total().await, Some(3));
    let mut seen = None;
    for _ in 0..50 {
        seen = total().await;
        if seen == Some(6) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(seen, Some(6), "the sinks' counter moved the total");
    assert_eq!(statistics().await, Some(6));
    // A row written behind the sink's back is not seen until the next count.
    write(&["198.18.7.7"], now + 2, false).await;
    tokio::time::sleep(ntpscope_api::total::TOTAL_TTL).await;
    assert_eq!(total().await, Some(6));
    tokio::time::sleep(Duration::from_millis(200)).await; // the background read ran
    assert_eq!(total().await, Some(6));
    // This API's cleanup (the day-old import goes) makes the next request count the table, the
    // row written behind the sink's back included.
    let body = serde_json::json!({"older_than_days": 0.5});
    let (s, b) =
        json(f.cli.post("/api/ntp/history/cleanup").header("Authorization", format!("Bearer {TOKEN}")).body_json(&body).send().await).await;
    assert_eq!((s, b["deleted"].as_u64()), (200, Some(2)), "{b}");
    assert_eq!(total().await, Some(5));
    done(f).await;
}

async fn run_all(pg: bool) {
    the_total_follows_the_sink(pg).await;
    let f = fixture(pg, Protect::default()).await;
    hostile_strings_are_harmless(&f).await;
    list_and_paging(&f).await;
    filters_and_errors(&f).await;
    detail_search_and_statistics(&f).await;
    export_streams(&f).await;
    docs_are_served(&f).await;
    oversized_bodies_are_refused(&f).await;
    cleanup_needs_a_token(&f).await;
    done(f).await;
    computed_filters_and_sorts(pg).await;
    exports_span_chunks(pg).await;
    cleanup_older_than_days(pg).await;
    protected_reads(pg).await;
    protected_export(pg).await;
    capture_control(pg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_on_sqlite() {
    run_all(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_on_postgres() {
    run_all(true).await;
}

/// One batch the way the sink commits it: one transaction that checks the message id, upserts
/// every client, records the id and adds to the sink's counters.
async fn sink_batch(db: &sea_orm::DatabaseConnection, n: u64) -> Result<(), sea_orm::DbErr> {
    const ROWS: u64 = 4000;
    let records = (0..ROWS)
        .map(|j| {
            let k = (n * 2500 + j) % 40_000;
            let t = T0 + i64::try_from((n * ROWS + j) * 1000).unwrap_or(0);
            session(&format!("198.19.{}.{}", k / 250, k % 250 + 1), t, j % 9 != 0, *b"GPS\0", false)
        })
        .collect();
    let batch = Batch::new("load", "eth9", records);
    let id = batch.message_id();
    let now = T0 + 1_000_000 + i64::try_from(n).unwrap_or(0);
    let txn = db.begin().await?;
    let seen = ntpscope_sink::store::applied_ids(&txn, std::slice::from_ref(&id)).await?;
    assert!(seen.is_empty(), "batch {n} applied twice");
    let counts = ntpscope_sink::store::upsert(&txn, &ntpscope_sink::aggregate::aggregate([&batch]), now).await?;
    ntpscope_sink::store::record_applied(&txn, &[(id, n + 1)], now).await?;
    let delta = ntpscope_sink::store::StateDelta {
        last_sequence: n + 1,
        total_received: ROWS,
        total_processed: ROWS,
        total_inserted: counts.inserted,
        total_updated: counts.updated,
        messages_applied: 1,
        ..Default::default()
    };
    ntpscope_sink::store::update_state(&txn, "ntpscope-sink", "NTP", &delta, now).await?;
    txn.commit().await
}

/// Pages, filtered lists, a lookup, a search and both statistics, again and again until the
/// writer has committed `until` batches (or stopped); returns how many answers came and the bad
/// ones.
async fn hammer(f: Arc<Fixture>, writing: Arc<AtomicBool>, batches: Arc<AtomicU64>, until: u64, reader: u32) -> (u64, Vec<String>) {
    let mut answered = 0;
    let mut failures = Vec::new();
    let search = serde_json::json!({
        "filters": {"cidr": "198.19.0.0/16", "min_sessions": 1}, "sort": "session_count", "pagination": {"page_size": 100}
    });
    let mut round = 0u32;
    while (round < 10 || batches.load(Ordering::SeqCst) < until) && writing.load(Ordering::SeqCst) && round < 5000 {
        // Without the caches, totals and interface statistics hit the database every round.
        f.state.total.forget();
        *f.state.interface_stats.lock().await = None;
        f.state.aggregates.forget();
        let requests = [
            ("list", f.cli.get("/api/ntp/history/clients").query("page_size", &100)),
            (
                "filtered list",
                f.cli.get("/api/ntp/history/clients").query("host", &"load").query("sort", &"first_seen").query("page", &(round % 5 + 1)),
            ),
            ("detail", f.cli.get(format!("/api/ntp/history/clients/198.19.0.{}", reader + 1))),
            ("search", f.cli.post("/api/ntp/history/search").body_json(&search)),
            ("interface statistics", f.cli.get("/api/ntp/history/interfaces/statistics")),
            ("service statistics", f.cli.get("/api/ntp/history/service/statistics")),
        ];
        for (what, req) in requests {
            let resp = req.send().await;
            let status = resp.0.status().as_u16();
            let text = resp.0.into_body().into_string().await.unwrap_or_default();
            answered += 1;
            if status != 200 || text.to_ascii_lowercase().contains("locked") {
                failures.push(format!("{what}: {status} {}", text.chars().take(300).collect::<String>()));
            }
        }
        round += 1;
    }
    (answered, failures)
}

/// The API reads while the sink writes: on an SQLite file in WAL mode, a writer commits
/// 4000-client transactions back to back with the sink's own store code while four clients page,
/// look up, search and read statistics. Every answer is a 200, none mentions a lock, and the
/// writer never fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_locked_database_while_the_sink_writes() {
    let f = Arc::new(fixture(false, Protect::default()).await);
    let stop = Arc::new(AtomicBool::new(false));
    let writing = Arc::new(AtomicBool::new(true));
    let batches = Arc::new(AtomicU64::new(0));
    let (first_tx, first_rx) = tokio::sync::oneshot::channel();
    let writer = tokio::spawn({
        let (db, stop, writing, batches) = (f.writer.clone(), stop.clone(), writing.clone(), batches.clone());
        async move {
            let mut first = Some(first_tx);
            let mut n = 0;
            let res = loop {
                if stop.load(Ordering::SeqCst) {
                    break Ok(n);
                }
                if let Err(e) = sink_batch(&db, n).await {
                    break Err(e);
                }
                n += 1;
                batches.store(n, Ordering::SeqCst);
                if let Some(tx) = first.take() {
                    let _ = tx.send(());
                }
            };
            writing.store(false, Ordering::SeqCst);
            res
        }
    });
    first_rx.await.expect("the writer committed its first batch");
    let at_start = batches.load(Ordering::SeqCst);
    let until = at_start + 5;
    let readers: Vec<_> = (0..4).map(|r| tokio::spawn(hammer(f.clone(), writing.clone(), batches.clone(), until, r))).collect();
    let (mut answered, mut failures) = (0, Vec::new());
    for r in readers {
        let (n, bad) = r.await.expect("reader");
        answered += n;
        failures.extend(bad);
    }
    let during = batches.load(Ordering::SeqCst) - at_start;
    stop.store(true, Ordering::SeqCst);
    writer.await.expect("writer").expect("every write of the sink committed");
    assert!(failures.is_empty(), "{} of {answered} answers failed, e.g. {:#?}", failures.len(), &failures[..failures.len().min(5)]);
    assert!(during >= 5, "only {during} batches were committed while the API was read");
    let (s, b) = get(&f, "/api/ntp/history/clients", &[("host", "load")]).await;
    assert_eq!(s, 200, "{b}");
    assert!(b["total"].as_u64().is_some_and(|n| n > 0), "{b}");
}

#[tokio::test]
async fn the_api_refuses_an_unknown_schema() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("empty.db").display());
    let err = ntpscope_api::open_database(&url).await.expect_err("no schema").to_string();
    assert!(err.contains("no ntpscope schema"), "{err}");
    let writer = ntpscope_sink::db::connect_and_migrate(&url).await.expect("migrate");
    writer
        .execute_unprepared(&format!(
            "UPDATE seaql_migrations SET version = 'm20990101_000001_from_the_future' WHERE version = '{}'",
            migration::LATEST
        ))
        .await
        .expect("pretend a newer schema");
    let err = ntpscope_api::open_database(&url).await.expect_err("newer schema").to_string();
    assert!(err.contains("m20990101_000001_from_the_future"), "{err}");
}
