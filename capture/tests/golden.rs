//! Golden and black-box tests of the `ntpscope-capture` binary on the copied fixtures.
//!
//! `golden_outputs_match` compares the JSON lines and the counter totals of every fixture with
//! the committed `fixtures/<name>.jsonl` and `fixtures/<name>.summary.json`; run with
//! `UPDATE_EXPECT=1` to regenerate them after an intended change, and review the diff.
//! The other tests check facts about the fixtures that come from their origin (SOURCES.md and the
//! origin projects' expected output), not from ntpscope.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

struct Run {
    stdout: String,
    summary: Value,
    lines: Vec<Value>,
}

fn capture(args: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_ntpscope-capture"))
        .args(args)
        .args(["--agent-id", "golden", "--summary", "json"])
        .env("NTPSCOPE_LOG", "warn")
        .output()
        .expect("run ntpscope-capture");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{args:?} failed: {stderr}");
    let summary_line = stderr.lines().rev().find(|l| l.starts_with('{')).unwrap_or_default();
    let summary: Value = serde_json::from_str(summary_line).unwrap_or_else(|e| panic!("summary {summary_line:?}: {e}"));
    let stdout = String::from_utf8(out.stdout).expect("utf-8 output");
    let lines = stdout.lines().map(|l| serde_json::from_str(l).expect("JSON line")).collect();
    Run { stdout, summary, lines }
}

fn fixture(name: &str) -> Run {
    capture(&["-r", fixtures().join(name).to_str().expect("path")])
}

fn total(run: &Run, key: &str) -> u64 {
    run.summary["totals"][key].as_u64().unwrap_or_else(|| panic!("no counter {key}"))
}

fn sessions<'a>(run: &'a Run, outcome: &str) -> Vec<&'a Value> {
    run.lines.iter().filter(|l| l["record_type"] == "session" && l["outcome"] == outcome).collect()
}

#[test]
fn golden_outputs_match() {
    let update = std::env::var_os("UPDATE_EXPECT").is_some();
    let mut names: Vec<String> = std::fs::read_dir(fixtures())
        .expect("fixtures")
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|n| Path::new(n).extension().is_some_and(|e| e.eq_ignore_ascii_case("pcap") || e.eq_ignore_ascii_case("pcapng")))
        .collect();
    names.sort();
    assert!(names.len() >= 16, "fixtures missing: {names:?}");
    let mut mismatched = Vec::new();
    for name in &names {
        let run = fixture(name);
        let jsonl = fixtures().join(format!("{name}.jsonl"));
        let summary_path = fixtures().join(format!("{name}.summary.json"));
        let mut totals = run.summary["totals"].clone();
        if let Some(o) = totals.as_object_mut() {
            o.insert("records_written".into(), run.summary["records_written"].clone());
        }
        let totals = serde_json::to_string_pretty(&totals).expect("json") + "\n";
        if update {
            std::fs::write(&jsonl, &run.stdout).expect("write expected jsonl");
            std::fs::write(&summary_path, &totals).expect("write expected summary");
            continue;
        }
        let want = std::fs::read_to_string(&jsonl).unwrap_or_default();
        let want_totals = std::fs::read_to_string(&summary_path).unwrap_or_default();
        if want != run.stdout || want_totals != totals {
            mismatched.push(name.clone());
        }
    }
    assert!(
        mismatched.is_empty(),
        "output differs from the committed expectation for {mismatched:?}; if intended, rerun with UPDATE_EXPECT=1 and review the diff"
    );
}

