//! Pre-aggregation of a batch of records into one change per client (pure, no I/O).
//!
//! A database row is one (host, interface, client address). Many records of a batch usually hit
//! the same row, so the sink folds them first: counters add, first/last seen take min/max,
//! latency metrics keep count/sum/min/max, and the latest-value columns come from the newest
//! session. The result is sorted by key, which also makes SQLite's B-tree writes local.

use std::collections::BTreeMap;

use ntp_wire::{Batch, Observation, Record, Session, SessionOutcome, time::ntp_to_unix_ns};

/// The row key.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClientKey {
    /// Agent id.
    pub host: String,
    /// Interface.
    pub interface: String,
    /// Client address, canonical text.
    pub client_ip: String,
}

/// An address as 16 bytes, IPv4 mapped into IPv6 (`::ffff:a.b.c.d`): numeric order, CIDR ranges.
pub fn ip_bytes(ip: std::net::IpAddr) -> [u8; 16] {
    match ip {
        std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        std::net::IpAddr::V6(v6) => v6.octets(),
    }
}

/// Count, sum, min and max of one metric, so averages stay exact across batches.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Metric {
    /// Values seen.
    pub count: i64,
    /// Their sum.
    pub sum: f64,
    /// Smallest.
    pub min: Option<f64>,
    /// Largest.
    pub max: Option<f64>,
}

impl Metric {
    /// The metric of a single value (empty when it is missing or not finite).
    pub fn of(v: Option<f64>) -> Self {
        let mut m = Self::default();
        m.add(v);
        m
    }

    fn add(&mut self, v: Option<f64>) {
        let Some(v) = v.filter(|v| v.is_finite()) else { return };
        self.count += 1;
        self.sum += v;
        self.min = Some(self.min.map_or(v, |m| m.min(v)));
        self.max = Some(self.max.map_or(v, |m| m.max(v)));
    }
}

/// The additive counters of a row, in the column order of the table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Sessions (answered + unanswered).
    pub session_count: i64,
    /// Answered sessions.
    pub answered_count: i64,
    /// Unanswered sessions.
    pub unanswered_count: i64,
    /// Kiss-o'-death responses.
    pub kod_count: i64,
    /// Retransmitted requests.
    pub retransmit_count: i64,
    /// Interleaved replies.
    pub interleaved_count: i64,
    /// Requests with a randomised T1.
    pub t1_randomized_count: i64,
    /// Sessions using NTS.
    pub nts_count: i64,
    /// Sessions with extension fields.
    pub extension_count: i64,
    /// Sessions with a legacy MAC.
    pub mac_count: i64,
    /// Observations (non-session packets).
    pub observation_count: i64,
    /// Symmetric-mode packets (1, 2).
    pub symmetric_count: i64,
    /// Broadcast packets (5).
    pub broadcast_count: i64,
    /// Control packets (6).
    pub control_count: i64,
    /// Private packets (7).
    pub private_count: i64,
    /// Monlist queries or replies.
    pub monlist_count: i64,
}

impl Counters {
    /// The counters as an array in table column order.
    pub fn values(&self) -> [i64; 16] {
        [
            self.session_count,
            self.answered_count,
            self.unanswered_count,
            self.kod_count,
            self.retransmit_count,
            self.interleaved_count,
            self.t1_randomized_count,
            self.nts_count,
            self.extension_count,
            self.mac_count,
            self.observation_count,
            self.symmetric_count,
            self.broadcast_count,
            self.control_count,
            self.private_count,
            self.monlist_count,
        ]
    }
}

/// Column names of [`Counters::values`], in the same order.
pub const COUNTER_COLUMNS: [&str; 16] = [
    "session_count",
    "answered_count",
    "unanswered_count",
    "kod_count",
    "retransmit_count",
    "interleaved_count",
    "t1_randomized_count",
    "nts_count",
    "extension_count",
    "mac_count",
    "observation_count",
    "symmetric_count",
    "broadcast_count",
    "control_count",
    "private_count",
    "monlist_count",
];

