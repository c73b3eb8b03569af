//! Pairing tests: built packets through the analyzer, with time as an argument.

use std::net::IpAddr;

use ntp_wire::{Record, Session, SessionOutcome, time};
use proptest::prelude::*;

use crate::{
    analyzer::{Analyzer, AnalyzerConfig},
    frame::{LinkType, UdpDatagram, Vlan},
    pairing::PairingConfig,
};

const T0: i64 = 1_700_000_000_000_000_000;
const MS: i64 = 1_000_000;

fn ntp_at(ns: i64) -> u64 {
    time::unix_ns_to_ntp(ns)
}

/// An NTPv4 packet of the given mode with the four timestamps.
fn packet(mode: u8, stratum: u8, org: u64, rx: u64, tx: u64) -> Vec<u8> {
    let mut p = vec![0u8; 48];
    p[0] = (4 << 3) | mode;
    p[1] = stratum;
    p[2] = 6;
    p[3] = 0xe9;
    p[12..16].copy_from_slice(b"LOCL");
    p[24..32].copy_from_slice(&org.to_be_bytes());
    p[32..40].copy_from_slice(&rx.to_be_bytes());
    p[40..48].copy_from_slice(&tx.to_be_bytes());
    p
}

struct Harness {
    a: Analyzer,
    out: Vec<Record>,
}

const CLIENT: &str = "198.18.0.2";
const SERVER: &str = "198.18.0.1";

impl Harness {
    fn new(pairing: PairingConfig) -> Self {
        Self { a: Analyzer::new(LinkType::RawIp, AnalyzerConfig { server_port: 123, pairing }), out: Vec::new() }
    }

    fn send(&mut self, at: i64, from: (&str, u16), to: (&str, u16), payload: &[u8]) {
        let d = UdpDatagram {
            src_ip: from.0.parse::<IpAddr>().unwrap(),
            dst_ip: to.0.parse::<IpAddr>().unwrap(),
            src_port: from.1,
            dst_port: to.1,
            vlan: Vlan::default(),
            payload,
            truncated: false,
        };
        self.a.advance(at, &mut self.out);
        self.a.handle_datagram(at, &d, &mut self.out);
    }

    fn request(&mut self, at: i64, port: u16, t1: u64) {
        self.request_rx(at, port, t1, 0);
    }

    fn request_rx(&mut self, at: i64, port: u16, t1: u64, rx: u64) {
        self.send(at, (CLIENT, port), (SERVER, 123), &packet(3, 0, 0, rx, t1));
    }

    fn response(&mut self, at: i64, port: u16, org: u64, t2: u64, t3: u64) {
        self.send(at, (SERVER, 123), (CLIENT, port), &packet(4, 2, org, t2, t3));
    }

    fn sessions(&self) -> Vec<&Session> {
        self.out
            .iter()
            .filter_map(|r| match r {
                Record::Session(s) => Some(s),
                Record::Observation(_) => None,
            })
            .collect()
    }
}

#[test]
fn a_response_pairs_on_the_origin_echo_and_yields_the_timings() {
    let mut h = Harness::new(PairingConfig::default());
    let t1 = ntp_at(T0 - 3 * MS);
    h.request(T0, 40000, t1);
    // The server received 1 ms after T1 on its clock and took 20 µs to answer.
    let t2 = ntp_at(T0 - 2 * MS);
    let t3 = ntp_at(T0 - 2 * MS + 20_000);
    h.response(T0 + 50_000, 40000, t1, t2, t3);
    let s = h.sessions();
    assert_eq!(s.len(), 1);
    let s = s[0];
    assert_eq!(s.outcome, SessionOutcome::Answered);
    assert_eq!((s.client_port, s.server_port), (40000, 123));
    assert!((s.client_to_server_latency_s.unwrap() - 0.001).abs() < 1e-6);
    assert!((s.server_processing_time_s.unwrap() - 20e-6).abs() < 1e-6);
    assert!((s.total_process_time_s.unwrap() - 50e-6).abs() < 1e-9);
    assert!((s.timestamp_gap_s().unwrap() - 30e-6).abs() < 1e-6);
    assert!(!s.t1_randomized && !s.interleaved);
    assert_eq!(h.a.counters().pending, 0);
}