#[test]
fn zeek_ntp_pairs_every_request_even_from_port_123() {
    // SOURCES.md: 15 v4 requests + 15 v4 responses and one v3 pair, client port 123 → 123.
    let run = fixture("zeek-ntp.pcap");
    let answered = sessions(&run, "answered");
    assert_eq!(answered.len(), 16);
    assert_eq!(total(&run, "unanswered") + total(&run, "pending") + total(&run, "orphan_responses"), 0);
    assert!(answered.iter().all(|s| s["client_ip"] == "192.168.43.118" && s["client_port"] == 123));
    assert_eq!(answered.iter().filter(|s| s["ntp_version"] == 3).count(), 1);
    // Zeek's ntp.log for this trace: the first server answered at stratum 4 with refid 105.237.207.28.
    assert_eq!(answered[0]["server_ip"], "80.211.52.109");
    assert_eq!(answered[0]["stratum"], 4);
    assert_eq!(answered[0]["reference_id"], "105.237.207.28");
    for s in &answered {
        let processing = s["server_processing_time_seconds"].as_f64().expect("processing time");
        assert!((0.0..0.01).contains(&processing), "{s}");
    }
}

#[test]
fn misordered_response_is_an_orphan_and_the_request_stays_pending() {
    // SOURCES.md: the response comes before its request.
    let run = fixture("zeek-misordered-ntp.pcap");
    assert_eq!(total(&run, "orphan_responses"), 1);
    assert_eq!(total(&run, "pending"), 1);
    assert!(sessions(&run, "answered").is_empty());
    let flushed = capture(&["-r", fixtures().join("zeek-misordered-ntp.pcap").to_str().expect("path"), "--flush-pending"]);
    assert_eq!(sessions(&flushed, "unanswered").len(), 1);
}

#[test]
fn requests_without_responses_expire_as_unanswered() {
    // SOURCES.md: 40 IPv6 requests with MD5 MACs, no responses.
    let run = capture(&["-r", fixtures().join("zeek-NTP-digest.pcap").to_str().expect("path"), "--flush-pending"]);
    let unanswered = sessions(&run, "unanswered");
    assert_eq!(unanswered.len(), 40);
    assert!(unanswered.iter().all(|s| s["request"]["mac"]["digest_len"] == 16));
    assert!(unanswered.iter().all(|s| s["client_ip"].as_str().is_some_and(|ip| ip.contains(':'))));
}

#[test]
fn kiss_codes_macs_and_nts_are_reported() {
    // SOURCES.md: tcpdump-ntp.pcap has a SHA-1 MAC, an MD5 MAC, and a crypto-NAK in a STEP kiss.
    let run = fixture("tcpdump-ntp.pcap");
    let answered = sessions(&run, "answered");
    assert_eq!(answered.len(), 4);
    let kod: Vec<_> = answered.iter().filter(|s| s["kiss_code"] == "STEP").collect();
    assert_eq!(kod.len(), 1);
    assert_eq!(kod[0]["response"]["mac"]["key_id"], 0);
    assert_eq!(kod[0]["response"]["mac"]["digest_len"], 0);
    let digests: Vec<u64> = answered.iter().filter_map(|s| s["request"]["mac"]["digest_len"].as_u64()).collect();
    assert!(digests.contains(&20) && digests.contains(&16), "{digests:?}");
    assert_eq!(total(&run, "kiss_of_death"), 1);
    // SOURCES.md: NTS unique id, cookie, placeholder and authenticator in tcpdump-ntp-time-ef.pcap.
    let run = fixture("tcpdump-ntp-time-ef.pcap");
    let s = &sessions(&run, "answered")[0];
    assert_eq!(s["nts"], true);
    let names: Vec<&str> = s["request"]["extensions"].as_array().expect("extensions").iter().filter_map(|e| e["name"].as_str()).collect();
    assert_eq!(names, ["unique_identifier", "nts_cookie", "nts_cookie_placeholder", "nts_authenticator"]);
}

