//! Capture throughput and memory benchmark (a bench binary, not a timed test).
//!
//! ```text
//! cargo bench -p ntpscope-capture --bench throughput            # everything, ~10 min
//! cargo bench -p ntpscope-capture --bench throughput -- --quick # skip the slow reference tools
//! ```
//!
//! 1. Generates two synthetic captures under `target/bench-data/` (kept between runs):
//!    `spread.pcap`: 1 M request/response pairs (2 M packets) from 200 k clients spread over the
//!    IPv4 space; `clustered.pcap`: the same with every client inside 198.18.0.0/16 (the tcpdump
//!    address-cache pathology). 94-byte frames, 20 µs turnaround, 100 µs between pairs.
//! 2. Measures the agent's hot loop on one core: libpcap reads the file, `capture-proto` decodes,
//!    parses and pairs every frame and builds the session records (median of 5 runs).
//! 3. Runs the agent binary end to end on the same file (`--output none`), and the reference
//!    tools in the same run: `tshark -r FILE -T fields -e ntp.xmt` and `tcpdump -vnr FILE`.
//! 4. Memory: 1 M requests left pending, pairing heap and process RSS growth.
#![allow(clippy::disallowed_methods)] // a benchmark measures wall time

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use capture_proto::{
    Analyzer, AnalyzerConfig,
    frame::LinkType,
    pairing::{PairingConfig, slot_bytes},
};
use netlab::pcapgen::{self, frame, ntp_packet};
use ntp_wire::time::unix_ns_to_ntp;

const PAIRS: u32 = 1_000_000;
const CLIENTS: u32 = 200_000;
const T0: i64 = 1_767_225_600_000_000_000; // 2026-01-01T00:00:00Z, as pcapgen's default

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // `cargo bench` passes `--bench`; ignore it.
    let quick = args.iter().any(|a| a == "--quick");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-data");
    std::fs::create_dir_all(&dir).expect("bench data dir");
    println!("# ntpscope capture benchmark");
    println!("machine: {} cores, {}", num_cpus(), cpu_model());
    println!("pending-request slot: {} bytes", slot_bytes());
    for (name, clustered) in [("spread", false), ("clustered", true)] {
        let path = dir.join(format!("{name}.pcap"));
        if !path.exists() {
            generate(&path, clustered).expect("generate capture");
        }
        let size = std::fs::metadata(&path).map_or(0, |m| m.len());
        println!("\n## {name}.pcap: {} packets, {CLIENTS} clients, {:.1} MB", 2 * PAIRS, size as f64 / 1e6);
        // This VM has noisy neighbours: report the best run (the code's own cost) and the median.
        let mut runs: Vec<(f64, u64)> = (0..9).map(|_| core_loop(&path)).collect();
        runs.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (best, sessions) = runs[0];
        let secs = runs[4].0;
        println!(
            "core loop (libpcap read + decode + parse + pair + records), 1 core, 9 runs: best {:.3} s = {:.2} M packets/s ({:.2} M sessions/s), median {:.3} s = {:.2} M packets/s; {} sessions; runs {:?}",
            best,
            f64::from(2 * PAIRS) / best / 1e6,
            sessions as f64 / best / 1e6,
            secs,
            f64::from(2 * PAIRS) / secs / 1e6,
            sessions,
            runs.iter().map(|r| format!("{:.3}", r.0)).collect::<Vec<_>>()
        );
        let agent = timed(Command::new(agent_bin()).args(["-r"]).arg(&path).args(["--output", "none", "--summary", "none"]));
        println!(
            "agent binary end to end (`ntpscope-capture -r FILE --output none`): {:.3} s = {:.2} M packets/s",
            agent,
            f64::from(2 * PAIRS) / agent / 1e6
        );
        if quick {
            continue;
        }
        let tshark = timed(Command::new("tshark").args(["-n", "-r"]).arg(&path).args(["-T", "fields", "-e", "ntp.xmt"]));
        let tcpdump = timed(Command::new("tcpdump").args(["-vnr"]).arg(&path));
        println!(
            "tshark -r FILE -T fields -e ntp.xmt: {:.2} s = {:.0} k packets/s; ntpscope core is {:.0}x faster",
            tshark,
            f64::from(2 * PAIRS) / tshark / 1e3,
            tshark / secs
        );
        println!(
            "tcpdump -vnr FILE: {:.2} s = {:.0} k packets/s; ntpscope core is {:.0}x faster",
            tcpdump,
            f64::from(2 * PAIRS) / tcpdump / 1e3,
            tcpdump / secs
        );
    }
    memory();
}