#[test]
fn retransmissions_yield_one_session_and_the_turnaround_uses_the_last_copy() {
    let mut h = Harness::new(PairingConfig::default());
    let t1 = ntp_at(T0);
    h.request(T0, 40000, t1);
    h.request(T0 + 500 * MS, 40000, t1);
    h.request(T0 + 1000 * MS, 40000, t1);
    h.response(T0 + 1000 * MS + 80_000, 40000, t1, ntp_at(T0 + MS), ntp_at(T0 + MS + 10_000));
    let s = h.sessions();
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].retransmits, 2);
    assert!((s[0].total_process_time_s.unwrap() - 80e-6).abs() < 1e-9);
    let c = h.a.counters();
    assert_eq!((c.requests, c.retransmits, c.answered), (1, 2, 1));
}

#[test]
fn orphan_and_mismatched_responses_are_counted_not_paired() {
    let mut h = Harness::new(PairingConfig::default());
    h.response(T0, 40000, ntp_at(T0), ntp_at(T0), ntp_at(T0));
    h.request(T0 + MS, 40001, ntp_at(T0 + MS));
    h.response(T0 + 2 * MS, 40001, ntp_at(T0 + 7 * MS), ntp_at(T0), ntp_at(T0));
    assert!(h.sessions().is_empty());
    let c = h.a.counters();
    assert_eq!((c.orphan_responses, c.mismatched_responses, c.pending), (1, 1, 1));
}

#[test]
fn unanswered_requests_expire_after_the_timeout_only() {
    let mut h = Harness::new(PairingConfig { timeout_ns: 2_000 * MS, ..PairingConfig::default() });
    h.request(T0, 40000, ntp_at(T0));
    h.a.advance(T0 + 2_000 * MS, &mut h.out);
    assert!(h.sessions().is_empty(), "exactly at the timeout it is still pending");
    h.a.advance(T0 + 2_001 * MS, &mut h.out);
    let s = h.sessions();
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].outcome, SessionOutcome::Unanswered);
    assert_eq!(s[0].response, None);
    // A response after expiry is an orphan.
    h.response(T0 + 2_002 * MS, 40000, ntp_at(T0), ntp_at(T0), ntp_at(T0));
    assert_eq!(h.a.counters().orphan_responses, 1);
}

#[test]
fn interleaved_replies_pair_on_the_receive_echo_and_report_no_processing_time() {
    let mut h = Harness::new(PairingConfig::default());
    // Basic exchange first.
    let t1a = ntp_at(T0);
    h.request(T0, 40000, t1a);
    let (t2a, t3a) = (ntp_at(T0 + MS), ntp_at(T0 + MS + 5_000));
    h.response(T0 + 100_000, 40000, t1a, t2a, t3a);
    // Interleaved request: origin = server's T2 of the previous exchange, receive = the client's
    // T4 of the previous response, transmit = its new T1.
    let t4a = ntp_at(T0 + 200_000);
    let t1b = ntp_at(T0 + 1_000 * MS);
    let mut req = packet(3, 0, t2a, t4a, t1b);
    req[24..32].copy_from_slice(&t2a.to_be_bytes());
    h.send(T0 + 1_000 * MS, (CLIENT, 40000), (SERVER, 123), &req);
    // Interleaved reply: origin echoes the request's receive field; transmit is the accurate T3
    // of the previous reply; receive is this exchange's T2.
    let t2b = ntp_at(T0 + 1_001 * MS);
    h.response(T0 + 1_000 * MS + 90_000, 40000, t4a, t2b, ntp_at(T0 + MS + 4_000));
    let s = h.sessions();
    assert_eq!(s.len(), 2);
    assert!(s[1].interleaved);
    assert_eq!(s[1].server_processing_time_s, None);
    assert!((s[1].client_to_server_latency_s.unwrap() - 0.001).abs() < 1e-6);
    assert_eq!(h.a.counters().interleaved, 1);
}

