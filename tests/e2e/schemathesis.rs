//! schemathesis (PyPI) against the running API with the committed `openapi.yaml`: no 5xx, and
//! every response conforms to the contract (status codes, content types, headers, bodies).
//!
//! The whole stack (nats-server, sink, agents, API, schemathesis) runs inside a network namespace
//! this test creates, so the fuzzer's start/stop requests only ever touch that namespace's
//! interfaces. CI runs a bounded number of examples (`NTPSCOPE_SCHEMATHESIS_EXAMPLES`, default 15).

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use netlab::{NatsServer, require_tools};

use crate::harness::{self, fixture, wait_until};

struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn in_ns(ns: &str, bin: &Path) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]).arg(bin);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_errors_and_no_contract_violations() {
    require_tools(&["ip"]).expect("root and iproute2");
    let st = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.tools/venv/bin/schemathesis");
    assert!(st.is_file(), "schemathesis missing at {}: run scripts/install-deps.sh", st.display());
    let ns = Netns(format!("ntpscope-st{}", std::process::id()));
    assert!(Command::new("ip").args(["netns", "add", &ns.0]).status().expect("ip").success());
    let ip = |args: &[&str]| {
        let mut full = vec!["-n", ns.0.as_str()];
        full.extend_from_slice(args);
        assert!(Command::new("ip").args(&full).status().expect("ip").success(), "ip {args:?}");
    };
    ip(&["link", "set", "lo", "up"]);
    ip(&["link", "add", "ntpst0", "type", "veth", "peer", "name", "ntpst1"]);
    ip(&["link", "set", "ntpst0", "up"]);
    ip(&["link", "set", "ntpst1", "up"]);
    let nats = NatsServer::start_in_netns(&ns.0).expect("nats-server in the namespace");
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("ntp_clients.db");
    let log = |name: &str| std::fs::File::create(dir.path().join(name)).expect("log");
    let mut procs = Procs(Vec::new());
    procs.0.push(
        in_ns(&ns.0, &harness::bin("ntpscope-sink"))
            .args(["--db-path", db.to_str().expect("path"), "--batch-interval", "0.2", "--status-interval", "0.5"])
            .env("NTPSCOPE_NATS_URL", &nats.url)
            .stderr(log("sink.log"))
            .spawn()
            .expect("sink"),
    );
    // Data to read: a fixture replayed through the bus.
    let replay = in_ns(&ns.0, &harness::bin("ntpscope-capture"))
        .args(["-r", fixture("zeek-ntp2.pcap").to_str().expect("path"), "--output", "nats", "--agent-id", "st-replay"])
        .env("NTPSCOPE_NATS_URL", &nats.url)
        .env("NTPSCOPE_LOG", "warn")
        .output()
        .expect("replay");
    assert!(replay.status.success(), "{}", String::from_utf8_lossy(&replay.stderr));
    // An agent the capture-control endpoints can talk to (it sees only lo and a veth pair).
    procs.0.push(
        in_ns(&ns.0, &harness::bin("ntpscope-capture"))
            .args(["--daemon", "--output", "nats", "--agent-id", "st-agent", "--status-interval", "1"])
            .env("NTPSCOPE_NATS_URL", &nats.url)
            .stderr(log("agent.log"))
            .spawn()
            .expect("agent"),
    );
    let port = 18_000 + (std::process::id() % 2_000) as u16;
    let token = "schemathesis-token-0123456789";
    procs.0.push(
        in_ns(&ns.0, &harness::bin("ntpscope-api"))
            .args(["--db-path", db.to_str().expect("path"), "--listen", &format!("127.0.0.1:{port}")])
            .env("NTPSCOPE_NATS_URL", &nats.url)
            .env("NTPSCOPE_API_TOKENS", token)
            .stderr(log("api.log"))
            .spawn()
            .expect("api"),
    );
    let url = format!("http://127.0.0.1:{port}");
    let ns_name = ns.0.clone();
    let up = wait_until(Duration::from_secs(30), || {
        let (ns_name, url) = (ns_name.clone(), url.clone());
        async move {
            Command::new("ip")
                .args(["netns", "exec", &ns_name, "curl", "-sf", "-o", "/dev/null"])
                .arg(format!("{url}/api/ntp/history/health"))
                .status()
                .is_ok_and(|s| s.success())
        }
    })
    .await;
    let api_log = || std::fs::read_to_string(dir.path().join("api.log")).unwrap_or_default();
    assert!(up, "the stack did not become healthy; api log: {}", api_log());
    let examples = std::env::var("NTPSCOPE_SCHEMATHESIS_EXAMPLES").unwrap_or_else(|_| "15".into());
    let spec = Path::new(env!("CARGO_MANIFEST_DIR")).join("../openapi.yaml");
    let out = in_ns(&ns.0, &st)
        .arg("run")
        .arg(&spec)
        .args(["--url", &url, "--max-examples", &examples, "--workers", "1", "--phases", "coverage,fuzzing"])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance",
        ])
        .args(["-H", &format!("Authorization: Bearer {token}"), "--no-color"])
        .env("SCHEMATHESIS_HOOKS", "")
        .stdin(Stdio::null())
        .output()
        .expect("schemathesis");
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "schemathesis found problems:\n{text}\napi log:\n{}", api_log());
    // The summary, for the record (docs/reliability.md quotes the large-budget run).
    let tail: Vec<&str> = text.lines().rev().take(30).collect();
    eprintln!("schemathesis, {examples} examples per operation:\n{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
    drop(nats);
}
