//! Live capture against real NTP peers: chronyd as the server, ntpdig (IPv4 and IPv6) and
//! `chronyd -Q` as clients, in network namespaces this test creates. The agent captures on the
//! root-side veth of the server; `tcpdump` on the same veth is the independent witness of how
//! many requests and responses crossed it.
//!
//! Needs root and chronyd, ntpdig, tcpdump, ip (CI installs them; the test fails, never skips,
//! when they are missing).

use std::{
    collections::HashMap,
    process::{Command, Stdio},
    time::Duration,
};

use netlab::{Lab, require_tools};
use serde_json::Value;

/// Counts `tcpdump -nr` lines per client address: (requests, responses).
fn witness_counts(lines: &[String]) -> HashMap<String, (u32, u32)> {
    let mut counts: HashMap<String, (u32, u32)> = HashMap::new();
    for l in lines {
        // "12:00:00.000 IP 198.18.7.2.40000 > 198.18.7.1.123: NTPv4, Client, length 48"
        let Some((_, rest)) = l.split_once(" IP ").or_else(|| l.split_once(" IP6 ")) else { continue };
        let mut parts = rest.split_whitespace();
        let (Some(src), Some(_), Some(dst)) = (parts.next(), parts.next(), parts.next()) else { continue };
        let host = |ep: &str| ep.trim_end_matches(':').rsplit_once('.').map(|(h, _)| h.to_string()).unwrap_or_default();
        if l.contains(", Client,") {
            counts.entry(host(src)).or_default().0 += 1;
        } else if l.contains(", Server,") {
            counts.entry(host(dst)).or_default().1 += 1;
        }
    }
    counts
}

/// Starts the agent on both root-side veths of `lab`, records to `out_path`; returns it once it
/// captures, with a receiver of its JSON summary (sent when its stderr closes).
fn start_agent(lab: &Lab, out_path: &std::path::Path) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    let mut agent = Command::new(env!("CARGO_BIN_EXE_ntpscope-capture"))
        // Both root-side veths: the server's (checked against the witness) and the clients' (the
        // same conversations seen one bridge hop earlier), on one agent.
        .args(["-i", &lab.server_if, "-i", &lab.client_if, "--summary", "json", "--agent-id", "live", "--timeout", "1.0"])
        .env("NTPSCOPE_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(std::fs::File::create(out_path).expect("output file"))
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the agent");
    let stderr = agent.stderr.take().expect("agent stderr");
    let (summary_tx, summary_rx) = std::sync::mpsc::channel::<String>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        let mut last = String::new();
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("Capture started") {
                let _ = ready_tx.send(());
            }
            // The summary is the last JSON line; log lines may follow it at shutdown.
            if line.starts_with('{') {
                last = line;
            }
        }
        let _ = summary_tx.send(last);
    });
    ready_rx.recv_timeout(Duration::from_secs(10)).expect("agent did not start capturing");
    (agent, summary_rx)
}