/// Latest-value columns taken from the newest session.
#[derive(Clone, Debug, PartialEq)]
pub struct SessionLatest {
    /// Request capture time (decides which session is newest).
    pub session_timestamp: i64,
    /// Client port.
    pub client_port: i32,
    /// Server address.
    pub server_ip: String,
    /// Server port.
    pub server_port: i32,
    /// VLAN.
    pub vlan_id: Option<i32>,
    /// NTP version.
    pub ntp_version: i32,
    /// Stratum.
    pub stratum: i32,
    /// Precision exponent.
    pub precision: i32,
    /// Root delay, seconds.
    pub root_delay: f64,
    /// Root dispersion, seconds.
    pub root_dispersion: f64,
    /// Reference id text.
    pub reference_id: String,
    /// Leap indicator.
    pub leap_indicator: i32,
    /// Poll exponent.
    pub poll_interval: i32,
    /// Reference timestamp, Unix ns.
    pub reference_timestamp: Option<i64>,
    /// Origin timestamp, Unix ns.
    pub originate_timestamp: Option<i64>,
    /// Receive timestamp, Unix ns.
    pub receive_timestamp: Option<i64>,
    /// Transmit timestamp, Unix ns.
    pub transmit_timestamp: Option<i64>,
    /// T2 − T1.
    pub client_to_server_latency: Option<f64>,
    /// T3 − T2.
    pub server_processing_time: Option<f64>,
    /// Wire turnaround.
    pub total_process_time: Option<f64>,
    /// Packet length.
    pub packet_length: i32,
    /// T1 randomised.
    pub t1_randomized: bool,
}

/// Everything one batch changes in one row.
#[derive(Clone, Debug, PartialEq)]
pub struct ClientDelta {
    /// Earliest capture time.
    pub first_seen: i64,
    /// Latest capture time.
    pub last_seen: i64,
    /// Mode of the latest packet.
    pub last_mode: i32,
    /// Newest session's values.
    pub latest: Option<SessionLatest>,
    /// Newest kiss code with its time.
    pub last_kiss_code: Option<(i64, String)>,
    /// Additive counters.
    pub counters: Counters,
    /// T2 − T1.
    pub latency: Metric,
    /// T3 − T2.
    pub processing: Metric,
    /// Wire turnaround.
    pub turnaround: Metric,
}

impl ClientDelta {
    fn new(time: i64, mode: i32) -> Self {
        Self {
            first_seen: time,
            last_seen: time,
            last_mode: mode,
            latest: None,
            last_kiss_code: None,
            counters: Counters::default(),
            latency: Metric::default(),
            processing: Metric::default(),
            turnaround: Metric::default(),
        }
    }

    fn see(&mut self, time: i64, mode: i32) {
        self.first_seen = self.first_seen.min(time);
        if time >= self.last_seen {
            self.last_seen = time;
            self.last_mode = mode;
        }
    }
}

/// Folds batches into one delta per client, sorted by key.
pub fn aggregate<'a>(batches: impl IntoIterator<Item = &'a Batch>) -> BTreeMap<ClientKey, ClientDelta> {
    let mut out: BTreeMap<ClientKey, ClientDelta> = BTreeMap::new();
    for batch in batches {
        for record in &batch.records {
            // A session spans its request and its response: first seen at the request, last seen
            // at the response (or the request, when unanswered).
            let (ip, first, last, mode) = match record {
                Record::Session(s) => {
                    let mode = s.response.as_ref().map_or(s.request.mode, |r| r.mode);
                    (s.client_ip, s.request_time_ns, s.response_time_ns.unwrap_or(s.request_time_ns), mode)
                }
                Record::Observation(o) => (o.client_ip, o.time_ns, o.time_ns, o.mode),
            };
            let key = ClientKey { host: batch.agent.clone(), interface: batch.interface.clone(), client_ip: ip.to_string() };
            let delta = out.entry(key).or_insert_with(|| ClientDelta::new(first, i32::from(mode)));
            delta.see(first, i32::from(mode));
            delta.see(last, i32::from(mode));
            match record {
                Record::Session(s) => add_session(delta, s),
                Record::Observation(o) => add_observation(delta, o),
            }
        }
    }
    out
}

