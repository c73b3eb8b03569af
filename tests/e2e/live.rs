//! A live capture cut off from NATS: what fits in the agent's buffer arrives after the outage;
//! the rest is dropped *and counted*, so every record the core produced is accounted for.
//!
//! Traffic is a synthetic capture (198.18.0.0/16 clients) replayed with tcpreplay from the
//! client namespace of a lab; the agent captures live on the server side of the lab's bridge.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use netlab::{Lab, NatsServer, pcapgen, require_tools};

use crate::harness::{self, Sink, open, stored_records, wait_until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_agent_cut_off_from_nats_keeps_what_fits_and_counts_the_rest() {
    require_tools(&["ip", "tcpreplay"]).expect("live test prerequisites");
    let lab = Lab::new().expect("lab");
    let pcap = lab.dir.path().join("traffic.pcap");
    let spec = pcapgen::Spec { requests: 100_000, clients: 20_000, clustered: true, spacing_ns: 1_000, ..pcapgen::Spec::default() };
    pcapgen::write(&pcap, &spec).expect("pcap");
    let mut nats = NatsServer::start().expect("nats-server");
    let mut agent = Command::new(harness::bin("ntpscope-capture"))
        .args(["-i", &lab.server_if, "--output", "nats", "--nats-url", &nats.url, "--agent-id", "live-cut"])
        .args(["--publish-buffer-mib", "1", "--batch-records", "100", "--summary", "json", "--timeout", "1"])
        .env("NTPSCOPE_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("agent");
    let (line_tx, line_rx) = std::sync::mpsc::channel::<String>();
    let stderr = agent.stderr.take().expect("stderr");
    std::thread::spawn(move || {
        use std::io::BufRead;
        for l in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = line_tx.send(l);
        }
    });
    let started = (0..200).any(|_| line_rx.recv_timeout(Duration::from_millis(100)).is_ok_and(|l| l.contains("Capture started")));
    assert!(started, "agent did not start");
    nats.kill();
    let replay = Lab::in_ns(&lab.client_ns, "tcpreplay").args(["-i", "eth0", "--topspeed", "-q"]).arg(&pcap).output().expect("tcpreplay");
    assert!(replay.status.success(), "tcpreplay: {}", String::from_utf8_lossy(&replay.stderr));
    // Let the capture finish pairing (timeout 1 s), then bring NATS back and let the buffer drain.
    tokio::time::sleep(Duration::from_secs(2)).await;
    nats.restart().expect("restart nats");
    tokio::time::sleep(Duration::from_secs(8)).await;
    let _ = Command::new("kill").args(["-INT", &agent.id().to_string()]).status();
    assert!(agent.wait().expect("agent exit").success());
    // The summary is the last JSON line; log lines may follow it as the runtime shuts down.
    let mut last = String::new();
    while let Ok(l) = line_rx.recv_timeout(Duration::from_secs(5)) {
        if l.starts_with('{') {
            last = l;
        }
    }
    let summary: serde_json::Value = serde_json::from_str(&last).expect("summary JSON");
    let totals = &summary["totals"];
    let produced = totals["answered"].as_u64().unwrap_or(0)
        + totals["unanswered"].as_u64().unwrap_or(0)
        + totals["observations"].as_u64().unwrap_or(0);
    let channel_dropped = summary["sources"][0]["records_dropped"].as_u64().unwrap_or(0);
    let publisher = &summary["publisher"];
    let acked = publisher["records_acked"].as_u64().unwrap_or(0);
    let publisher_dropped = publisher["records_dropped"].as_u64().unwrap_or(0);
    // Under load the kernel may drop some of tcpreplay's burst (pcap drops, counted too); what
    // matters is that far more arrived than the buffer and channel can hold (about 28 k records).
    assert!(produced >= 50_000, "the capture saw the traffic: {summary}");
    assert!(channel_dropped > 0, "a 1 MiB buffer cannot hold {produced} records: {summary}");
    assert!(acked > 0, "what fitted was delivered after the outage: {summary}");
    assert_eq!(acked + channel_dropped + publisher_dropped, produced, "every record is delivered or counted as dropped: {summary}");
    // And what was acknowledged is exactly what the store gets.
    let dir = tempfile::tempdir().expect("tempdir");
    let url = harness::sqlite_url(dir.path());
    let _sink = Sink::start(&url, &nats.url, &dir.path().join("sink.log"), &["--batch-size", "5000"]);
    let db = open(&url).await;
    let expected = i64::try_from(acked).unwrap_or(i64::MAX);
    assert!(wait_until(Duration::from_secs(60), || async { stored_records(&db).await == expected }).await);
}