#[test]
fn observations_cover_control_private_and_symmetric_modes() {
    // SOURCES.md: zeek-ntpmode67 has 6 mode-6 and 3 mode-7 requests, one of them MON_GETLIST_1.
    let run = fixture("zeek-ntpmode67.pcap");
    let obs: Vec<&Value> = run.lines.iter().filter(|l| l["record_type"] == "observation").collect();
    assert_eq!(obs.iter().filter(|o| o["mode"] == 6).count(), 6);
    assert_eq!(obs.iter().filter(|o| o["mode"] == 7).count(), 3);
    assert_eq!(obs.iter().filter(|o| o["private"]["monlist"] == true).count(), 1);
    assert_eq!(total(&run, "monlist"), 1);
    // Zeek's ntp_control.log: READSTAT and READVAR requests.
    let ops: Vec<&str> = obs.iter().filter_map(|o| o["control"]["opcode_name"].as_str()).collect();
    assert_eq!(ops.iter().filter(|o| **o == "readstat").count(), 2);
    assert_eq!(ops.iter().filter(|o| **o == "readvar").count(), 4);
    // SOURCES.md: NTP_sync is 15 symmetric-active and 15 symmetric-passive packets.
    let run = fixture("zeek-NTP_sync.pcap");
    assert_eq!(total(&run, "ntp_by_mode.1"), 15);
    assert_eq!(total(&run, "ntp_by_mode.2"), 15);
    assert_eq!(total(&run, "observations"), 30);
    assert_eq!(total(&run, "frames_skipped.not_udp") + total(&run, "frames_other_udp"), 2, "the two DNS frames");
}

#[test]
fn leap_second_traces_pair_across_the_leap() {
    // SOURCES.md: 224 v3 requests and 215 responses across the 2016-12-31 leap second.
    let run = capture(&["-r", fixtures().join("leapsecond-ntp_2P.pcap").to_str().expect("path"), "--flush-pending"]);
    assert_eq!(total(&run, "requests") + total(&run, "retransmits"), 224);
    assert_eq!(total(&run, "responses"), 215);
    let answered = sessions(&run, "answered");
    assert_eq!(answered.len() as u64 + total(&run, "orphan_responses") + total(&run, "mismatched_responses"), 215);
    assert!(answered.iter().any(|s| s["leap_indicator"] == 1));
    assert!(answered.iter().any(|s| s["leap_indicator"] == 0));
}

#[test]
fn malformed_trailer_is_counted_and_the_packet_kept() {
    let run = fixture("zeek-ntp-no-extensions-mac.pcap");
    assert_eq!(total(&run, "malformed.extension_overrun"), 1);
    assert_eq!(total(&run, "ntp_packets"), 1);
    // A lone mode 4 packet is an orphan response.
    assert_eq!(total(&run, "orphan_responses"), 1);
}

