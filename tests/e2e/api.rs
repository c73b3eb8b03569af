//! The API on top of the real pipeline: its answers match the agent's own JSON lines, and it
//! starts and stops live capture on a real agent, whose clients then appear in the history.

use std::{collections::BTreeMap, process::Command, time::Duration};

use netlab::{Lab, NatsServer, require_tools};
use poem::test::TestClient;
use serde_json::Value;

use crate::harness::{self, Sink, agent, fixture, lines, open, stored_records, wait_until};

const TOKEN: &str = "e2e-api-token-0123456789";

type Client = TestClient<poem::endpoint::BoxEndpoint<'static>>;

async fn api(database_url: &str, nats_url: &str) -> Client {
    let db = ntpscope_api::open_database(database_url).await.expect("open database");
    let cfg = ntpscope_bus::NatsConfig { url: nats_url.to_string(), ..Default::default() };
    let state = ntpscope_api::AppStateBuilder::new(db).tokens(&[TOKEN.to_string()], false, false).nats(cfg).build();
    TestClient::new(poem::EndpointExt::boxed(poem::EndpointExt::map_to_response(ntpscope_api::app(state))))
}

async fn get(cli: &Client, path: &str) -> (u16, Value) {
    let r = cli.get(path).send().await;
    let status = r.0.status().as_u16();
    (status, serde_json::from_str(&r.0.into_body().into_string().await.expect("body")).expect("JSON"))
}

