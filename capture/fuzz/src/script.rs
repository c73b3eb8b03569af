//! The `pairing` target's input format: a fixed header, then steps until the bytes run out.
//!
//! Header ([`HEADER_LEN`] bytes; missing bytes read as zero, and zero means the agent's default):
//! - link selector (see [`crate::link`]);
//! - limits: bits 0–2 `max_outstanding` ([`MAX_OUTSTANDING`]), bits 3–4 `max_per_flow`
//!   ([`MAX_PER_FLOW`]), bits 5–7 the timeout ([`TIMEOUT_NS`]);
//! - misc: bits 0–1 `max_t1_skew` ([`T1_SKEW_NS`]), bit 2 the server port ([`PORTS`]);
//! - start time, `u64` little endian, modulo [`TIME_SPAN_NS`].
//!
//! Steps, chosen by the low two bits of an op byte:
//! - `0` raw frame: `delta_us: i32 LE`, `len: u16 LE`, then `len` bytes (what the pcaps give);
//! - `1` built request: `delta`, `flow`, `first`, `t1` (+ 8 raw bytes when `t1 >> 6 == 2`), `rx`, `trailer`;
//! - `2` built response: `delta`, `pick`, `flow`, `first`, `stratum` (+ 8 raw origin bytes when
//!   `pick >> 6 == 2`), `timing`, `trailer`;
//! - `3` tick: `delta`; op bits 2–3 pick `advance(now)` (0), `flush` (1), or `advance(now - 0.5 s)`
//!   (2, 3: an idle live capture advances half a second behind the wall clock).
//!
//! [`crate::driver`] turns steps into frames and analyzer calls. Built requests and responses
//! make pairing reachable: a response picks one of the last
//! [`crate::driver::HISTORY`] built requests and echoes its transmit timestamp (normal), its receive timestamp
//! (interleaved), raw bytes or zero; a request may repeat an earlier transmit timestamp
//! (retransmission). Times stay in `[0, TIME_SPAN_NS)`, the range of a classic pcap timestamp.

use capture_proto::{AnalyzerConfig, frame::LinkType, pairing::PairingConfig};

/// Length of the header.
pub const HEADER_LEN: usize = 11;
/// Capture times are kept in `[0, TIME_SPAN_NS)`: 2^32 seconds, what a pcap `u32` second field holds.
pub const TIME_SPAN_NS: i64 = (1 << 32) * 1_000_000_000;
/// `max_outstanding` choices (index 0 is the agent's default).
pub const MAX_OUTSTANDING: [usize; 8] = [1_000_000, 1, 2, 3, 4, 8, 16, 64];
/// `max_per_flow` choices.
pub const MAX_PER_FLOW: [usize; 4] = [16, 1, 2, 4];
/// Timeout choices, nanoseconds (the agent accepts 1 ns to 3600 s).
pub const TIMEOUT_NS: [i64; 8] =
    [2_000_000_000, 1, 1_000_000, 100_000_000, 1_000_000_000, 10_000_000_000, 60_000_000_000, 3_600_000_000_000];
/// `max_t1_skew` choices, nanoseconds (a huge `--max-t1-skew` saturates to `i64::MAX`).
pub const T1_SKEW_NS: [i64; 4] = [10_000_000_000, 1, 1_000_000_000, i64::MAX];
/// Server port choices.
pub const PORTS: [u16; 2] = [123, 4123];

/// Reads bytes from the front; past the end every read is zero (or empty).
#[derive(Debug)]
pub struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    /// A reader over `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    /// Whether every byte has been read.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Up to `n` bytes.
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.data.split_at(n.min(self.data.len()));
        self.data = rest;
        head
    }

    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut a = [0; N];
        let b = self.bytes(N);
        a[..b.len()].copy_from_slice(b);
        a
    }

    /// One byte.
    pub fn u8(&mut self) -> u8 {
        self.array::<1>()[0]
    }

    /// A little-endian `u16`.
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.array())
    }

    /// A little-endian `i32`.
    pub fn i32(&mut self) -> i32 {
        i32::from_le_bytes(self.array())
    }

    /// A little-endian `u64`.
    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.array())
    }
}

/// The header: link type, analyzer configuration and start time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Setup {
    /// Link selector byte.
    pub link: u8,
    /// Limits byte (see the module docs).
    pub limits: u8,
    /// Misc byte (see the module docs).
    pub misc: u8,
    /// Start time; reduced modulo [`TIME_SPAN_NS`].
    pub start_ns: u64,
}

impl Setup {
    /// Reads the header.
    pub fn read(r: &mut Reader<'_>) -> Self {
        Self { link: r.u8(), limits: r.u8(), misc: r.u8(), start_ns: r.u64() }
    }

    /// Appends the header.
    pub fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&[self.link, self.limits, self.misc]);
        out.extend_from_slice(&self.start_ns.to_le_bytes());
    }

    /// The link type.
    pub fn link_type(&self) -> LinkType {
        crate::link(self.link)
    }

    /// The analyzer configuration, as the agent would build it from its flags.
    pub fn config(&self) -> AnalyzerConfig {
        let l = usize::from(self.limits);
        let m = usize::from(self.misc);
        AnalyzerConfig {
            server_port: PORTS[(m >> 2) & 1],
            pairing: PairingConfig {
                timeout_ns: TIMEOUT_NS[l >> 5],
                max_outstanding: MAX_OUTSTANDING[l & 7],
                max_per_flow: MAX_PER_FLOW[(l >> 3) & 3],
                max_t1_skew_ns: T1_SKEW_NS[m & 3],
                ..PairingConfig::default()
            },
        }
    }

    /// The start time, nanoseconds.
    pub fn start(&self) -> i64 {
        (self.start_ns % TIME_SPAN_NS as u64) as i64
    }
}