#[test]
fn randomised_t1_is_flagged_and_reports_no_latency() {
    let mut h = Harness::new(PairingConfig::default());
    let t1 = 0x1234_5678_9abc_def0; // far from 2023
    h.request(T0, 40000, t1);
    h.response(T0 + 60_000, 40000, t1, ntp_at(T0), ntp_at(T0 + 10_000));
    let s = h.sessions();
    assert!(s[0].t1_randomized);
    assert_eq!(s[0].client_to_server_latency_s, None);
    assert!(s[0].server_processing_time_s.is_some());
    assert_eq!(h.a.counters().t1_randomized, 1);
}

#[test]
fn memory_is_bounded_and_evictions_are_counted() {
    let mut h = Harness::new(PairingConfig { max_outstanding: 3, max_per_flow: 2, ..PairingConfig::default() });
    for i in 0..5u16 {
        h.request(T0 + i64::from(i), 40000 + i, ntp_at(T0 + i64::from(i)));
    }
    let c = h.a.counters();
    assert_eq!((c.pending, c.evicted), (3, 2));
    // The oldest were evicted: answering request 0 now is an orphan, request 4 still pairs.
    h.response(T0 + 10, 40000, ntp_at(T0), 0, 0);
    h.response(T0 + 11, 40004, ntp_at(T0 + 4), ntp_at(T0 + 4), ntp_at(T0 + 4));
    assert_eq!(h.a.counters().orphan_responses, 1);
    assert_eq!(h.sessions().len(), 1);
    // Per-flow bound: three distinct requests on one flow keep only two.
    for i in 0..3 {
        h.request(T0 + 20 + i, 50000, ntp_at(T0 + 20 + i));
    }
    assert_eq!(h.a.counters().evicted_per_flow, 1);
}

#[test]
fn kiss_of_death_is_answered_and_counted() {
    let mut h = Harness::new(PairingConfig::default());
    let t1 = ntp_at(T0);
    h.request(T0, 40000, t1);
    let mut kod = packet(4, 0, t1, 0, 0);
    kod[12..16].copy_from_slice(b"RATE");
    h.send(T0 + MS, (SERVER, 123), (CLIENT, 40000), &kod);
    let s = h.sessions();
    assert_eq!(s[0].kiss_code().as_deref(), Some("RATE"));
    assert_eq!(s[0].server_processing_time_s, None);
    assert_eq!(s[0].client_to_server_latency_s, None);
    assert_eq!(h.a.counters().kiss_of_death, 1);
}

#[derive(Clone, Debug)]
enum Op {
    Request { port: u16, t1: u8, dt: u16 },
    Response { port: u16, org: u8, dt: u16 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u16..4, 0u8..6, 1u16..3000).prop_map(|(port, t1, dt)| Op::Request { port, t1, dt }),
        (0u16..4, 0u8..6, 1u16..3000).prop_map(|(port, org, dt)| Op::Response { port, org, dt }),
    ]
}

proptest! {
    #[test]
    fn never_two_sessions_for_one_request_and_always_bounded(ops in proptest::collection::vec(op(), 1..200)) {
        let cfg = PairingConfig { max_outstanding: 5, max_per_flow: 3, ..PairingConfig::default() };
        let mut h = Harness::new(cfg);
        let mut now = T0;
        for op in &ops {
            match *op {
                Op::Request { port, t1, dt } => {
                    now += i64::from(dt) * MS;
                    h.request(now, 40000 + port, ntp_at(T0 + i64::from(t1) * 1000 * MS));
                }
                Op::Response { port, org, dt } => {
                    now += i64::from(dt) * MS;
                    let org = ntp_at(T0 + i64::from(org) * 1000 * MS);
                    h.response(now, 40000 + port, org, org, org);
                }
            }
            prop_assert!(h.a.counters().pending <= 5);
        }
        h.a.flush(&mut h.out);
        let c = h.a.counters();
        let mut ids: Vec<u64> = h.sessions().iter().map(|s| s.id).collect();
        let n = ids.len();
        ids.sort_unstable();
        ids.dedup();
        prop_assert_eq!(ids.len(), n, "a request produced two sessions");
        // Every request ends exactly one way.
        prop_assert_eq!(c.requests, c.answered + c.unanswered + c.evicted + c.evicted_per_flow);
        prop_assert_eq!(c.pending, 0);
    }
}
