//! Counters kept by the core: every frame is accounted for exactly once in the `frames_*` group,
//! every accepted NTP packet in `ntp_*`, and every defect by its reason.
//!
//! The core never depends on a metrics library (the ntpd-rs `ServerStatHandler` idea): shells
//! read these plain integers through [`Counters::entries`] and export them however they like.

use crate::{frame::Skip, ntp::BodyDefect};

/// All counters of one analyzer. Adding two with [`Counters::add`] sums every field.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Frames handed to the analyzer.
    pub frames: u64,
    /// Frames without a UDP datagram, by [`Skip`] reason.
    pub frames_skipped: [u64; 5],
    /// UDP datagrams whose ports are not the NTP server port.
    pub frames_other_udp: u64,
    /// UDP datagrams on the NTP port rejected as NTP: payload too short for its mode.
    pub malformed_too_short: u64,
    /// UDP datagrams on the NTP port rejected as NTP: version not 1–4.
    pub malformed_bad_version: u64,
    /// Accepted NTP packets whose body has a defect, by [`BodyDefect`] (the packet is still used).
    pub malformed_body: [u64; 5],
    /// Accepted NTP packets whose frame was cut short by the snap length.
    pub snaplen_truncated: u64,
    /// Accepted NTP packets.
    pub ntp_packets: u64,
    /// Accepted NTP packets by mode (0–7).
    pub ntp_by_mode: [u64; 8],
    /// Accepted NTP packets by version (index 1–4; index 0 unused).
    pub ntp_by_version: [u64; 5],
    /// Client requests (mode 3) that started a new pending request.
    pub requests: u64,
    /// Client requests that repeated the transmit timestamp of a pending one.
    pub retransmits: u64,
    /// Server responses (mode 4).
    pub responses: u64,
    /// Sessions emitted as answered.
    pub answered: u64,
    /// Sessions emitted as unanswered after the timeout (or on a requested flush).
    pub unanswered: u64,
    /// Responses with no pending request on their flow (capture began mid-flight, or late).
    pub orphan_responses: u64,
    /// Responses whose origin timestamp matches no pending request on their flow.
    pub mismatched_responses: u64,
    /// Pending requests dropped because the table was full (`max_outstanding`).
    pub evicted: u64,
    /// Pending requests dropped because one flow had too many (`max_per_flow`).
    pub evicted_per_flow: u64,
    /// Answered sessions that were interleaved-mode replies.
    pub interleaved: u64,
    /// Requests whose T1 was implausible (randomised or far off).
    pub t1_randomized: u64,
    /// Kiss-o'-death responses.
    pub kiss_of_death: u64,
    /// Observations emitted (modes 0, 1, 2, 5, 6, 7).
    pub observations: u64,
    /// Mode 7 monlist requests and responses.
    pub monlist: u64,
    /// Requests pending right now (a gauge, not a counter).
    pub pending: u64,
}

const SKIPS: [Skip; 5] = [Skip::NotIp, Skip::NotUdp, Skip::Fragment, Skip::Truncated, Skip::Malformed];
const DEFECTS: [BodyDefect; 5] = [
    BodyDefect::ExtensionOverrun,
    BodyDefect::ExtensionBadLength,
    BodyDefect::TrailingBytes,
    BodyDefect::ControlCountOverrun,
    BodyDefect::PrivateItemsOverrun,
];

/// Index of a skip reason in [`Counters::frames_skipped`].
pub(crate) fn skip_idx(s: Skip) -> usize {
    SKIPS.iter().position(|x| *x == s).unwrap_or(0)
}

/// Index of a defect in [`Counters::malformed_body`].
pub(crate) fn defect_idx(d: BodyDefect) -> usize {
    DEFECTS.iter().position(|x| *x == d).unwrap_or(0)
}

impl Counters {
    /// Total malformed packets: rejected ones plus accepted ones with a body defect.
    pub fn malformed_total(&self) -> u64 {
        self.malformed_too_short + self.malformed_bad_version + self.malformed_body.iter().sum::<u64>()
    }

    /// Every counter as a `(name, value)` pair, in a stable order with stable names.
    pub fn entries(&self) -> Vec<(String, u64)> {
        let mut v: Vec<(String, u64)> = vec![("frames".into(), self.frames)];
        for (s, n) in SKIPS.iter().zip(self.frames_skipped) {
            v.push((format!("frames_skipped.{}", s.as_str()), n));
        }
        v.push(("frames_other_udp".into(), self.frames_other_udp));
        v.push(("malformed.too_short".into(), self.malformed_too_short));
        v.push(("malformed.bad_version".into(), self.malformed_bad_version));
        for (d, n) in DEFECTS.iter().zip(self.malformed_body) {
            v.push((format!("malformed.{}", d.as_str()), n));
        }
        v.push(("malformed.total".into(), self.malformed_total()));
        v.push(("snaplen_truncated".into(), self.snaplen_truncated));
        v.push(("ntp_packets".into(), self.ntp_packets));
        for (mode, n) in self.ntp_by_mode.iter().enumerate() {
            v.push((format!("ntp_by_mode.{mode}"), *n));
        }
        for (version, n) in self.ntp_by_version.iter().enumerate().skip(1) {
            v.push((format!("ntp_by_version.{version}"), *n));
        }
        let rest = [
            ("requests", self.requests),
            ("retransmits", self.retransmits),
            ("responses", self.responses),
            ("answered", self.answered),
            ("unanswered", self.unanswered),
            ("orphan_responses", self.orphan_responses),
            ("mismatched_responses", self.mismatched_responses),
            ("evicted", self.evicted),
            ("evicted_per_flow", self.evicted_per_flow),
            ("interleaved", self.interleaved),
            ("t1_randomized", self.t1_randomized),
            ("kiss_of_death", self.kiss_of_death),
            ("observations", self.observations),
            ("monlist", self.monlist),
            ("pending", self.pending),
        ];
        v.extend(rest.iter().map(|(k, n)| ((*k).to_string(), *n)));
        v
    }

    /// Adds every field of `other` into `self`.
    pub fn add(&mut self, other: &Counters) {
        fn add_arr<const N: usize>(a: &mut [u64; N], b: &[u64; N]) {
            for (x, y) in a.iter_mut().zip(b) {
                *x += y;
            }
        }
        self.frames += other.frames;
        add_arr(&mut self.frames_skipped, &other.frames_skipped);
        self.frames_other_udp += other.frames_other_udp;
        self.malformed_too_short += other.malformed_too_short;
        self.malformed_bad_version += other.malformed_bad_version;
        add_arr(&mut self.malformed_body, &other.malformed_body);
        self.snaplen_truncated += other.snaplen_truncated;
        self.ntp_packets += other.ntp_packets;
        add_arr(&mut self.ntp_by_mode, &other.ntp_by_mode);
        add_arr(&mut self.ntp_by_version, &other.ntp_by_version);
        self.requests += other.requests;
        self.retransmits += other.retransmits;
        self.responses += other.responses;
        self.answered += other.answered;
        self.unanswered += other.unanswered;
        self.orphan_responses += other.orphan_responses;
        self.mismatched_responses += other.mismatched_responses;
        self.evicted += other.evicted;
        self.evicted_per_flow += other.evicted_per_flow;
        self.interleaved += other.interleaved;
        self.t1_randomized += other.t1_randomized;
        self.kiss_of_death += other.kiss_of_death;
        self.observations += other.observations;
        self.monlist += other.monlist;
        self.pending += other.pending;
    }
}
