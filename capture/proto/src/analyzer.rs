//! The whole pure pipeline for one capture source: frame → UDP → NTP → pairing → records.
//!
//! Shells (live interface, pcap file, tests, benchmarks, fuzzers) feed frames with their capture
//! time and collect [`Record`]s from the output vector. Between packets the shell may call
//! [`Analyzer::advance`] with the current time so idle links still expire their requests; it is
//! the only place where time enters, and it is always an argument.

use ntp_wire::{Control, Observation, Private, Record, id::Fnv64};

use crate::{
    frame::{self, LinkType, UdpDatagram},
    ntp::{self, Body, NtpPacket, ParseError},
    pairing::{Flow, Packet, Pairer, PairingConfig},
    stats::{Counters, defect_idx, skip_idx},
    summary,
};

/// Configuration of one analyzer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AnalyzerConfig {
    /// The NTP server port: a datagram is NTP when either port equals it (default 123).
    pub server_port: u16,
    /// Pairing limits.
    pub pairing: PairingConfig,
}

impl Default for AnalyzerConfig {
    fn default() -> Self {
        Self { server_port: 123, pairing: PairingConfig::default() }
    }
}

/// Frame-to-record pipeline state for one capture source.
#[derive(Debug)]
pub struct Analyzer {
    link: LinkType,
    server_port: u16,
    pairer: Pairer,
    counters: Counters,
}

impl Analyzer {
    /// Creates an analyzer for frames of the given link type.
    pub fn new(link: LinkType, cfg: AnalyzerConfig) -> Self {
        Self { link, server_port: cfg.server_port, pairer: Pairer::new(cfg.pairing), counters: Counters::default() }
    }

    /// Counters so far (with `pending` filled in).
    pub fn counters(&self) -> Counters {
        let mut c = self.counters.clone();
        c.pending = self.pairer.pending() as u64;
        c
    }

    /// The pairing state, for memory accounting.
    pub fn pairer(&self) -> &Pairer {
        &self.pairer
    }

    /// Handles one captured frame.
    pub fn handle_frame(&mut self, time_ns: i64, frame: &[u8], out: &mut Vec<Record>) {
        self.counters.frames += 1;
        self.pairer.expire(time_ns, &mut self.counters, out);
        match frame::decode(self.link, frame) {
            Ok(d) => self.handle_datagram(time_ns, &d, out),
            Err(skip) => self.counters.frames_skipped[skip_idx(skip)] += 1,
        }
    }

    /// Expires pending requests at `now_ns` without a new frame (idle links).
    pub fn advance(&mut self, now_ns: i64, out: &mut Vec<Record>) {
        self.pairer.expire(now_ns, &mut self.counters, out);
    }

    /// Emits every pending request as unanswered (only when the operator asks for it).
    pub fn flush(&mut self, out: &mut Vec<Record>) {
        self.pairer.flush(&mut self.counters, out);
    }

    /// Handles a UDP datagram (already extracted from its frame).
    pub fn handle_datagram(&mut self, time_ns: i64, d: &UdpDatagram<'_>, out: &mut Vec<Record>) {
        if d.src_port != self.server_port && d.dst_port != self.server_port {
            self.counters.frames_other_udp += 1;
            return;
        }
        let p = match ntp::parse(d.payload) {
            Ok(p) => p,
            Err(ParseError::TooShort { .. }) => {
                self.counters.malformed_too_short += 1;
                return;
            }
            Err(ParseError::BadVersion(_)) => {
                self.counters.malformed_bad_version += 1;
                return;
            }
        };
        let c = &mut self.counters;
        c.ntp_packets += 1;
        c.ntp_by_mode[usize::from(p.mode)] += 1;
        c.ntp_by_version[usize::from(p.version)] += 1;
        if d.truncated {
            c.snaplen_truncated += 1;
        }
        if let Some(defect) = p.defect {
            c.malformed_body[defect_idx(defect)] += 1;
        }
        let mode = self.effective_mode(&p, d);
        match (mode, &p.body) {
            (3, Body::Header(h)) => {
                let pkt = Packet {
                    time_ns,
                    flow: Flow { client_ip: d.src_ip, client_port: d.src_port, server_ip: d.dst_ip, server_port: d.dst_port },
                    vlan: d.vlan,
                    payload: d.payload,
                    header: h,
                    bad_trailer: p.defect.is_some(),
                };
                self.pairer.request(&pkt, &mut self.counters);
            }
            (4, Body::Header(h)) => {
                let pkt = Packet {
                    time_ns,
                    flow: Flow { client_ip: d.dst_ip, client_port: d.dst_port, server_ip: d.src_ip, server_port: d.src_port },
                    vlan: d.vlan,
                    payload: d.payload,
                    header: h,
                    bad_trailer: p.defect.is_some(),
                };
                self.pairer.response(&pkt, &mut self.counters, out);
            }
            _ => self.observe(time_ns, d, &p, out),
        }
    }