#[test]
fn live_capture_pairs_real_chrony_and_ntpdig_traffic() {
    require_tools(&["ip", "chronyd", "ntpdig", "tcpdump"]).expect("live test prerequisites");
    let mut lab = Lab::new().expect("create the network lab");
    lab.start_chrony_server().expect("start chronyd");
    let witness = lab.witness(&lab.server_if, &lab.dir.path().join("witness.pcap")).expect("start tcpdump");
    let out_path = lab.dir.path().join("agent.jsonl");
    let (mut agent, summary_rx) = start_agent(&lab, &out_path);
    // Started as root, capturing as an unprivileged user with no capability left in any thread
    // (not a daemon: nothing will open another interface).
    let threads = netlab::procfs::thread_creds(agent.id()).expect("agent threads");
    assert!(threads.len() >= 2, "{threads:?}");
    for t in &threads {
        assert!(t.uids.iter().chain(&t.gids).all(|&id| id != 0) && !t.groups.contains(&0), "root kept: {t:?}");
        assert_eq!((t.cap_eff, t.cap_prm), (0, 0), "capability kept: {t:?}");
    }

    let server4 = lab.server_v4.to_string();
    let server6 = lab.server_v6.to_string();
    for server in [&server4, &server6] {
        let out = lab.ntpdig(server, 2).expect("ntpdig");
        assert!(out.status.success(), "ntpdig {server}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let out = lab.chrony_client(&server4).expect("chronyd -Q");
    assert!(out.status.success(), "chronyd -Q: {}", String::from_utf8_lossy(&out.stderr));
    // One request the server will not answer: stop it, ask again.
    lab.stop_chrony_server();
    let _ = lab.ntpdig(&server4, 1);
    // Timeout 1 s plus the idle tick, with margin.
    std::thread::sleep(Duration::from_millis(2_500));
    let _ = Command::new("kill").args(["-INT", &agent.id().to_string()]).status();
    let status = agent.wait().expect("agent exit");
    assert!(status.success(), "agent exited with {status}");
    let summary: Value = serde_json::from_str(&summary_rx.recv_timeout(Duration::from_secs(5)).expect("summary")).expect("summary is JSON");
    let witness = witness_counts(&witness.finish().expect("witness capture"));

    let lines: Vec<Value> =
        std::fs::read_to_string(&out_path).expect("agent output").lines().map(|l| serde_json::from_str(l).expect("JSON line")).collect();
    let on = |iface: &str, ip: &str, outcome: &str| -> Vec<&Value> {
        lines.iter().filter(|l| l["interface_name"] == iface && l["client_ip"] == ip && l["outcome"] == outcome).collect()
    };
    let by_client = |ip: &str, outcome: &str| on(&lab.server_if, ip, outcome);
    let (c4, c4b, c6) = (lab.client_v4.to_string(), lab.client2_v4.to_string(), lab.client_v6.to_string());
    for client in [&c4, &c4b, &c6] {
        let (requests, responses) = witness.get(client.as_str()).copied().unwrap_or_default();
        assert!(responses > 0, "witness saw no responses to {client}: {witness:?}");
        let answered = by_client(client, "answered");
        assert_eq!(answered.len() as u32, responses, "{client}: answered sessions vs responses on the wire");
        let unanswered = by_client(client, "unanswered");
        assert_eq!((answered.len() + unanswered.len()) as u32, requests, "{client}: every request is one session");
        for s in &answered {
            let processing = s["server_processing_time_seconds"].as_f64().expect("T3 - T2");
            assert!(processing > 0.0 && processing < 0.010, "{client}: implausible T3 - T2 {processing}");
            let turnaround = s["total_process_time_seconds"].as_f64().expect("turnaround");
            assert!(turnaround > 0.0 && turnaround < 0.5, "{client}: turnaround {turnaround}");
        }
    }
    // ntpdig puts the real time in T1: latency is reported. chronyd randomises T1: it is flagged.
    for s in by_client(&c4, "answered").iter().chain(&by_client(&c6, "answered")) {
        assert_eq!(s["t1_randomized"], false, "{s}");
        let latency = s["client_to_server_latency_seconds"].as_f64().expect("latency");
        assert!(latency.abs() < 0.5, "{s}");
    }
    let chrony = by_client(&c4b, "answered");
    assert!(chrony.len() >= 2, "chronyd -Q iburst sends several requests");
    for s in &chrony {
        assert_eq!(s["t1_randomized"], true, "{s}");
        assert!(s["client_to_server_latency_seconds"].is_null(), "{s}");
    }
    // The request sent after the server stopped.
    assert_eq!(by_client(&c4, "unanswered").len(), 1);
    assert!(by_client(&c4b, "unanswered").is_empty() && by_client(&c6, "unanswered").is_empty());
    // The clients' veth carried the same conversations.
    for client in [&c4, &c4b, &c6] {
        for outcome in ["answered", "unanswered"] {
            assert_eq!(
                on(&lab.client_if, client, outcome).len(),
                by_client(client, outcome).len(),
                "{client} {outcome} on {}",
                lab.client_if
            );
        }
    }
    let totals = &summary["totals"];
    let witness_responses: u32 = witness.values().map(|(_, r)| r).sum();
    assert_eq!(totals["answered"].as_u64(), Some(2 * u64::from(witness_responses)));
    assert_eq!(totals["unanswered"].as_u64(), Some(2));
    assert_eq!(totals["orphan_responses"].as_u64(), Some(0));
    let sources = summary["sources"].as_array().expect("sources");
    assert_eq!(sources.len(), 2, "{summary}");
    assert!(sources.iter().all(|s| s["pcap"]["dropped"].as_u64() == Some(0)), "{summary}");
}

/// Runs the agent as `nobody` with no capability (`setpriv`), as an operator who forgot them would.
fn as_nobody(args: &[&str]) -> std::process::Output {
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", "--"])
        .arg(env!("CARGO_BIN_EXE_ntpscope-capture"))
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .expect("setpriv")
}

#[test]
fn without_cap_net_raw_the_agent_says_what_it_needs_and_a_missing_user_stops_it() {
    require_tools(&["ip", "setpriv"]).expect("test prerequisites");
    let out = as_nobody(&["-i", "lo", "--summary", "none"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("no permission to capture on \"lo\"") && err.contains("CAP_NET_RAW"), "{err}");
    // A missing interface names the ones that exist.
    let out = Command::new(env!("CARGO_BIN_EXE_ntpscope-capture")).args(["-i", "nosuch0", "--summary", "none"]).output().expect("agent");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("nosuch0") && err.contains("lo"), "{err}");
    // As root, a --user that does not exist is refused before anything is captured.
    let out = Command::new(env!("CARGO_BIN_EXE_ntpscope-capture"))
        .args(["-i", "lo", "--summary", "none", "--user", "no-such-user-ntpscope"])
        .output()
        .expect("agent");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("cannot drop privileges") && err.contains("no-such-user-ntpscope"), "{err}");
}