#[test]
fn clear_errors_for_bad_sources_and_flags() {
    let bin = env!("CARGO_BIN_EXE_ntpscope-capture");
    let run = |args: &[&str]| {
        let out = Command::new(bin).args(args).output().expect("run");
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (code, err) = run(&["-r", "/nonexistent/trace.pcap"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("cannot read /nonexistent/trace.pcap"), "{err}");
    let not_pcap = fixtures().join("ATTRIBUTION.md");
    let (code, err) = run(&["-r", not_pcap.to_str().expect("path")]);
    assert_eq!(code, Some(1));
    assert!(err.contains("is not a pcap or pcapng capture"), "{err}");
    let (code, err) = run(&["-i", "ntpscope-no-such0"]);
    assert_eq!(code, Some(1));
    assert!(err.contains(r#"interface "ntpscope-no-such0" not found (available: "#) && err.contains("lo"), "{err}");
    let (code, err) = run(&["-r", "x.pcap", "--timeout=0"]);
    assert_eq!(code, Some(78));
    assert!(err.contains("--timeout"), "{err}");
    for bad in ["0", "-1", "NaN", "inf"] {
        let (code, err) = run(&["-r", "x.pcap", &format!("--replay-speed={bad}")]);
        assert_eq!(code, Some(78), "--replay-speed={bad}: {err}");
        assert!(err.contains("--replay-speed"), "{err}");
    }
}

/// `--replay-speed` reads a file at its capture pace times the factor: `tcpdump-ntp-control.pcap`
/// spans 14.94 s (first to last packet, `capinfos`), so at 10× its last packet cannot be read
/// before 1.494 s, less the millisecond a paced packet may be read early. The records are the
/// same either way.
#[test]
#[allow(clippy::disallowed_methods)] // the test measures wall time
fn replay_speed_paces_a_file_by_its_timestamps() {
    let path = fixtures().join("tcpdump-ntp-control.pcap");
    let path = path.to_str().expect("path");
    let started = std::time::Instant::now();
    let flat = capture(&["-r", path]);
    let flat_time = started.elapsed();
    let started = std::time::Instant::now();
    let paced = capture(&["-r", path, "--replay-speed", "10"]);
    let paced_time = started.elapsed();
    assert!(paced_time.as_secs_f64() >= 1.493, "paced replay took {paced_time:?}");
    assert!(paced_time.as_secs_f64() < 14.9, "the factor was not applied: {paced_time:?}");
    assert!(flat_time < paced_time, "flat out {flat_time:?}, paced {paced_time:?}");
    assert_eq!(paced.stdout, flat.stdout);
    assert!(!flat.lines.is_empty());

    // The file's first two packets are 9.4 s (0.94 s at 10×) before the next: their records are
    // handed over before that wait, not when the file ends.
    let mut child = Command::new(env!("CARGO_BIN_EXE_ntpscope-capture"))
        .args(["-r", path, "--replay-speed", "10", "--agent-id", "golden", "--summary", "none"])
        .env("NTPSCOPE_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run ntpscope-capture");
    let started = std::time::Instant::now();
    let mut stdout = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    let mut first = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut first).expect("first line");
    let first_at = started.elapsed();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).expect("the rest");
    assert!(child.wait().expect("wait").success());
    let end_at = started.elapsed();
    assert_eq!(first + &rest, flat.stdout);
    assert!(first_at.as_secs_f64() + 0.5 < end_at.as_secs_f64(), "first record after {first_at:?}, end after {end_at:?}");
}

/// `fixtures/derived/` holds the same packets as `zeek-ntp2.pcap` rewritten by Wireshark's
/// and tcpreplay's tools (`editcap -F pcapng`, `tcprewrite --portmap=123:4123`): the agent must
/// read pcapng like pcap, and find NTP on whatever `--port` says and only there.
#[test]
fn pcapng_and_a_moved_server_port_give_the_same_sessions() {
    let path = |p: &str| fixtures().join(p).to_str().expect("path").to_string();
    let strip = |run: &Run, port: u64| -> Vec<Value> {
        run.lines
            .iter()
            .map(|l| {
                let mut l = l.clone();
                let obj = l.as_object_mut().expect("record");
                obj.remove("session_id"); // ids hash the flow, ports included
                obj.remove("observation_id");
                for key in ["client_port", "server_port"] {
                    if obj.get(key).and_then(Value::as_u64) == Some(port) {
                        obj.insert(key.into(), 123.into());
                    }
                }
                l
            })
            .collect()
    };
    let base = capture(&["-r", &path("zeek-ntp2.pcap"), "--interface-name", "x"]);
    assert!(sessions(&base, "answered").len() >= 10, "the fixture has answered sessions");
    let ng = capture(&["-r", &path("derived/zeek-ntp2.pcapng"), "--interface-name", "x"]);
    assert_eq!(ng.stdout, base.stdout, "pcapng and pcap of the same packets");
    let moved = path("derived/zeek-ntp2-port4123.pcap");
    let on_4123 = capture(&["-r", &moved, "--interface-name", "x", "--port", "4123"]);
    assert_eq!(strip(&on_4123, 4123), strip(&base, 123));
    let on_default = capture(&["-r", &moved, "--interface-name", "x"]);
    assert!(on_default.lines.is_empty(), "{}", on_default.stdout);
    assert_eq!(total(&on_default, "ntp_packets"), 0);
    assert_eq!(total(&on_default, "frames_other_udp"), total(&base, "frames"));
}
