//! Turns the steps of a script into what the agent's capture loop does: frames with their
//! capture times, `advance` and `flush`; builds the frames of built requests and responses.
//!
//! It keeps the current time (clamped to `[0, TIME_SPAN_NS)`) and the last [`HISTORY`] built
//! requests, so that responses and retransmissions can refer to them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use capture_proto::{Analyzer, frame::LinkType, stats::Counters};
use ntp_wire::{Record, time::unix_ns_to_ntp};

use crate::{
    script::{Reader, Request, Response, Setup, Step, TIME_SPAN_NS},
    synth::{self, Datagram, Shape},
};

/// How many built requests a response or retransmission can refer back to.
pub const HISTORY: usize = 32;

/// What the driver asks of the analyzer, in the agent's terms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// `handle_frame(time_ns, frame)`.
    Frame {
        /// Capture time.
        time_ns: i64,
        /// The frame.
        frame: Vec<u8>,
    },
    /// `advance(now_ns)`.
    Advance(i64),
    /// `flush()`.
    Flush,
}

/// A time step of a built packet or tick: fine steps near zero, a few hundred milliseconds
/// backwards (capture reordering), and up to 25 s forwards (timeouts).
pub fn small_delta_ns(d: u8) -> i64 {
    let d = i64::from(d);
    match d {
        0..=127 => d * d * d * 1_000,
        128..=191 => -(d - 128).pow(3) * 1_000,
        _ => (d - 192).pow(3) * 100_000,
    }
}

/// The endpoints a flow byte names: bits 0–2 the client host, bit 3 a client port of 123
/// (symmetric) instead of 40000 + host, bit 4 the server, bit 5 IPv6, bits 6–7 the [`Shape`].
pub fn flow(f: u8, server_port: u16) -> ((IpAddr, u16), (IpAddr, u16), Shape) {
    let host = f & 7;
    let server = (f >> 4) & 1;
    let (client_ip, server_ip) = if f & 0x20 == 0 {
        (IpAddr::V4(Ipv4Addr::new(198, 18, 1, 10 + host)), IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1 + server)))
    } else {
        (
            IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 1, 10 + u16::from(host))),
            IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1 + u16::from(server))),
        )
    };
    let client_port = if f & 8 == 0 { 40000 + u16::from(host) } else { server_port };
    let shape = [Shape::Plain, Shape::Vlan, Shape::QinQ, Shape::IpExtras][usize::from(f >> 6)];
    ((client_ip, client_port), (server_ip, server_port), shape)
}

/// The first NTP byte: version `[4, 3, 2, 1][first & 3]`, leap `(first >> 2) & 3`, and `mode`,
/// or mode 0 when bit 4 is set (with version 1, the NTPv1 packets the analyzer orients by port).
pub fn first_byte(first: u8, mode: u8) -> u8 {
    let version = [4u8, 3, 2, 1][usize::from(first & 3)];
    let leap = (first >> 2) & 3;
    let mode = if first & 0x10 == 0 { mode } else { 0 };
    (leap << 6) | (version << 3) | mode
}

/// NTP extension field types used in built trailers: NTS (RFC 8915) and two others.
const EF_TYPES: [u16; 6] = [0x0104, 0x0204, 0x0304, 0x0404, 0x2005, 0xf323];

/// Fields of a built 48-byte header.
#[derive(Clone, Copy, Debug, Default)]
pub struct Fields {
    /// First byte (leap, version, mode).
    pub first: u8,
    /// Stratum.
    pub stratum: u8,
    /// Poll exponent.
    pub poll: i8,
    /// Reference id.
    pub refid: u32,
    /// Reference, origin, receive and transmit timestamps.
    pub ts: [u64; 4],
}

