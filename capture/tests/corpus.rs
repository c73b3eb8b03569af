//! Conformance: every NTP packet of every capture in `../shared/corpus/pcaps` decodes to the
//! same fields Wireshark 4.0.17 printed in `../shared/corpus/tshark-fields/*.tsv`.
//!
//! The corpus is read in place (some of it is GPL/LGPL and is not copied into the project; CI has
//! it at the same relative path). Timestamps are compared as raw 32.32 values: tshark's dates are
//! converted back to NTP fixed point, with a tolerance of the nanosecond rounding tshark applies,
//! so the comparison does not depend on which NTP era either side displays.
//!
//! Where tshark and another tool disagree, ntpscope's choice is asserted explicitly:
//! - `zeek-ntp-no-extensions-mac.pcap`: the 25 bytes after the header are neither extension
//!   fields nor a MAC. Wireshark reads a key id and a 21-byte "MAC"; Zeek reports a protocol
//!   violation. ntpscope keeps the header (it agrees with Wireshark on every header field), reports
//!   no MAC, and flags the body as malformed (`extension_overrun`), as Zeek does.
//! - `scapy-ntp-uts-vectors.pcap` frame 4: 36 zero bytes after the header. Wireshark reads key
//!   id 0 and a 32-byte digest; RFC 7822 makes any remainder over 24 bytes an extension field,
//!   and one of type 0 and length 0 is invalid, so ntpscope flags `extension_bad_length`.
//! - `scapy-ntp-uts-vectors.pcap` frame 38: a mode 7 `REQ_SYS_STATS` response of 52 bytes
//!   (1 item of 44 bytes). Wireshark marks it malformed; scapy parses it. The item fits exactly,
//!   so ntpscope parses it without a defect, as scapy does.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use capture_proto::{
    frame::{self, LinkType},
    ntp::{self, Body, BodyDefect},
};
use ntp_wire::time::unix_ns_to_ntp;

fn corpus_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus");
    assert!(
        dir.join("pcaps").is_dir(),
        "the conformance corpus is missing at {} (it sits beside the checkout as ../shared/corpus)",
        dir.display()
    );
    dir
}

type Row = HashMap<String, String>;

fn read_tsv(path: &Path) -> HashMap<u64, Row> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().expect("header line").split('\t').collect();
    let mut rows = HashMap::new();
    for line in lines {
        let row: Row =
            header.iter().zip(line.split('\t')).filter(|(_, v)| !v.is_empty()).map(|(k, v)| ((*k).to_string(), v.to_string())).collect();
        let n: u64 = row["frame.number"].parse().expect("frame number");
        rows.insert(n, row);
    }
    rows
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Parses tshark's "Nov 16, 2015 22:33:35.307509582 UTC" into an NTP 32.32 value.
fn tshark_date_to_ntp(s: &str) -> u64 {
    let parts: Vec<&str> = s.split_whitespace().collect();
    assert_eq!(parts.len(), 5, "unexpected date {s:?}");
    let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let month = months.iter().position(|m| *m == parts[0]).expect("month") + 1;
    let day: u32 = parts[1].trim_end_matches(',').parse().expect("day");
    let text = format!("{}-{month:02}-{day:02}T{}Z", parts[2], parts[3]);
    let ns = ntp_wire::time::parse_rfc3339(&text).unwrap_or_else(|| panic!("date {text}"));
    unix_ns_to_ntp(ns)
}

fn assert_ts(file: &str, frame: u64, field: &str, row: &Row, ours: u64) {
    let Some(theirs) = row.get(field) else {
        panic!("{file} frame {frame}: tshark has no {field}");
    };
    if theirs == "NULL" {
        assert_eq!(ours, 0, "{file} frame {frame} {field}");
        return;
    }
    let expected = tshark_date_to_ntp(theirs);
    let (hi_a, hi_b) = (ours >> 32, expected >> 32);
    let (lo_a, lo_b) = ((ours & 0xffff_ffff) as i64, (expected & 0xffff_ffff) as i64);
    // tshark rounds to the nanosecond; one nanosecond is 4.3 units of 2^-32 s.
    let close = (hi_a == hi_b && (lo_a - lo_b).abs() <= 5)
        || (hi_a.wrapping_add(1) & 0xffff_ffff == hi_b && lo_a - lo_b > 0xffff_fff0)
        || (hi_b.wrapping_add(1) & 0xffff_ffff == hi_a && lo_b - lo_a > 0xffff_fff0);
    assert!(close, "{file} frame {frame} {field}: ours {ours:016x}, tshark {theirs} = {expected:016x}");
}