fn agent_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("bench path");
    // target/release/deps/throughput-xxxx → target/release/ntpscope-capture
    exe.parent().and_then(Path::parent).map(|d| d.join("ntpscope-capture")).expect("target dir")
}

fn timed(cmd: &mut Command) -> f64 {
    let start = Instant::now();
    let status = cmd.stdout(Stdio::null()).stderr(Stdio::null()).status();
    let secs = start.elapsed().as_secs_f64();
    match status {
        Ok(s) if s.success() => secs,
        other => {
            println!("  ({cmd:?} failed: {other:?})");
            f64::NAN
        }
    }
}

fn core_loop(path: &Path) -> (f64, u64) {
    let start = Instant::now();
    let mut cap = pcap::Capture::from_file_with_precision(path, pcap::Precision::Nano).expect("open");
    let link = LinkType::from_dlt(cap.get_datalink().0).expect("link");
    let mut analyzer = Analyzer::new(link, AnalyzerConfig::default());
    let mut out = Vec::with_capacity(4096);
    let mut sessions = 0u64;
    while let Ok(p) = cap.next_packet() {
        let ts = p.header.ts;
        analyzer.handle_frame(ts.tv_sec * 1_000_000_000 + ts.tv_usec, p.data, &mut out);
        if out.len() >= 4096 {
            sessions += out.len() as u64;
            out.clear();
        }
    }
    sessions += out.len() as u64;
    let secs = start.elapsed().as_secs_f64();
    std::hint::black_box(&out);
    (secs, sessions)
}

/// Writes the standard capture (1 M pairs, 200 k clients).
fn generate(path: &Path, clustered: bool) -> std::io::Result<()> {
    let spec = pcapgen::Spec { requests: PAIRS, clients: CLIENTS, clustered, ..pcapgen::Spec::default() };
    pcapgen::write(path, &spec).map(|_| ())
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()))
        .map_or(0, |pages| pages * 4096)
}

/// 1 M pending requests (no responses, long timeout): what the pairing table costs.
fn memory() {
    let n: u32 = 1_000_000;
    let cfg = AnalyzerConfig {
        server_port: 123,
        pairing: PairingConfig { timeout_ns: 3_600_000_000_000, max_outstanding: n as usize, ..PairingConfig::default() },
    };
    let before = rss_bytes();
    let mut analyzer = Analyzer::new(LinkType::Ethernet, cfg);
    let mut out = Vec::new();
    let start = Instant::now();
    for i in 0..n {
        let t = T0 + i64::from(i) * 1_000;
        let ip = i.wrapping_mul(2_654_435_761).to_be_bytes();
        let f = frame(ip, [198, 18, 255, 1], 1024 + (i % 60_000) as u16, 123, &ntp_packet(3, 0, 0, unix_ns_to_ntp(t)));
        analyzer.handle_frame(t, &f, &mut out);
    }
    let elapsed = start.elapsed();
    let after = rss_bytes();
    let c = analyzer.counters();
    println!("\n## memory at 1 M outstanding requests");
    println!(
        "pending {}, evicted {}; pairing heap {:.1} MiB; process RSS grew {:.1} MiB (limit 128 MiB); inserted in {:.2} s",
        c.pending,
        c.evicted,
        analyzer.pairer().heap_bytes() as f64 / 1_048_576.0,
        after.saturating_sub(before) as f64 / 1_048_576.0,
        elapsed.as_secs_f64()
    );
    std::hint::black_box(Duration::ZERO);
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string()))
        .unwrap_or_default()
}