/// A built NTP payload and how many bytes to cut from the end of its frame. The trailer byte's
/// low three bits pick: nothing, a crypto-NAK, an MD5 or SHA-1 MAC, 1–4 extension fields (with
/// a MAC when bit 7 is set), an extension field with a bad or overrunning length, `trailer >> 3`
/// garbage bytes, or a cut (a payload too short for its mode below 16, a snap length cut of 4 to
/// 64 bytes above, after 64 more bytes).
pub fn payload(f: &Fields, trailer: u8) -> (Vec<u8>, usize) {
    let mut p = vec![0u8; 48];
    p[0] = f.first;
    p[1] = f.stratum;
    p[2] = f.poll as u8;
    p[3] = 0xe9;
    p[4..8].copy_from_slice(&0x0000_0012u32.to_be_bytes());
    p[8..12].copy_from_slice(&0x0000_0020u32.to_be_bytes());
    p[12..16].copy_from_slice(&f.refid.to_be_bytes());
    for (i, ts) in f.ts.iter().enumerate() {
        p[16 + 8 * i..24 + 8 * i].copy_from_slice(&ts.to_be_bytes());
    }
    let n = trailer >> 3;
    let mac = |p: &mut Vec<u8>, digest: usize| {
        p.extend_from_slice(&u32::from(n).to_be_bytes());
        p.extend(std::iter::repeat_n(0xa5, digest));
    };
    let mut snap_cut = 0;
    match trailer & 7 {
        0 => {}
        1 => mac(&mut p, 0),
        2 => mac(&mut p, 16),
        3 => mac(&mut p, 20),
        4 => {
            for i in 0..=usize::from(n & 3) {
                let len = 16 + 4 * ((usize::from(n) + i) % 3);
                p.extend_from_slice(&EF_TYPES[(usize::from(n >> 2) + i) % EF_TYPES.len()].to_be_bytes());
                p.extend_from_slice(&(len as u16).to_be_bytes());
                p.extend(std::iter::repeat_n(i as u8, len - 4));
            }
            if n & 16 != 0 {
                mac(&mut p, 20);
            }
        }
        5 => {
            let len: u16 = if n & 1 == 0 { u16::from(n) } else { 0xfff0 };
            p.extend_from_slice(&EF_TYPES[0].to_be_bytes());
            p.extend_from_slice(&len.to_be_bytes());
            p.extend_from_slice(&[0x11; 12]);
        }
        6 => p.extend(std::iter::repeat_n(0x5a, usize::from(n))),
        _ if n < 16 => p.truncate(usize::from(n) * 3),
        _ => {
            // 64 more bytes, then 4 to 64 cut: the header itself always survives the cut.
            p.extend(std::iter::repeat_n(0, 64));
            snap_cut = usize::from(n - 15) * 4;
        }
    }
    (p, snap_cut)
}

/// A built request the history remembers.
#[derive(Clone, Copy, Debug)]
struct Sent {
    flow: u8,
    t1: u64,
    rx: u64,
}

/// Turns steps into analyzer events, keeping time and the history of built requests.
#[derive(Debug)]
pub struct Driver {
    link: LinkType,
    port: u16,
    now: i64,
    history: Vec<Sent>,
}

impl Driver {
    /// A driver starting at the header's time.
    pub fn new(setup: &Setup) -> Self {
        Self { link: setup.link_type(), port: setup.config().server_port, now: setup.start(), history: Vec::new() }
    }

    /// The current time.
    pub fn now(&self) -> i64 {
        self.now
    }

    fn step_time(&mut self, delta_ns: i64) -> i64 {
        self.now = self.now.saturating_add(delta_ns).clamp(0, TIME_SPAN_NS - 1);
        self.now
    }

    fn ntp_now(&self, minus_ns: i64) -> u64 {
        unix_ns_to_ntp(self.now - minus_ns)
    }

    /// The `back`-th newest built request.
    fn sent(&self, back: u8) -> Option<Sent> {
        let n = self.history.len();
        (n > 0).then(|| self.history[n - 1 - usize::from(back) % n])
    }

