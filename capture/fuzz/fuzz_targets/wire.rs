//! Fuzz target `wire`: arbitrary bytes as a NATS message body, decoded as the sink decodes it.
//!
//! `ntp_wire::batch::decode` either refuses the bytes or yields a batch; a batch must then pass
//! what the sink does next: its subject (`ntp.v1.sessions.<agent>.<interface>`) names its agent
//! and interface again, its message id and record accessors compute, the sink's own `aggregate`
//! folds it (the real `sink/src/aggregate.rs`, compiled in by path because the sink crate drags
//! in the database and NATS stacks), and encode → decode gives the same batch back (compared
//! through `Debug` when a float is NaN, which is never equal to itself) with stable bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ntp_wire::{Record, batch, subject};

/// The sink's pure fold of records into per-client deltas, from its own source file.
#[allow(dead_code, clippy::all, clippy::pedantic)]
#[path = "../../../sink/src/aggregate.rs"]
mod aggregate;

fuzz_target!(|data: &[u8]| {
    let Ok(b) = batch::decode(data) else { return };
    let subj = subject::sessions(&b.agent, &b.interface).expect("a decoded batch has non-empty names");
    assert_eq!(subject::parse_sessions(&subj).expect("our own subject parses"), (b.agent.clone(), b.interface.clone()));
    assert_eq!(b.message_id().len(), 32);
    let mut sessions = 0i64;
    for r in &b.records {
        let _ = (r.id(), r.time_ns());
        if let Record::Session(s) = r {
            sessions += 1;
            let _ = (s.kiss_code(), s.timestamp_gap_s(), s.uses_nts());
        }
    }
    let deltas = aggregate::aggregate([&b]);
    let counted: i64 = deltas.values().map(|d| d.counters.session_count).sum();
    let observed: i64 = deltas.values().map(|d| d.counters.observation_count).sum();
    assert_eq!((counted, observed), (sessions, b.records.len() as i64 - sessions), "every record folded once");
    assert!(deltas.values().all(|d| d.first_seen <= d.last_seen));
    let bytes = batch::encode(&b).expect("a decoded batch encodes");
    let back = batch::decode(&bytes).expect("an encoded batch decodes");
    if back != b {
        assert_eq!(format!("{back:?}"), format!("{b:?}"), "the round trip changed the batch");
    }
    assert_eq!(batch::encode(&back).expect("encodes again"), bytes, "encoding is stable");
});