async fn post(cli: &Client, path: &str, body: &Value, token: bool) -> (u16, Value) {
    let mut r = cli.post(path).body_json(body);
    if token {
        r = r.header("Authorization", format!("Bearer {TOKEN}"));
    }
    let r = r.send().await;
    let status = r.0.status().as_u16();
    (status, serde_json::from_str(&r.0.into_body().into_string().await.expect("body")).expect("JSON"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_answers_what_the_agent_saw() {
    let nats = NatsServer::start().expect("nats-server");
    let dir = tempfile::tempdir().expect("tempdir");
    let url = harness::sqlite_url(dir.path());
    let _sink = Sink::start(&url, &nats.url, &dir.path().join("sink.log"), &[]);
    let mut truth = Vec::new();
    for name in ["zeek-ntp.pcap", "tcpdump-ntp.pcap", "leapsecond-ntp.pcap", "zeek-ntpmode67.pcap"] {
        let file = fixture(name);
        let args = ["-r", file.to_str().expect("path"), "--agent-id", "api-host", "--flush-pending"];
        truth.extend(lines(&agent(&args, None)));
        agent(&args, Some(&nats.url));
    }
    let db = open(&url).await;
    let total = truth.len() as i64;
    assert!(wait_until(Duration::from_secs(60), || async { stored_records(&db).await == total }).await);
    let cli = api(&url, &nats.url).await;
    // Per address: sessions across interfaces.
    let mut sessions: BTreeMap<String, i64> = BTreeMap::new();
    for l in truth.iter().filter(|l| l["record_type"] == "session") {
        *sessions.entry(l["client_ip"].as_str().expect("ip").to_string()).or_default() += 1;
    }
    for (ip, n) in &sessions {
        let (s, b) = get(&cli, &format!("/api/ntp/history/clients/{ip}")).await;
        assert_eq!(s, 200, "{ip}: {b}");
        assert_eq!(b["total_sessions"].as_i64(), Some(*n), "{ip}");
    }
    // Per interface: sessions, unanswered, kiss-o'-death.
    let (s, b) = get(&cli, "/api/ntp/history/interfaces/statistics").await;
    assert_eq!(s, 200, "{b}");
    for iface in b["interfaces"].as_array().expect("interfaces") {
        let name = iface["interface_name"].as_str().expect("name");
        let of = |pred: &dyn Fn(&Value) -> bool| {
            truth.iter().filter(|l| l["interface_name"] == name && l["record_type"] == "session" && pred(l)).count() as i64
        };
        assert_eq!(iface["sessions"].as_i64(), Some(of(&|_| true)), "{name}");
        assert_eq!(iface["unanswered"].as_i64(), Some(of(&|l| l["outcome"] == "unanswered")), "{name}");
        assert_eq!(iface["kod"].as_i64(), Some(of(&|l| !l["kiss_code"].is_null())), "{name}");
    }
    let (s, b) = get(&cli, "/api/ntp/history/service/statistics").await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["sink"]["total_processed"].as_i64(), Some(total));
    assert!(b["stream"]["messages"].as_u64().is_some_and(|m| m >= 4), "{b}");
    assert!(b["agents"].as_array().is_some_and(|a| a.iter().any(|x| x["agent"] == "api-host")), "{b}");
    // NATS, stream, consumer, sink all up: 200 (degraded at worst: the replay agents have exited).
    let healthy = wait_until(Duration::from_secs(20), || async { get(&cli, "/api/ntp/history/health").await.0 == 200 }).await;
    assert!(healthy, "{:?}", get(&cli, "/api/ntp/history/health").await);
}

/// Every thread of `pid` runs as a non-root user; one (the opener) keeps CAP_NET_RAW and nothing
/// else, the others no capability at all.
fn only_the_opener_keeps_net_raw(pid: u32) {
    let threads = netlab::procfs::thread_creds(pid).expect("agent threads");
    for t in &threads {
        assert!(t.uids.iter().chain(&t.gids).all(|&id| id != 0) && !t.groups.contains(&0), "root kept: {t:?}");
    }
    let privileged: Vec<_> = threads.iter().filter(|t| t.cap_prm != 0 || t.cap_eff != 0).collect();
    assert!(
        privileged.len() == 1
            && privileged[0].cap_prm == netlab::procfs::CAP_NET_RAW
            && privileged[0].cap_eff == netlab::procfs::CAP_NET_RAW,
        "{threads:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_starts_and_stops_live_capture_on_an_agent() {
    require_tools(&["ip", "chronyd", "ntpdig"]).expect("live test prerequisites");
    let mut lab = Lab::new().expect("lab");
    lab.start_chrony_server().expect("chronyd");
    let nats = NatsServer::start().expect("nats-server");
    let dir = tempfile::tempdir().expect("tempdir");
    let url = harness::sqlite_url(dir.path());
    let _sink = Sink::start(&url, &nats.url, &dir.path().join("sink.log"), &[]);
    let mut daemon = Command::new(harness::bin("ntpscope-capture"))
        .args(["--daemon", "--output", "nats", "--nats-url", &nats.url, "--agent-id", "lab-agent", "--status-interval", "0.5"])
        .env("NTPSCOPE_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("agent.log")).expect("log"))
        .spawn()
        .expect("agent");
    let db = open(&url).await;
    ntpscope_api::open_database_waiting(&url, Duration::from_secs(30)).await.expect("the sink creates the schema");
    let cli = api(&url, &nats.url).await;
    let iface = lab.server_if.clone();
    let listed = wait_until(Duration::from_secs(30), || {
        let (cli, iface) = (&cli, iface.clone());
        async move {
            let (s, b) = get(cli, "/api/ntp/interfaces").await;
            s == 200
                && b["interfaces"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|i| i["agent"] == "lab-agent" && i["name"] == iface.as_str() && i["capturing"] == false))
        }
    })
    .await;
    assert!(listed, "{:?}", get(&cli, "/api/ntp/interfaces").await);
    // Started as root, the daemon runs as an unprivileged user; the start below still works.
    only_the_opener_keeps_net_raw(daemon.id());
    let start = format!("/api/ntp/interfaces/{iface}/start");
    let stop = format!("/api/ntp/interfaces/{iface}/stop");
    let body = serde_json::json!({"port": 123, "timeout": 1.0});
    assert_eq!(post(&cli, &start, &body, false).await.0, 401, "a token is needed");
    // A filter libpcap cannot compile is the request's fault, and the error names the field.
    let broken = serde_json::json!({"port": 123, "timeout": 1.0, "bpf": "udp port ((("});
    let (s, b) = post(&cli, &start, &broken, true).await;
    assert_eq!((s, b["error"]["field"].as_str()), (400, Some("bpf")), "{b}");
    // A filter of the operator's own replaces the default one.
    let filter = "udp port 123";
    let (s, b) = post(&cli, &start, &serde_json::json!({"port": 123, "timeout": 1.0, "bpf": filter}), true).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(
        (b["agent"].as_str(), b["interface"]["capturing"].as_bool(), b["interface"]["port"].as_u64(), b["interface"]["bpf"].as_str()),
        (Some("lab-agent"), Some(true), Some(123), Some(filter))
    );
    assert_eq!(post(&cli, &start, &body, true).await.0, 409, "already capturing");
    assert_eq!(post(&cli, "/api/ntp/interfaces/nosuch0/start", &body, true).await.0, 404);
    let other = serde_json::json!({"port": 123, "agent": "no-such-agent"});
    assert_eq!(post(&cli, &start, &other, true).await.0, 404, "unknown agent");
    for server in [lab.server_v4.to_string(), lab.server_v6.to_string()] {
        assert!(lab.ntpdig(&server, 2).expect("ntpdig").status.success());
    }
    assert!(lab.chrony_client(&lab.server_v4.to_string()).expect("chronyd -Q").status.success());
    let path = format!("/api/ntp/history/clients?interface_name={iface}");
    let seen = wait_until(Duration::from_secs(30), || async { get(&cli, &path).await.1["total"].as_u64() == Some(3) }).await;
    assert!(seen, "{:?}", get(&cli, &path).await);
    let (_, b) = get(&cli, &path).await;
    let ips: Vec<&str> = b["clients"].as_array().expect("clients").iter().filter_map(|c| c["client_ip"].as_str()).collect();
    for ip in [lab.client_v4.to_string(), lab.client2_v4.to_string(), lab.client_v6.to_string()] {
        assert!(ips.contains(&ip.as_str()), "{ip} missing from {ips:?}");
    }
    let (s, b) = post(&cli, &stop, &serde_json::json!({}), true).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["interface"]["capturing"], false);
    assert_eq!(post(&cli, &stop, &serde_json::json!({}), true).await.0, 409, "not capturing");
    assert_eq!(post(&cli, "/api/ntp/interfaces/nosuch0/stop", &serde_json::json!({}), true).await.0, 404, "no such interface");

    // A second agent on the same host: without `agent`, a request goes to the agent that has
    // captured on the interface; on one that both hosts have and neither captured, it is
    // ambiguous.
    let mut second = harness::KillOnDrop(
        Command::new(harness::bin("ntpscope-capture"))
            .args(["--daemon", "--output", "nats", "--nats-url", &nats.url, "--agent-id", "second-agent", "--status-interval", "0.5"])
            .env("NTPSCOPE_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("second agent"),
    );
    let both = wait_until(Duration::from_secs(30), || async {
        get(&cli, "/api/ntp/interfaces").await.1["agents_online"].as_array().is_some_and(|a| a.len() == 2)
    })
    .await;
    assert!(both, "{:?}", get(&cli, "/api/ntp/interfaces").await);
    let (s, b) = post(&cli, "/api/ntp/interfaces/lo/start", &body, true).await;
    assert_eq!(s, 400, "{b}");
    assert!(b["error"]["message"].as_str().is_some_and(|m| m.contains("second-agent") && m.contains("lab-agent")), "{b}");
    let (s, b) = post(&cli, &start, &body, true).await;
    assert_eq!((s, b["agent"].as_str()), (200, Some("lab-agent")), "{b}");
    let picked = wait_until(Duration::from_secs(10), || async {
        get(&cli, "/api/ntp/history/service/statistics").await.1["agents"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x["agent"] == "lab-agent" && x["interfaces"].as_array().is_some_and(|i| !i.is_empty())))
    })
    .await;
    assert!(picked, "lab-agent never reported its capture");
    let (s, b) = post(&cli, &stop, &serde_json::json!({}), true).await;
    assert_eq!((s, b["agent"].as_str()), (200, Some("lab-agent")), "{b}");
    let _ = Command::new("kill").args(["-TERM", &second.0.id().to_string()]).status();
    assert!(second.0.wait().expect("second agent exit").success());
    let _ = Command::new("kill").args(["-TERM", &daemon.id().to_string()]).status();
    assert!(daemon.wait().expect("agent exit").success());
    drop(db);
}

/// `ntpscope-migrate` creates a database with the sink's page size, as the sink does.
#[test]
fn the_migrate_cli_creates_databases_with_the_sinks_page_size() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ntp.db");
    let url = format!("sqlite://{}?mode=rwc", path.display());
    let migrated = Command::new(harness::bin("ntpscope-migrate")).args(["--database-url", &url, "up"]).output().expect("migrate");
    assert!(migrated.status.success(), "{}", String::from_utf8_lossy(&migrated.stderr));
    let size = Command::new("sqlite3").arg(&path).arg("PRAGMA page_size").output().expect("sqlite3");
    assert_eq!(String::from_utf8_lossy(&size.stdout).trim(), migration::SQLITE_PAGE_SIZE.to_string());
}

/// A wrong token is logged as rejected, with the path and the peer but never the token; neither
/// the wrong one nor the configured one appears in the log or in `--print-config`.
#[test]
fn auth_failures_are_logged_without_any_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("ntp.db").display());
    let migrated = Command::new(harness::bin("ntpscope-migrate")).args(["--database-url", &url, "up"]).output().expect("migrate");
    assert!(migrated.status.success(), "{}", String::from_utf8_lossy(&migrated.stderr));
    let (good, bad) = ("configured-token-7f3a9c1e55d2", "guessed-token-0b1d2e3f4a5b6c");
    let port = netlab::free_port().expect("port");
    let log = dir.path().join("api.log");
    let mut api = harness::KillOnDrop(
        Command::new(harness::bin("ntpscope-api"))
            .args(["--listen", &format!("127.0.0.1:{port}"), "--database-url", &url, "--protect-reads"])
            .env("NTPSCOPE_API_TOKENS", good)
            .env("NTPSCOPE_LOG", "debug")
            .env("NO_COLOR", "1")
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("api"),
    );
    let base = format!("http://127.0.0.1:{port}/api/ntp/history/clients");
    let status = |token: &str| {
        let out = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-H", &format!("Authorization: Bearer {token}"), &base])
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while status(good) != "200" {
        assert!(std::time::Instant::now() < deadline, "the API did not come up: {}", std::fs::read_to_string(&log).unwrap_or_default());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(status(bad), "403");
    std::thread::sleep(Duration::from_millis(300));
    let _ = Command::new("kill").args(["-TERM", &api.0.id().to_string()]).status();
    let _ = api.0.wait();
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(text.contains("Rejected an API token") && text.contains("/api/ntp/history/clients"), "{text}");
    assert!(!text.contains(good) && !text.contains(bad), "a token leaked into the log:\n{text}");
    let printed =
        Command::new(harness::bin("ntpscope-api")).arg("--print-config").env("NTPSCOPE_API_TOKENS", good).output().expect("print");
    let printed = String::from_utf8_lossy(&printed.stdout);
    assert!(!printed.contains(good), "{printed}");
}
