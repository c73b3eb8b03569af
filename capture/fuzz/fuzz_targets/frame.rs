//! Fuzz target `frame`: one captured frame of any supported link type.
//!
//! Input: a link selector byte (see `ntpscope_fuzz::link`), then the frame. The frame goes
//! through the link-layer decoder (fast path and etherparse, which must agree whenever the fast
//! path accepts), the NTP parser (on the decoded UDP payload, and on the raw bytes as a bare
//! payload so the parser is reached without valid headers), and a fresh `Analyzer` exactly as
//! the agent feeds it (`handle_frame`, then `flush`), whose counters, records and wire round trip
//! are checked.
#![no_main]

use capture_proto::{Analyzer, AnalyzerConfig};
use libfuzzer_sys::fuzz_target;
use ntpscope_fuzz::{check, link};

/// A capture time in November 2023, as a pcap would give it.
const T0: i64 = 1_700_000_000_000_000_000;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, bytes)) = data.split_first() else { return };
    let link = link(selector);
    check::link_layer(link, bytes);
    check::ntp_payload(bytes);
    let cfg = AnalyzerConfig::default();
    let mut analyzer = Analyzer::new(link, cfg);
    let mut out = Vec::new();
    analyzer.handle_frame(T0, bytes, &mut out);
    analyzer.flush(&mut out);
    out.iter().for_each(check::record);
    check::counters(&analyzer.counters(), 1, out.len(), cfg.pairing.max_outstanding);
    check::wire_round_trip(&out);
});