/// The first value of a field (tshark joins repeated occurrences with commas: a mode 6 READSTAT
/// response also carries the status words of its associations).
fn num(row: &Row, k: &str) -> u64 {
    let v = row[k].split(',').next().unwrap_or_default();
    if let Some(h) = v.strip_prefix("0x") {
        u64::from_str_radix(h, 16).unwrap_or_else(|_| panic!("{k}={v}"))
    } else {
        v.parse().unwrap_or_else(|_| panic!("{k}={v}"))
    }
}

fn check_file(dir: &Path, pcap_name: &str) -> usize {
    let stem = pcap_name.rsplit_once('.').map_or(pcap_name, |(s, _)| s);
    let rows = read_tsv(&dir.join("tshark-fields").join(format!("{stem}.tsv")));
    let mut cap = pcap::Capture::from_file_with_precision(dir.join("pcaps").join(pcap_name), pcap::Precision::Nano).expect("open capture");
    let link = LinkType::from_dlt(cap.get_datalink().0).expect("supported link type");
    let mut frame_no = 0u64;
    let mut ntp_frames = 0usize;
    while let Ok(pkt) = cap.next_packet() {
        frame_no += 1;
        let decoded = frame::decode(link, pkt.data).ok().filter(|d| d.src_port == 123 || d.dst_port == 123);
        let Some(row) = rows.get(&frame_no) else {
            if let Some(d) = decoded {
                assert!(ntp::parse(d.payload).is_err(), "{pcap_name} frame {frame_no}: we see NTP, tshark does not");
            }
            continue;
        };
        ntp_frames += 1;
        let d = decoded.unwrap_or_else(|| panic!("{pcap_name} frame {frame_no}: no UDP/123 datagram decoded"));
        assert_eq!(hex(d.payload), row["udp.payload"], "{pcap_name} frame {frame_no}: payload");
        assert_eq!(d.src_port.to_string(), row["udp.srcport"]);
        assert_eq!(d.dst_port.to_string(), row["udp.dstport"]);
        let src = row.get("ip.src").or_else(|| row.get("ipv6.src")).expect("source address");
        assert_eq!(&d.src_ip.to_string(), src, "{pcap_name} frame {frame_no}: source");
        let p = ntp::parse(d.payload).unwrap_or_else(|e| panic!("{pcap_name} frame {frame_no}: {e}"));
        check_packet(pcap_name, frame_no, row, &p);
    }
    assert_eq!(ntp_frames, rows.len(), "{pcap_name}: NTP packet count");
    ntp_frames
}

/// Trailers Wireshark reads as a MAC where ntpscope follows RFC 7822 and reports a defect.
fn disputed_trailer(file: &str, frame: u64) -> Option<BodyDefect> {
    match (file, frame) {
        // 25 bytes: Zeek reports a violation; Wireshark a key id plus a 21-byte digest.
        ("zeek-ntp-no-extensions-mac.pcap", 1) => Some(BodyDefect::ExtensionOverrun),
        // 36 zero bytes: Wireshark reads key id 0 plus a 32-byte digest. No NTP MAC is 32 bytes,
        // and RFC 7822 makes anything over 24 bytes an extension field; type 0 with length 0 is
        // not a valid one.
        ("scapy-ntp-uts-vectors.pcap", 4) => Some(BodyDefect::ExtensionBadLength),
        _ => None,
    }
}

