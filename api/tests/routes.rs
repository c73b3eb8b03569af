//! Every endpoint against a real migrated database (an SQLite file and the machine's PostgreSQL),
//! through `poem::test::TestClient`: success, paging, filters, error bodies, auth.
//!
//! The rows are written by the sink's own store code from synthetic records, so the API reads
//! exactly what production writes.

use ntp_wire::{Batch, PacketSummary, Record, Session, SessionOutcome, time::parse_rfc3339};
use ntpscope_api::{AppStateBuilder, app};
use poem::test::TestClient;
use sea_orm::ConnectionTrait;
use serde_json::Value;

const T0: i64 = 1_767_225_600_000_000_000;
const TOKEN: &str = "route-test-token-0123456789";

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
    _dir: Option<tempfile::TempDir>,
    pg_schema: Option<String>,
}

fn base_pg_url() -> String {
    std::env::var("NTPSCOPE_TEST_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

async fn fixture(pg: bool, protect_reads: bool) -> Fixture {
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
    seed(&writer).await;
    let db = ntpscope_api::open_database(&url).await.expect("open");
    let state = AppStateBuilder::new(db).tokens(&[TOKEN.to_string()], protect_reads, false).build();
    Fixture { cli: TestClient::new(poem::EndpointExt::boxed(poem::EndpointExt::map_to_response(app(state)))), _dir: dir, pg_schema: schema }
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
    assert_error(s, &b, 400, None);
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
    // Without NATS: health says so with reasons; control is unavailable, in JSON.
    let (s, b) = get(f, "/api/ntp/history/health", &[]).await;
    assert_eq!(s, 503);
    assert!(b["reasons"].as_array().expect("reasons").iter().any(|r| r.as_str().is_some_and(|r| r.starts_with("nats"))), "{b}");
    let (s, b) = get(f, "/api/ntp/interfaces", &[]).await;
    assert_error(s, &b, 503, None);
}

async fn export_streams(f: &Fixture) {
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
    assert_error(s, &b, 400, None);
}

async fn cleanup_needs_a_token(f: &Fixture) {
    let body = serde_json::json!({"before": "2026-01-01T00:01:00Z"});
    let (s, b) = json(f.cli.post("/api/ntp/history/cleanup").body_json(&body).send().await).await;
    assert_error(s, &b, 401, None);
    let (s, b) = json(
        f.cli.post("/api/ntp/history/cleanup").header("Authorization", "Bearer wrong-token-wrong-token").body_json(&body).send().await,
    )
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

async fn run_all(pg: bool) {
    let f = fixture(pg, false).await;
    hostile_strings_are_harmless(&f).await;
    list_and_paging(&f).await;
    filters_and_errors(&f).await;
    detail_search_and_statistics(&f).await;
    export_streams(&f).await;
    cleanup_needs_a_token(&f).await;
    done(f).await;
    // Protected reads.
    let f = fixture(pg, true).await;
    let (s, b) = get(&f, "/api/ntp/history/clients", &[]).await;
    assert_error(s, &b, 401, None);
    let resp = f.cli.get("/api/ntp/history/clients").header("Authorization", format!("Bearer {TOKEN}")).send().await;
    assert_eq!(resp.0.status().as_u16(), 200);
    let (s, _) = get(&f, "/api/ntp/history/health", &[]).await;
    assert_eq!(s, 503, "health stays open (and unhealthy without NATS)");
    done(f).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_on_sqlite() {
    run_all(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_on_postgres() {
    run_all(true).await;
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
