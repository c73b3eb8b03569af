//! A million malformed and hostile frames through a live agent: truncated NTP, lying IP and UDP
//! lengths, bad versions, broken extension fields, IPv4 and IPv6 fragments, huge mode 6/7
//! packets, random bytes on port 123 and non-UDP frames, with valid pairs mixed in. The agent
//! must not crash, must count every frame where the generator's own bookkeeping says it belongs
//! (never derived from the agent's code), and must keep its memory flat.
//!
//! tcpreplay sends from the client namespace of a lab; the agent captures on the root-side end
//! of the same veth, where a frame is seen before the bridge (whose netfilter hook drops bad IP
//! headers) touches it. A BPF filter on the generator's source MAC keeps the lab's own traffic
//! (IPv6 neighbour discovery) out of the counts and lets the non-UDP frames through, which the
//! default filter would leave in the kernel.
//!
//! Where the wire alone does not decide the counter (random bytes that are both too short and of
//! a bad version; a UDP length that claims more than the datagram holds), the check is on the
//! sum of the counters the frame may legitimately land in. Every check is exact when the kernel
//! dropped nothing; on a machine so busy that it did, the drops are reported and every count is
//! checked to within them (the frames seen plus the drops must still equal the frames sent).

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader},
    path::Path,
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use netlab::{
    Lab,
    pcapgen::{self, HOSTILE_SRC_MAC, HostileMix},
    require_tools,
};
use serde_json::Value;

use crate::harness::{self, KillOnDrop};

/// The hardening issue's number of frames.
const FRAMES: u64 = 1_000_000;
/// Any seed will do; a fixed one makes a failure reproducible.
const SEED: u64 = 0x6e74_7073_636f_7065;
/// Replay rate: a debug-build agent needs about a third of a core for it, so even a busy
/// two-core machine keeps up (10 s for the million frames).
const PPS: u32 = 100_000;
/// How much the resident set may grow from the first tenth of the replay to its last quarter.
const RSS_MARGIN_KIB: u64 = 8 * 1024;

/// Every frame lands in exactly one of these counters.
const FRAME_BUCKETS: [&str; 9] = [
    "frames_skipped.not_ip",
    "frames_skipped.not_udp",
    "frames_skipped.ip_fragment",
    "frames_skipped.truncated_frame",
    "frames_skipped.bad_headers",
    "frames_other_udp",
    "malformed.too_short",
    "malformed.bad_version",
    "ntp_packets",
];

/// Every accepted NTP packet has at most one body defect; `none` is the rest.
const DEFECT_BUCKETS: [&str; 6] = [
    "malformed.extension_overrun",
    "malformed.extension_bad_length",
    "malformed.trailing_bytes",
    "malformed.control_count_overrun",
    "malformed.private_items_overrun",
    "none",
];

const MODE_BUCKETS: [&str; 8] = [
    "ntp_by_mode.0",
    "ntp_by_mode.1",
    "ntp_by_mode.2",
    "ntp_by_mode.3",
    "ntp_by_mode.4",
    "ntp_by_mode.5",
    "ntp_by_mode.6",
    "ntp_by_mode.7",
];

/// What a partition of counters should hold: frames that belong to one counter for sure, and
/// groups of frames that may land in any of several.
#[derive(Debug, Default)]
struct Expect {
    sure: BTreeMap<&'static str, u64>,
    either: Vec<(&'static str, u64, Vec<&'static str>)>,
}

impl Expect {
    fn sure(mut self, bucket: &'static str, n: u64) -> Self {
        *self.sure.entry(bucket).or_default() += n;
        self
    }

    fn either(mut self, what: &'static str, n: u64, buckets: &[&'static str]) -> Self {
        self.either.push((what, n, buckets.to_vec()));
        self
    }

    /// Each counter holds at least its sure frames, at most those plus every group allowed in
    /// it, and the groups are all accounted for; all of it exactly when the kernel dropped
    /// nothing, and within `slack` (the frames it dropped) otherwise.
    fn check(&self, name: &str, buckets: &[&'static str], got: &BTreeMap<&'static str, u64>, slack: u64) {
        let mut excess_total = 0i64;
        for b in buckets {
            let (g, sure) = (got.get(b).copied().unwrap_or(0), self.sure.get(b).copied().unwrap_or(0));
            let room: u64 = self.either.iter().filter(|(_, _, allowed)| allowed.contains(b)).map(|(_, n, _)| n).sum();
            assert!(
                g + slack >= sure && g <= sure + room + slack,
                "{name}: {b} = {g}, expected {sure} + at most {room} from {:?} (± {slack} dropped); got {got:?}",
                self.either
            );
            excess_total += g as i64 - sure as i64;
        }
        let groups: u64 = self.either.iter().map(|(_, n, _)| n).sum();
        assert!(
            excess_total.abs_diff(groups as i64) <= slack,
            "{name}: the ambiguous groups {:?} add up to {excess_total} (± {slack} dropped); got {got:?}",
            self.either
        );
    }
}

