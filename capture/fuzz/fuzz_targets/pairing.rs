//! Fuzz target `pairing`: a capture replayed through one `Analyzer`, as the agent's capture loop
//! drives it.
//!
//! Input: the script format of `ntpscope_fuzz::script` — a header choosing the link type, the
//! pairing limits (`max_outstanding`, `max_per_flow`, timeout, T1 skew), the server port and the
//! start time, then raw frames (from the corpus pcaps), built requests and responses (so that
//! answered, interleaved, retransmitted, evicted, orphan and mismatched paths are reached), idle
//! ticks (`advance`) and flushes. After every step the counters and the new records are checked;
//! at the end the agent's `--flush-pending` empties the table and every record must survive the
//! wire.
#![no_main]

use capture_proto::{Analyzer, pairing::slot_bytes};
use libfuzzer_sys::fuzz_target;
use ntpscope_fuzz::{
    check,
    driver::{Driver, Event},
    script::{Reader, Setup, Step},
};

fuzz_target!(|data: &[u8]| {
    let mut r = Reader::new(data);
    let setup = Setup::read(&mut r);
    let cfg = setup.config();
    let max = cfg.pairing.max_outstanding;
    let mut driver = Driver::new(&setup);
    let mut analyzer = Analyzer::new(setup.link_type(), cfg);
    let mut out = Vec::new();
    let mut frames = 0u64;
    let mut checked = 0;
    while let Some(step) = Step::read(&mut r) {
        match driver.event(&step) {
            Event::Frame { time_ns, frame } => {
                analyzer.handle_frame(time_ns, &frame, &mut out);
                frames += 1;
            }
            Event::Advance(now) => analyzer.advance(now, &mut out),
            Event::Flush => analyzer.flush(&mut out),
        }
        out[checked..].iter().for_each(check::record);
        checked = out.len();
        check::counters(&analyzer.counters(), frames, out.len(), max);
        // Memory is bounded by max_outstanding: the slab never outgrows it, and the hash tables
        // hold at most one entry per pending request (with hashbrown's slack).
        if max <= 64 {
            let heap = analyzer.pairer().heap_bytes();
            assert!(heap <= max * (slot_bytes() + 256) + 8192, "pairing state {heap} bytes with max_outstanding {max}");
        }
    }
    analyzer.flush(&mut out);
    out[checked..].iter().for_each(check::record);
    let c = analyzer.counters();
    check::counters(&c, frames, out.len(), max);
    assert_eq!(c.pending, 0, "flush leaves nothing pending");
    check::wire_round_trip(&out);
});