    /// The event a step becomes.
    pub fn event(&mut self, step: &Step<'_>) -> Event {
        match *step {
            Step::Frame { delta_us, bytes } => {
                let time_ns = self.step_time(i64::from(delta_us) * 1_000);
                Event::Frame { time_ns, frame: bytes.to_vec() }
            }
            Step::Request(q) => {
                let time_ns = self.step_time(small_delta_ns(q.delta));
                Event::Frame { time_ns, frame: self.request(&q) }
            }
            Step::Response(s) => {
                let time_ns = self.step_time(small_delta_ns(s.delta));
                Event::Frame { time_ns, frame: self.response(&s) }
            }
            Step::Tick { kind, delta } => {
                let now = self.step_time(small_delta_ns(delta));
                match kind {
                    0 => Event::Advance(now),
                    1 => Event::Flush,
                    _ => Event::Advance(now - 500_000_000),
                }
            }
        }
    }

    fn request(&mut self, q: &Request) -> Vec<u8> {
        let (flow_byte, t1, rx) = match (q.t1 >> 6, self.sent(q.t1 & 0x1f)) {
            (0, _) | (1, None) => (q.flow, self.ntp_now(0).wrapping_add(u64::from(q.t1 & 0x3f)), None),
            (1, Some(s)) => (if q.t1 & 0x20 == 0 { s.flow } else { q.flow }, s.t1, Some(s.rx)),
            (2, _) => (q.flow, q.t1_raw, None),
            _ => (q.flow, 0, None),
        };
        let rx = rx.unwrap_or_else(|| if q.rx == 0 { 0 } else { self.ntp_now(i64::from(q.rx) * 1_000_000) });
        if self.history.len() == HISTORY {
            self.history.remove(0);
        }
        self.history.push(Sent { flow: flow_byte, t1, rx });
        let fields = Fields { first: first_byte(q.first, 3), poll: (q.first >> 5) as i8 + 3, ts: [0, 0, rx, t1], ..Fields::default() };
        let (payload, snap_cut) = payload(&fields, q.trailer);
        let (client, server, shape) = flow(flow_byte, self.port);
        synth::frame(self.link, &Datagram { src: client, dst: server, payload: &payload, shape, snap_cut })
    }

    fn response(&mut self, s: &Response) -> Vec<u8> {
        let sent = self.sent(s.pick & 0x1f);
        let flow_byte = match sent {
            Some(q) if s.pick & 0x20 == 0 => q.flow,
            _ => s.flow,
        };
        let origin = match s.pick >> 6 {
            0 => sent.map_or(0, |q| q.t1),
            1 => sent.map_or(0, |q| q.rx),
            2 => s.origin_raw,
            _ => 0,
        };
        let (rx, tx) = if s.timing == 0 {
            (0, 0)
        } else {
            let rx = self.ntp_now(i64::from(s.timing & 15) * 1_000_000);
            (rx, rx.wrapping_add(u64::from(s.timing >> 4) << 22))
        };
        let refid = if s.stratum == 0 { u32::from_be_bytes(*b"RATE") } else { u32::from_be_bytes(*b"GPS\0") };
        let fields =
            Fields { first: first_byte(s.first, 4), stratum: s.stratum, poll: 6, refid, ts: [rx.wrapping_sub(16 << 32), origin, rx, tx] };
        let (payload, snap_cut) = payload(&fields, s.trailer);
        let (client, server, shape) = flow(flow_byte, self.port);
        synth::frame(self.link, &Datagram { src: server, dst: client, payload: &payload, shape, snap_cut })
    }
}

/// Replays a whole script without checks, as the `pairing` target does (with the final flush):
/// the records and the counters. The seed generator turns the records into wire seeds.
pub fn replay(data: &[u8]) -> (Vec<Record>, Counters) {
    let mut r = Reader::new(data);
    let setup = Setup::read(&mut r);
    let mut driver = Driver::new(&setup);
    let mut analyzer = Analyzer::new(setup.link_type(), setup.config());
    let mut out = Vec::new();
    while let Some(step) = Step::read(&mut r) {
        match driver.event(&step) {
            Event::Frame { time_ns, frame } => analyzer.handle_frame(time_ns, &frame, &mut out),
            Event::Advance(now) => analyzer.advance(now, &mut out),
            Event::Flush => analyzer.flush(&mut out),
        }
    }
    analyzer.flush(&mut out);
    (out, analyzer.counters())
}
