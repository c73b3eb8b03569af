//! Invariants the targets assert: cheap enough to run on every input.
//!
//! They restate ARCHITECTURE.md and the property tests next to the code: every frame lands in
//! exactly one counter bucket; every request is pending or left through exactly one door
//! (answered, unanswered, evicted, evicted per flow); pending requests never exceed
//! `max_outstanding`; an answered session echoes its request's transmit timestamp (or, when
//! interleaved, its receive timestamp); whatever the analyzer emits survives the wire unchanged.

use capture_proto::{
    frame::{self, LinkType},
    ntp::{self, Body, HEADER_LEN, ParseError},
    stats::Counters,
    summary,
};
use ntp_wire::{Batch, Record, SessionOutcome, batch};

/// Counter invariants after `frames` calls of `handle_frame` that emitted `records` records.
pub fn counters(c: &Counters, frames: u64, records: usize, max_outstanding: usize) {
    let skipped: u64 = c.frames_skipped.iter().sum();
    assert_eq!(c.frames, frames, "frames counted");
    assert_eq!(
        c.frames,
        skipped + c.frames_other_udp + c.malformed_too_short + c.malformed_bad_version + c.ntp_packets,
        "every frame in exactly one bucket: {c:?}"
    );
    assert_eq!(c.ntp_packets, c.ntp_by_mode.iter().sum::<u64>(), "by mode: {c:?}");
    assert_eq!(c.ntp_packets, c.ntp_by_version.iter().sum::<u64>(), "by version: {c:?}");
    assert_eq!(c.ntp_by_version[0], 0, "version 0 is rejected");
    assert_eq!(c.ntp_packets, c.requests + c.retransmits + c.responses + c.observations, "every NTP packet handled once: {c:?}");
    assert_eq!(c.requests, c.answered + c.unanswered + c.evicted + c.evicted_per_flow + c.pending, "request doors: {c:?}");
    assert_eq!(c.responses, c.answered + c.orphan_responses + c.mismatched_responses, "response doors: {c:?}");
    assert!(c.pending <= max_outstanding.max(1) as u64, "pending {} above max_outstanding {max_outstanding}", c.pending);
    assert!(c.interleaved <= c.answered && c.kiss_of_death <= c.answered, "{c:?}");
    assert!(c.t1_randomized <= c.requests && c.monlist <= c.observations, "{c:?}");
    assert!(c.malformed_body.iter().sum::<u64>() <= c.ntp_packets && c.snaplen_truncated <= c.ntp_packets, "{c:?}");
    assert_eq!(records as u64, c.answered + c.unanswered + c.observations, "records emitted: {c:?}");
}

/// Record invariants: what a session or observation may look like.
pub fn record(r: &Record) {
    match r {
        Record::Session(s) => {
            let answered = s.outcome == SessionOutcome::Answered;
            assert_eq!(answered, s.response.is_some(), "{s:?}");
            assert_eq!(answered, s.response_time_ns.is_some(), "{s:?}");
            assert_eq!(answered, s.total_process_time_s.is_some(), "{s:?}");
            assert!(answered || !s.interleaved, "{s:?}");
            assert!(answered || s.client_to_server_latency_s.is_none(), "{s:?}");
            assert!(!s.t1_randomized || s.client_to_server_latency_s.is_none(), "{s:?}");
            assert!((answered && !s.interleaved) || s.server_processing_time_s.is_none(), "{s:?}");
            assert!(matches!(s.request.mode, 0 | 3), "request mode: {s:?}");
            if let Some(resp) = &s.response {
                assert!(matches!(resp.mode, 0 | 4), "response mode: {s:?}");
                let echoed = if s.interleaved { s.request.receive_ts } else { s.request.transmit_ts };
                assert_eq!(resp.origin_ts, echoed, "the response echoes its request: {s:?}");
                assert!(!s.interleaved || resp.origin_ts != 0, "{s:?}");
            }
        }
        Record::Observation(o) => {
            assert!(!matches!(o.mode, 3 | 4), "client/server modes pair, not observe: {o:?}");
            assert_eq!(o.header.is_some(), o.mode <= 5, "{o:?}");
            assert_eq!(o.control.is_some(), o.mode == 6, "{o:?}");
            assert_eq!(o.private.is_some(), o.mode == 7, "{o:?}");
        }
    }
}

/// Records the analyzer emits go through the wire encoding unchanged.
pub fn wire_round_trip(records: &[Record]) {
    let b = Batch::new("fuzz-agent", "eth0.100", records.to_vec());
    let bytes = batch::encode(&b).unwrap_or_else(|e| panic!("encoding emitted records: {e}"));
    let back = batch::decode(&bytes).unwrap_or_else(|e| panic!("decoding emitted records: {e}"));
    assert_eq!(back, b, "emitted records survive the wire");
}

/// The NTP parser on a bare UDP payload: the classification is consistent with the bytes, the
/// well-formed extension fields tile their bytes, and the raw-header summary the pairer stores
/// equals the parsed one.
pub fn ntp_payload(payload: &[u8]) {
    match ntp::parse(payload) {
        Ok(p) => {
            assert_eq!(p.len, payload.len());
            assert!((1..=4).contains(&p.version) && p.mode < 8 && p.leap < 4, "{p:?}");
            match &p.body {
                Body::Header(h) => {
                    assert!(p.mode <= 5 && payload.len() >= HEADER_LEN, "{p:?}");
                    let mut total = 0usize;
                    for (_, len) in ntp::extensions(h.extension_bytes) {
                        assert!(len >= 16 && len % 4 == 0, "listed extension of length {len}");
                        total += usize::from(len);
                    }
                    assert_eq!(total, h.extension_bytes.len(), "extension fields tile their bytes");
                    let raw: [u8; HEADER_LEN] = payload[..HEADER_LEN].try_into().unwrap_or([0; HEADER_LEN]);
                    let bad = p.defect.is_some();
                    assert_eq!(
                        summary::from_header(p.len, payload[0], h, bad),
                        summary::from_raw_header(
                            &raw,
                            u16::try_from(p.len).unwrap_or(u16::MAX),
                            summary::extensions(h),
                            summary::mac(h),
                            bad
                        ),
                    );
                }
                Body::Control(_) => assert_eq!(p.mode, 6),
                Body::Private(_) => assert_eq!(p.mode, 7),
            }
        }
        Err(ParseError::TooShort { len, need, .. }) => assert!(len == payload.len() && len < need),
        Err(ParseError::BadVersion(v)) => assert!(!(1..=4).contains(&v)),
    }
}

/// The link layer: the decoded payload lies inside the frame, and the fast path agrees with the
/// general path whenever it accepts a frame (the differential property test's claim, on any
/// bytes rather than built frames).
pub fn link_layer(link: LinkType, bytes: &[u8]) {
    if let Ok(d) = frame::decode(link, bytes) {
        let range = bytes.as_ptr_range();
        let inner = d.payload.as_ptr_range();
        assert!(range.start <= inner.start && inner.end <= range.end, "payload outside the frame");
        ntp_payload(d.payload);
    }
    if let Some(fast) = frame::fast_path(link, bytes)
    {
        assert_eq!(Ok(fast), frame::decode_general(link, bytes), "fast path and etherparse disagree on {link:?}");
    }
}