fn counter(summary: &Value, name: &str) -> u64 {
    summary["totals"][name].as_u64().unwrap_or_else(|| panic!("counter {name} missing: {summary}"))
}

fn counters(summary: &Value, names: &[&'static str]) -> BTreeMap<&'static str, u64> {
    names.iter().filter(|n| **n != "none").map(|n| (*n, counter(summary, n))).collect()
}

/// `VmRSS` and `RssAnon` of a process, KiB.
fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |key: &str| {
        status.lines().find(|l| l.starts_with(key)).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok()).unwrap_or(0)
    };
    (field("VmRSS:"), field("RssAnon:"))
}

/// CPU time of a process (all threads), clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    rest.split_whitespace().skip(11).take(2).filter_map(|v| v.parse::<u64>().ok()).sum()
}

/// Waits until the agent has drained its capture buffer: its CPU time stops growing.
fn wait_idle(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut last, mut quiet) = (cpu_ticks(pid), 0);
    while quiet < 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(300));
        let now = cpu_ticks(pid);
        quiet = if now <= last + 2 { quiet + 1 } else { 0 };
        last = now;
    }
}

/// The frame partition the generator predicts.
fn frame_expectations(m: &HostileMix) -> Expect {
    Expect::default()
        .sure("frames_skipped.not_ip", m.non_ip)
        .sure("frames_skipped.not_udp", m.tcp + m.icmp)
        .sure("frames_skipped.ip_fragment", m.fragments)
        .sure("frames_other_udp", m.other_udp)
        .sure("malformed.too_short", m.truncated)
        .sure("malformed.bad_version", m.bad_version)
        .sure("ntp_packets", 2 * m.valid_pairs + m.ext_overrun + m.ext_bad_length + m.control + m.private + m.random_accepted)
        .either(
            "random bytes that cannot be NTP (short or bad version)",
            m.random_rejected,
            &["malformed.too_short", "malformed.bad_version"],
        )
        .either(
            "lying IP/UDP lengths around a 48-byte request",
            m.bad_udp_length + m.bad_ip_length,
            &["frames_skipped.truncated_frame", "frames_skipped.bad_headers", "malformed.too_short", "ntp_packets"],
        )
}