fn check_packet(file: &str, frame: u64, row: &Row, p: &ntp::NtpPacket<'_>) {
    assert_eq!(u64::from(p.version), num(row, "ntp.flags.vn"), "{file} {frame} version");
    assert_eq!(u64::from(p.mode), num(row, "ntp.flags.mode"), "{file} {frame} mode");
    if p.mode != 7 {
        assert_eq!(u64::from(p.leap), num(row, "ntp.flags.li"), "{file} {frame} leap");
    }
    match &p.body {
        Body::Header(h) => {
            assert_eq!(u64::from(h.stratum), num(row, "ntp.stratum"), "{file} {frame} stratum");
            assert_eq!(u64::from(h.poll as u8), num(row, "ntp.ppoll"), "{file} {frame} poll");
            assert_eq!(u64::from(h.precision as u8), num(row, "ntp.precision"), "{file} {frame} precision");
            assert_eq!(u64::from(h.root_delay), num(row, "ntp.rootdelay"), "{file} {frame} root delay");
            assert_eq!(u64::from(h.root_dispersion), num(row, "ntp.rootdispersion"), "{file} {frame} root disp");
            assert_eq!(format!("{:08x}", h.reference_id), row["ntp.refid"], "{file} {frame} refid");
            assert_ts(file, frame, "ntp.reftime", row, h.reference_ts);
            assert_ts(file, frame, "ntp.org", row, h.origin_ts);
            assert_ts(file, frame, "ntp.rec", row, h.receive_ts);
            assert_ts(file, frame, "ntp.xmt", row, h.transmit_ts);
            let exts: Vec<(u16, u16)> = ntp::extensions(h.extension_bytes).collect();
            match row.get("ntp.ext.type") {
                Some(types) => {
                    let theirs: Vec<String> = types.split(',').map(str::to_string).collect();
                    let ours: Vec<String> = exts.iter().map(|(t, _)| format!("0x{t:04x}")).collect();
                    assert_eq!(ours, theirs, "{file} {frame} extension types");
                    let lens: Vec<String> = exts.iter().map(|(_, l)| l.to_string()).collect();
                    assert_eq!(lens.join(","), row["ntp.ext.length"], "{file} {frame} extension lengths");
                }
                None => assert!(exts.is_empty(), "{file} {frame}: extensions tshark did not see"),
            }
            if let Some(defect) = disputed_trailer(file, frame) {
                assert_eq!(h.mac, None, "{file} {frame}: no MAC");
                assert_eq!(p.defect, Some(defect), "{file} {frame}: defect");
            } else {
                assert_eq!(p.defect, None, "{file} {frame}: defect");
                match (&h.mac, row.get("ntp.keyid")) {
                    (Some(m), Some(k)) => {
                        assert_eq!(format!("{:08x}", m.key_id), *k, "{file} {frame} key id");
                        let digest = row.get("ntp.mac").map_or(0, |d| d.len() / 2);
                        assert_eq!(usize::from(m.digest_len), digest, "{file} {frame} digest length");
                    }
                    (None, None) => {}
                    (ours, theirs) => panic!("{file} {frame}: MAC ours {ours:?} tshark {theirs:?}"),
                }
            }
        }
        Body::Control(c) => {
            assert_eq!(u64::from(c.response), num(row, "ntp.ctrl.flags2.r"));
            assert_eq!(u64::from(c.error), num(row, "ntp.ctrl.flags2.error"));
            assert_eq!(u64::from(c.more), num(row, "ntp.ctrl.flags2.more"));
            assert_eq!(u64::from(c.opcode), num(row, "ntp.ctrl.flags2.opcode"), "{file} {frame} opcode");
            assert_eq!(u64::from(c.sequence), num(row, "ntp.ctrl.sequence"));
            assert_eq!(u64::from(c.status), num(row, "ntp.ctrl.status"));
            assert_eq!(u64::from(c.association_id), num(row, "ntp.ctrl.associd"));
            assert_eq!(u64::from(c.offset), num(row, "ntp.ctrl.offset"));
            assert_eq!(u64::from(c.count), num(row, "ntp.ctrl.count"));
        }
        Body::Private(m) => {
            assert_eq!(u64::from(m.response), num(row, "ntp.priv.flags.r"), "{file} {frame} r");
            assert_eq!(u64::from(m.more), num(row, "ntp.priv.flags.more"));
            assert_eq!(u64::from(m.auth), num(row, "ntp.priv.auth"));
            assert_eq!(u64::from(m.sequence), num(row, "ntp.priv.seq"));
            assert_eq!(u64::from(m.implementation), num(row, "ntp.priv.impl"));
            assert_eq!(u64::from(m.request_code), num(row, "ntp.priv.reqcode"), "{file} {frame} reqcode");
            if let Some(err) = row.get("ntp.priv.err") {
                assert_eq!(u64::from(m.error), u64::from_str_radix(err.trim_start_matches("0x"), 16).expect("err"));
            }
            if row.contains_key("ntp.priv.numitems") {
                assert_eq!(u64::from(m.items), num(row, "ntp.priv.numitems"), "{file} {frame} items");
                assert_eq!(u64::from(m.item_size), num(row, "ntp.priv.itemsize"), "{file} {frame} item size");
            }
            if row.contains_key("_ws.malformed") {
                // Wireshark's one malformed mode 7 packet; see the module docs.
                assert_eq!((file, frame), ("scapy-ntp-uts-vectors.pcap", 38), "unexpected malformed row");
                assert_eq!(p.defect, None);
            }
        }
    }
}

#[test]
fn every_corpus_packet_matches_tshark() {
    let dir = corpus_dir();
    let mut names: Vec<String> = std::fs::read_dir(dir.join("pcaps"))
        .expect("list pcaps")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names.len(), 23, "the corpus has 23 captures");
    let mut total = 0;
    for name in &names {
        total += check_file(&dir, name);
    }
    // SOURCES.md: the NTP-over-UDP packet counts tshark reports, summed over the corpus.
    assert_eq!(total, 922, "NTP packets compared");
}