fn add_session(d: &mut ClientDelta, s: &Session) {
    let c = &mut d.counters;
    c.session_count += 1;
    match s.outcome {
        SessionOutcome::Answered => c.answered_count += 1,
        SessionOutcome::Unanswered => c.unanswered_count += 1,
    }
    let kiss = s.kiss_code();
    if kiss.is_some() {
        c.kod_count += 1;
    }
    c.retransmit_count += i64::from(s.retransmits);
    c.interleaved_count += i64::from(s.interleaved);
    c.t1_randomized_count += i64::from(s.t1_randomized);
    c.nts_count += i64::from(s.uses_nts());
    let any_ext = !s.request.extensions.is_empty() || s.response.as_ref().is_some_and(|r| !r.extensions.is_empty());
    c.extension_count += i64::from(any_ext);
    let any_mac = s.request.mac.is_some() || s.response.as_ref().is_some_and(|r| r.mac.is_some());
    c.mac_count += i64::from(any_mac);
    d.latency.add(s.client_to_server_latency_s);
    d.processing.add(s.server_processing_time_s);
    d.turnaround.add(s.total_process_time_s);
    if let Some(code) = kiss
        && d.last_kiss_code.as_ref().is_none_or(|(t, _)| s.request_time_ns >= *t)
    {
        d.last_kiss_code = Some((s.request_time_ns, code));
    }
    if d.latest.as_ref().is_none_or(|l| s.request_time_ns >= l.session_timestamp) {
        d.latest = Some(latest_of(s));
    }
}

fn latest_of(s: &Session) -> SessionLatest {
    let p = s.response.as_ref().unwrap_or(&s.request);
    let pivot = s.response_time_ns.unwrap_or(s.request_time_ns);
    let ts = |v: u64| (v != 0).then(|| ntp_to_unix_ns(v, pivot));
    SessionLatest {
        session_timestamp: s.request_time_ns,
        client_port: i32::from(s.client_port),
        server_ip: s.server_ip.to_string(),
        server_port: i32::from(s.server_port),
        vlan_id: s.vlan_id.map(i32::from),
        ntp_version: i32::from(p.version),
        stratum: i32::from(p.stratum),
        precision: i32::from(p.precision),
        root_delay: p.root_delay_s(),
        root_dispersion: p.root_dispersion_s(),
        reference_id: p.reference_id_text(),
        leap_indicator: i32::from(p.leap),
        poll_interval: i32::from(p.poll),
        reference_timestamp: ts(p.reference_ts),
        originate_timestamp: ts(p.origin_ts),
        receive_timestamp: ts(p.receive_ts),
        transmit_timestamp: ts(p.transmit_ts),
        client_to_server_latency: s.client_to_server_latency_s,
        server_processing_time: s.server_processing_time_s,
        total_process_time: s.total_process_time_s,
        packet_length: i32::from(p.length),
        t1_randomized: s.t1_randomized,
    }
}