    /// NTPv1 has no mode field (it reads as 0): like ntpd, take a packet between two server
    /// ports as symmetric active, one towards the server port as a client request, and one from
    /// it as a server response.
    fn effective_mode(&self, p: &NtpPacket<'_>, d: &UdpDatagram<'_>) -> u8 {
        if p.version == 1 && p.mode == 0 {
            match (d.src_port == self.server_port, d.dst_port == self.server_port) {
                (true, true) => 1,
                (false, true) => 3,
                _ => 4,
            }
        } else {
            p.mode
        }
    }

    fn observe(&mut self, time_ns: i64, d: &UdpDatagram<'_>, p: &NtpPacket<'_>, out: &mut Vec<Record>) {
        let (from_client, header, control, private) = match &p.body {
            Body::Header(h) => {
                (!matches!(p.mode, 2 | 4), Some(summary::from_header(p.len, d.payload[0], h, p.defect.is_some())), None, None)
            }
            Body::Control(c) => (
                !c.response,
                None,
                Some(Control {
                    response: c.response,
                    error: c.error,
                    more: c.more,
                    opcode: c.opcode,
                    sequence: c.sequence,
                    status: c.status,
                    association_id: c.association_id,
                    offset: c.offset,
                    count: c.count,
                }),
                None,
            ),
            Body::Private(m) => (
                !m.response,
                None,
                None,
                Some(Private {
                    response: m.response,
                    more: m.more,
                    auth: m.auth,
                    sequence: m.sequence,
                    implementation: m.implementation,
                    request_code: m.request_code,
                    error: m.error,
                    items: m.items,
                    item_size: m.item_size,
                }),
            ),
        };
        if private.is_some_and(|m| m.is_monlist()) {
            self.counters.monlist += 1;
        }
        let ((client_ip, client_port), (server_ip, server_port)) =
            if from_client { ((d.src_ip, d.src_port), (d.dst_ip, d.dst_port)) } else { ((d.dst_ip, d.dst_port), (d.src_ip, d.src_port)) };
        let mut h = Fnv64::default();
        h.bytes(&time_ns.to_be_bytes());
        h.ip(d.src_ip);
        h.bytes(&d.src_port.to_be_bytes());
        h.ip(d.dst_ip);
        h.bytes(&d.dst_port.to_be_bytes());
        h.bytes(d.payload);
        self.counters.observations += 1;
        out.push(Record::Observation(Observation {
            id: h.finish(),
            time_ns,
            client_ip,
            client_port,
            server_ip,
            server_port,
            from_client,
            vlan_id: d.vlan.outer,
            inner_vlan_id: d.vlan.inner,
            length: u16::try_from(p.len).unwrap_or(u16::MAX),
            leap: p.leap,
            version: p.version,
            mode: p.mode,
            header,
            control,
            private,
        }));
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn ntp_frame(payload: &[u8], sport: u16, dport: u16) -> Vec<u8> {
        let mut out = Vec::new();
        etherparse::PacketBuilder::ethernet2([1; 6], [2; 6])
            .ipv4([198, 18, 0, 2], [198, 18, 0, 1], 64)
            .udp(sport, dport)
            .write(&mut out, payload)
            .unwrap_or_default();
        out
    }

    proptest! {
        /// Every frame lands in exactly one bucket, whatever the bytes, and nothing panics.
        #[test]
        fn every_frame_is_accounted_for_once(
            frames in proptest::collection::vec(
                (proptest::collection::vec(any::<u8>(), 0..120), any::<bool>(), 0u8..3, 0i64..5_000_000_000),
                1..60,
            ),
        ) {
            let mut a = Analyzer::new(LinkType::Ethernet, AnalyzerConfig::default());
            let mut out = Vec::new();
            let mut now = 1_700_000_000_000_000_000i64;
            for (bytes, wrap, ports, dt) in &frames {
                now += dt;
                let frame = if *wrap {
                    let (s, d) = [(40000, 123), (123, 40000), (5000, 6000)][usize::from(*ports)];
                    ntp_frame(bytes, s, d)
                } else {
                    bytes.clone()
                };
                a.handle_frame(now, &frame, &mut out);
            }
            a.flush(&mut out);
            let c = a.counters();
            let skipped: u64 = c.frames_skipped.iter().sum();
            prop_assert_eq!(
                c.frames,
                skipped + c.frames_other_udp + c.malformed_too_short + c.malformed_bad_version + c.ntp_packets
            );
            prop_assert_eq!(c.ntp_packets, c.ntp_by_mode.iter().sum::<u64>());
            prop_assert_eq!(c.requests, c.answered + c.unanswered + c.evicted + c.evicted_per_flow);
            prop_assert_eq!(out.len() as u64, c.answered + c.unanswered + c.observations);
        }
    }
}