/// A built client request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Request {
    /// Time step ([`small_delta_ns`](crate::driver::small_delta_ns)).
    pub delta: u8,
    /// Flow ([`flow`](crate::driver::flow)).
    pub flow: u8,
    /// Leap, version, mode and poll ([`first_byte`](crate::driver::first_byte)).
    pub first: u8,
    /// Transmit timestamp: bits 6–7 pick now (+ bits 0–5), an earlier request's (bits 0–4 pick
    /// it, bit 5 keeps this request's own flow), `t1_raw`, or zero.
    pub t1: u8,
    /// The raw transmit timestamp (read and written only when `t1 >> 6 == 2`).
    pub t1_raw: u64,
    /// Receive timestamp: zero, or this many milliseconds before now (interleaved clients).
    pub rx: u8,
    /// Trailer ([`payload`](crate::driver::payload)).
    pub trailer: u8,
}

/// A built server response.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Response {
    /// Time step ([`small_delta_ns`](crate::driver::small_delta_ns)).
    pub delta: u8,
    /// Bits 0–4 pick an earlier request (newest first), bit 5 uses `flow` instead of its flow,
    /// bits 6–7 the origin: its transmit timestamp, its receive timestamp, `origin_raw`, or zero.
    pub pick: u8,
    /// Flow used when bit 5 of `pick` is set or no request was built yet.
    pub flow: u8,
    /// Leap, version and mode ([`first_byte`](crate::driver::first_byte)).
    pub first: u8,
    /// Stratum (0 is a kiss-o'-death).
    pub stratum: u8,
    /// The raw origin timestamp (read and written only when `pick >> 6 == 2`).
    pub origin_raw: u64,
    /// Zero: receive and transmit timestamps zero; otherwise receive is `timing & 15` ms before
    /// now and transmit `timing >> 4` units of 2^-10 s after it.
    pub timing: u8,
    /// Trailer ([`payload`](crate::driver::payload)).
    pub trailer: u8,
}

/// One step of a script.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step<'a> {
    /// A raw frame `delta_us` microseconds after the previous step.
    Frame {
        /// Time step, microseconds.
        delta_us: i32,
        /// The frame.
        bytes: &'a [u8],
    },
    /// A built request.
    Request(Request),
    /// A built response.
    Response(Response),
    /// Time passes without a frame.
    Tick {
        /// Op bits 2–3 (see the module docs).
        kind: u8,
        /// Time step ([`small_delta_ns`](crate::driver::small_delta_ns)).
        delta: u8,
    },
}

impl<'a> Step<'a> {
    /// Reads the next step, `None` at the end of the input.
    pub fn read(r: &mut Reader<'a>) -> Option<Self> {
        if r.is_empty() {
            return None;
        }
        let op = r.u8();
        Some(match op & 3 {
            0 => {
                let delta_us = r.i32();
                let len = usize::from(r.u16());
                Step::Frame { delta_us, bytes: r.bytes(len) }
            }
            1 => {
                let (delta, flow, first, t1) = (r.u8(), r.u8(), r.u8(), r.u8());
                let t1_raw = if t1 >> 6 == 2 { r.u64() } else { 0 };
                Step::Request(Request { delta, flow, first, t1, t1_raw, rx: r.u8(), trailer: r.u8() })
            }
            2 => {
                let (delta, pick, flow, first, stratum) = (r.u8(), r.u8(), r.u8(), r.u8(), r.u8());
                let origin_raw = if pick >> 6 == 2 { r.u64() } else { 0 };
                Step::Response(Response { delta, pick, flow, first, stratum, origin_raw, timing: r.u8(), trailer: r.u8() })
            }
            _ => Step::Tick { kind: (op >> 2) & 3, delta: r.u8() },
        })
    }

    /// Appends the step in the format [`Step::read`] reads.
    pub fn write(&self, out: &mut Vec<u8>) {
        match *self {
            Step::Frame { delta_us, bytes } => {
                let len = bytes.len().min(usize::from(u16::MAX));
                out.push(0);
                out.extend_from_slice(&delta_us.to_le_bytes());
                out.extend_from_slice(&(len as u16).to_le_bytes());
                out.extend_from_slice(&bytes[..len]);
            }
            Step::Request(q) => {
                out.extend_from_slice(&[1, q.delta, q.flow, q.first, q.t1]);
                if q.t1 >> 6 == 2 {
                    out.extend_from_slice(&q.t1_raw.to_le_bytes());
                }
                out.extend_from_slice(&[q.rx, q.trailer]);
            }
            Step::Response(s) => {
                out.extend_from_slice(&[2, s.delta, s.pick, s.flow, s.first, s.stratum]);
                if s.pick >> 6 == 2 {
                    out.extend_from_slice(&s.origin_raw.to_le_bytes());
                }
                out.extend_from_slice(&[s.timing, s.trailer]);
            }
            Step::Tick { kind, delta } => out.extend_from_slice(&[3 | ((kind & 3) << 2), delta]),
        }
    }
}