fn add_observation(d: &mut ClientDelta, o: &Observation) {
    let c = &mut d.counters;
    c.observation_count += 1;
    match o.mode {
        1 | 2 => c.symmetric_count += 1,
        5 => c.broadcast_count += 1,
        6 => c.control_count += 1,
        7 => {
            c.private_count += 1;
            if o.private.is_some_and(|p| p.is_monlist()) {
                c.monlist_count += 1;
            }
        }
        _ => {}
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use ntp_wire::{PacketSummary, Private};

    use super::*;

    /// A session of `ip` requested at `t` (answered 10 ns later, or not), for tests in this crate.
    pub(crate) fn session(ip: &str, t: i64, answered: bool, latency: Option<f64>) -> Record {
        let req = PacketSummary { mode: 3, version: 4, length: 48, transmit_ts: 1, ..PacketSummary::default() };
        Record::Session(Session {
            id: t as u64,
            outcome: if answered { SessionOutcome::Answered } else { SessionOutcome::Unanswered },
            client_ip: ip.parse().unwrap(),
            client_port: 40000,
            server_ip: "198.18.0.1".parse().unwrap(),
            server_port: 123,
            vlan_id: None,
            inner_vlan_id: None,
            request_time_ns: t,
            response_time_ns: answered.then_some(t + 10),
            request: req.clone(),
            response: answered.then_some(PacketSummary { mode: 4, stratum: 2, ..req }),
            retransmits: 0,
            t1_randomized: false,
            interleaved: false,
            client_to_server_latency_s: latency,
            server_processing_time_s: None,
            total_process_time_s: Some(1e-5),
        })
    }

    #[test]
    fn folds_counters_metrics_and_latest_values() {
        let b = Batch::new(
            "h",
            "eth0",
            vec![
                session("198.18.0.2", 300, true, Some(0.002)),
                session("198.18.0.2", 100, true, Some(0.004)),
                session("198.18.0.2", 200, false, None),
                session("198.18.0.3", 50, true, Some(0.001)),
            ],
        );
        let agg = aggregate([&b]);
        assert_eq!(agg.len(), 2);
        let (k, d) = agg.iter().next().unwrap();
        assert_eq!(k.client_ip, "198.18.0.2");
        assert_eq!((d.first_seen, d.last_seen), (100, 310));
        assert_eq!((d.counters.session_count, d.counters.answered_count, d.counters.unanswered_count), (3, 2, 1));
        assert_eq!(d.latency, Metric { count: 2, sum: 0.006, min: Some(0.002), max: Some(0.004) });
        assert_eq!(d.turnaround.count, 3);
        assert_eq!(d.latest.as_ref().unwrap().session_timestamp, 300);
        assert_eq!(d.latest.as_ref().unwrap().stratum, 2);
    }

    #[test]
    fn observations_count_by_mode() {
        let obs = |mode: u8, monlist: bool| {
            Record::Observation(Observation {
                id: 1,
                time_ns: 5,
                client_ip: "198.18.0.9".parse().unwrap(),
                client_port: 1,
                server_ip: "198.18.0.1".parse().unwrap(),
                server_port: 123,
                from_client: true,
                vlan_id: None,
                inner_vlan_id: None,
                length: 48,
                leap: 0,
                version: 2,
                mode,
                header: None,
                control: None,
                private: monlist.then_some(Private {
                    response: false,
                    more: false,
                    auth: false,
                    sequence: 0,
                    implementation: 3,
                    request_code: 42,
                    error: 0,
                    items: 0,
                    item_size: 0,
                }),
            })
        };
        let b = Batch::new("h", "eth0", vec![obs(6, false), obs(7, true), obs(1, false), obs(5, false)]);
        let agg = aggregate([&b]);
        let d = agg.values().next().unwrap();
        let c = d.counters;
        assert_eq!((c.observation_count, c.control_count, c.private_count, c.monlist_count), (4, 1, 1, 1));
        assert_eq!((c.symmetric_count, c.broadcast_count, c.session_count), (1, 1, 0));
        assert!(d.latest.is_none());
    }

    #[test]
    fn hosts_and_interfaces_are_separate_rows() {
        let a = Batch::new("h1", "eth0", vec![session("198.18.0.2", 1, true, None)]);
        let b = Batch::new("h2", "eth0", vec![session("198.18.0.2", 1, true, None)]);
        let c = Batch::new("h1", "eth1", vec![session("198.18.0.2", 1, true, None)]);
        assert_eq!(aggregate([&a, &b, &c]).len(), 3);
    }
}