/// Checks the agent's counters against the generator's bookkeeping. `dropped` is what the kernel
/// reported dropping: 0 makes every check exact; otherwise each may be off by that much.
fn check_counters(m: &HostileMix, s: &Value, dropped: u64) {
    let c = |name: &str| counter(s, name);
    assert_eq!(c("frames") + dropped, m.frames, "every frame sent was seen or reported dropped: {s}");
    frame_expectations(m).check("frames", &FRAME_BUCKETS, &counters(s, &FRAME_BUCKETS), dropped);

    // Lying-length frames accepted as NTP carry exactly the 48-byte request they were built
    // around (or less): mode 3, no body defect.
    let sure_ntp = 2 * m.valid_pairs + m.ext_overrun + m.ext_bad_length + m.control + m.private + m.random_accepted;
    let lying_accepted = c("ntp_packets").saturating_sub(sure_ntp);
    let mut defects = counters(s, &DEFECT_BUCKETS);
    let defective: u64 = defects.values().sum();
    defects.insert("none", c("ntp_packets").checked_sub(defective).expect("at most one body defect per accepted packet"));
    let clean = 2 * m.valid_pairs + (m.control - m.control_count_overrun) + (m.private - m.private_items_overrun) + lying_accepted;
    Expect::default()
        .sure("malformed.extension_overrun", m.ext_overrun)
        .sure("malformed.extension_bad_length", m.ext_bad_length)
        .sure("malformed.control_count_overrun", m.control_count_overrun)
        .sure("malformed.private_items_overrun", m.private_items_overrun)
        .sure("none", clean)
        .either("random bytes parsed as NTP", m.random_accepted, &DEFECT_BUCKETS)
        .check("body defects", &DEFECT_BUCKETS, &defects, dropped);
    Expect::default()
        .sure("ntp_by_mode.3", m.valid_pairs + m.ext_requests + lying_accepted)
        .sure("ntp_by_mode.4", m.valid_pairs + m.ext_overrun + m.ext_bad_length - m.ext_requests)
        .sure("ntp_by_mode.6", m.control)
        .sure("ntp_by_mode.7", m.private)
        .either("random bytes parsed as NTP", m.random_accepted, &MODE_BUCKETS)
        .check("modes", &MODE_BUCKETS, &counters(s, &MODE_BUCKETS), dropped);

    // Sessions: the valid pairs pair, under load, and nothing else does.
    let within = |got: u64, lo: u64, hi: u64| (lo.saturating_sub(dropped)..=hi).contains(&got);
    assert!(within(c("answered"), m.valid_pairs, m.valid_pairs), "every valid pair is one answered session: {s}");
    assert_eq!(c("pending"), 0, "--flush-pending reports every pending request: {s}");
    assert_eq!((c("evicted"), c("evicted_per_flow")), (0, 0), "no flow ever has 16 requests pending: {s}");
    assert_eq!(c("requests"), c("answered") + c("unanswered"), "every request is answered or unanswered: {s}");
    assert!(within(c("unanswered"), m.ext_requests, u64::MAX), "requests with broken extension fields are never answered: {s}");
    let ext_responses = m.ext_overrun + m.ext_bad_length - m.ext_requests;
    assert!(within(c("orphan_responses") + c("mismatched_responses"), ext_responses, u64::MAX), "responses to nothing: {s}");
    let mode67 = m.control + m.private;
    assert!(within(c("observations"), mode67, mode67 + m.random_accepted), "mode 6/7 packets are observations: {s}");
    assert!(within(c("monlist"), m.monlist, m.monlist + m.random_accepted), "monlist requests: {s}");
}

/// One RSS sample: seconds into the replay, `VmRSS` and `RssAnon` in KiB.
type Sample = (f64, u64, u64);

/// Starts the agent on `iface`, capturing only the generator's frames; returns it with its
/// stderr lines once it captures.
fn start_agent(iface: &str) -> (KillOnDrop, mpsc::Receiver<String>) {
    let mac = HOSTILE_SRC_MAC.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
    // A short pairing timeout lets the table of pending (never answered) hostile requests reach
    // its steady size within the first tenth of the replay, where the memory baseline is taken.
    // On an interface with offloads (a veth has them) libpcap gives every slot of its ring room
    // for a 64 KiB frame when the snap length allows one: 256 MiB would hold 4 k frames. The
    // generator's frames fit 1514 bytes, so with that snap length the same buffer holds about
    // 160 k of them, 1.6 s of replay, enough to ride out a busy machine.
    let mut agent = KillOnDrop(
        Command::new(harness::bin("ntpscope-capture"))
            .args(["-i", iface, "--bpf", &format!("ether src {mac}"), "--output", "none", "--summary", "json"])
            .args(["--flush-pending", "--timeout", "0.5", "--snaplen", "1514", "--buffer-mib", "256"])
            .args(["--no-progress", "--agent-id", "hostile"])
            .env("NTPSCOPE_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("agent"),
    );
    let (line_tx, line_rx) = mpsc::channel::<String>();
    let stderr = agent.0.stderr.take().expect("stderr");
    std::thread::spawn(move || {
        for l in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = line_tx.send(l);
        }
    });
    let started = (0..200).any(|_| line_rx.recv_timeout(Duration::from_millis(100)).is_ok_and(|l| l.contains("Capture started")));
    assert!(started, "agent did not start");
    (agent, line_rx)
}

/// Replays the capture from the client namespace at [`PPS`], sampling the agent's memory every
/// half second; returns the replay's duration and the samples.
fn replay(lab: &Lab, pcap: &Path, pid: u32) -> (f64, Vec<Sample>) {
    let log_path = lab.dir.path().join("tcpreplay.log");
    let log = std::fs::File::create(&log_path).expect("tcpreplay log");
    let start = Instant::now();
    let mut tcpreplay = KillOnDrop(
        Lab::in_ns(&lab.client_ns, "tcpreplay")
            .args(["-i", "eth0", "--pps", &PPS.to_string()])
            .arg(pcap)
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("tcpreplay"),
    );
    let mut samples = Vec::new();
    while tcpreplay.0.try_wait().expect("tcpreplay status").is_none() {
        let (rss, anon) = rss_kib(pid);
        samples.push((start.elapsed().as_secs_f64(), rss, anon));
        std::thread::sleep(Duration::from_millis(500));
    }
    let seconds = start.elapsed().as_secs_f64();
    let status = tcpreplay.0.wait().expect("tcpreplay status");
    let report = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(status.success(), "tcpreplay: {report}");
    let sent = report.lines().find_map(|l| l.trim().strip_prefix("Successful packets:")).and_then(|n| n.trim().parse::<u64>().ok());
    assert_eq!(sent, Some(FRAMES), "tcpreplay sent every frame: {report}");
    (seconds, samples)
}

/// SIGINT once the agent has drained its buffer; returns its JSON summary and the CPU time it
/// used, seconds.
fn stop_agent(mut agent: KillOnDrop, lines: &mpsc::Receiver<String>) -> (Value, f64) {
    let pid = agent.0.id();
    wait_idle(pid);
    // /proc reports USER_HZ ticks, 100 per second on every Linux.
    let cpu_s = cpu_ticks(pid) as f64 / 100.0;
    let _ = Command::new("kill").args(["-INT", &pid.to_string()]).status();
    let status = agent.0.wait().expect("agent exit");
    let mut last = String::new();
    while let Ok(l) = lines.recv_timeout(Duration::from_secs(5)) {
        if l.starts_with('{') {
            last = l;
        }
    }
    assert!(status.success(), "the agent exited with {status}: {last}");
    (serde_json::from_str(&last).expect("summary JSON"), cpu_s)
}

/// The resident set in the last quarter of the replay against the first tenth.
fn check_memory(samples: &[Sample], replay_s: f64) {
    let baseline = samples.iter().find(|s| s.0 >= replay_s * 0.1).copied().unwrap_or_default();
    let tail: Vec<_> = samples.iter().filter(|s| s.0 >= replay_s * 0.75).collect();
    let tail_max = tail.iter().map(|s| s.1).max().unwrap_or(0);
    let last = samples.last().copied().unwrap_or_default();
    eprintln!(
        "hostile RSS (KiB, {} samples): at 10 % {} (anon {}), last {} (anon {}), max of last quarter {tail_max} (anon {}), max {}",
        samples.len(),
        baseline.1,
        baseline.2,
        last.1,
        last.2,
        tail.iter().map(|s| s.2).max().unwrap_or(0),
        samples.iter().map(|s| s.1).max().unwrap_or(0),
    );
    assert!(!tail.is_empty() && baseline.1 > 0, "RSS samples: {samples:?}");
    assert!(tail_max <= baseline.1 + RSS_MARGIN_KIB, "memory grew by more than {RSS_MARGIN_KIB} KiB: {samples:?}");
}

#[test]
fn a_million_hostile_frames_are_counted_without_a_crash_or_growth() {
    require_tools(&["ip", "tcpreplay"]).expect("live test prerequisites");
    let lab = Lab::new().expect("lab");
    let pcap = lab.dir.path().join("hostile.pcap");
    let generated = Instant::now();
    let mix = pcapgen::write_hostile(&pcap, FRAMES, SEED).expect("hostile pcap");
    let generated = generated.elapsed().as_secs_f64();
    let (agent, lines) = start_agent(&lab.client_if);
    let (replay_s, samples) = replay(&lab, &pcap, agent.0.id());
    let (summary, cpu_s) = stop_agent(agent, &lines);

    let source = &summary["sources"][0];
    let pcap_stats = &source["pcap"];
    eprintln!(
        "hostile replay: {} frames ({} MB, written in {generated:.1} s) replayed in {replay_s:.1} s = {:.0} frames/s; \
         pcap received {} dropped {} if-dropped {}; agent CPU {cpu_s:.1} s",
        mix.frames,
        mix.bytes / 1_000_000,
        mix.frames as f64 / replay_s,
        pcap_stats["received"],
        pcap_stats["dropped"],
        pcap_stats["if_dropped"],
    );
    eprintln!("hostile mix: {mix:?}");
    eprintln!("agent totals: {}", summary["totals"]);
    check_memory(&samples, replay_s);
    let dropped = pcap_stats["dropped"].as_u64().unwrap_or(u64::MAX) + pcap_stats["if_dropped"].as_u64().unwrap_or(u64::MAX);
    if dropped > 0 {
        eprintln!("hostile: the kernel dropped {dropped} frames (a busy machine); the counts are checked modulo {dropped}");
    }
    check_counters(&mix, &summary, dropped);
}
