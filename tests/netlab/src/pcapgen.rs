//! Synthetic NTP captures: client/server pairs written as a nanosecond pcap, for benchmarks and
//! end-to-end tests that need more traffic than the corpus has.
//!
//! Frames are Ethernet/IPv4/UDP with valid IP checksums; every request's transmit timestamp is
//! its capture time, and every response echoes it, so each pair is one answered session. Some
//! requests can be left unanswered.

use std::{
    fs::File,
    io::{BufWriter, Write},
    path::Path,
};

/// What to generate.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    /// Client requests.
    pub requests: u32,
    /// Distinct clients (address and port).
    pub clients: u32,
    /// Every `unanswered_every`-th request gets no response (0: all answered).
    pub unanswered_every: u32,
    /// Clients inside 198.18.0.0/16 (true) or spread over the IPv4 space (false).
    pub clustered: bool,
    /// Capture time of the first request, Unix ns.
    pub start_ns: i64,
    /// Time between requests, ns.
    pub spacing_ns: i64,
}

impl Default for Spec {
    fn default() -> Self {
        Self {
            requests: 1_000_000,
            clients: 200_000,
            unanswered_every: 0,
            clustered: false,
            start_ns: 1_767_225_600_000_000_000,
            spacing_ns: 100_000,
        }
    }
}

/// The server every client talks to.
pub const SERVER: [u8; 4] = [198, 18, 255, 1];

/// Client `i`'s address and port.
pub fn client(spec: &Spec, i: u32) -> ([u8; 4], u16) {
    let c = i % spec.clients.max(1);
    let ip = if spec.clustered {
        [198, 18, ((c >> 8) & 0xff) as u8, (c & 0xff) as u8]
    } else {
        c.wrapping_mul(2_654_435_761).wrapping_add(12_345).to_be_bytes()
    };
    (ip, 1024 + (c % 60_000) as u16)
}

/// An Ethernet/IPv4/UDP frame around a 48-byte NTP payload.
pub fn frame(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, ntp: &[u8; 48]) -> Vec<u8> {
    let mut f = Vec::with_capacity(90);
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x08, 0x00]);
    let total = 20 + 8 + 48u16;
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&src);
    ip[16..20].copy_from_slice(&dst);
    let mut sum = 0u32;
    for c in ip.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    ip[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    f.extend_from_slice(&(8 + 48u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(ntp);
    f
}

/// A 48-byte NTPv4 header.
pub fn ntp_packet(mode: u8, org: u64, rx: u64, tx: u64) -> [u8; 48] {
    let mut p = [0u8; 48];
    p[0] = (4 << 3) | mode;
    p[1] = if mode == 4 { 2 } else { 0 };
    p[2] = 6;
    p[3] = 0xe9;
    p[12..16].copy_from_slice(&[198, 18, 255, 254]);
    p[24..32].copy_from_slice(&org.to_be_bytes());
    p[32..40].copy_from_slice(&rx.to_be_bytes());
    p[40..48].copy_from_slice(&tx.to_be_bytes());
    p
}

/// Unix ns → NTP 32.32.
pub fn ntp_time(ns: i64) -> u64 {
    let secs = ns.div_euclid(1_000_000_000) + 2_208_988_800;
    let sub = ns.rem_euclid(1_000_000_000) as u64;
    ((secs as u64 & 0xffff_ffff) << 32) | ((sub << 32) / 1_000_000_000)
}

fn write_record(w: &mut impl Write, ns: i64, frame: &[u8]) -> std::io::Result<()> {
    let len = frame.len() as u32;
    w.write_all(&((ns / 1_000_000_000) as u32).to_le_bytes())?;
    w.write_all(&((ns % 1_000_000_000) as u32).to_le_bytes())?;
    w.write_all(&len.to_le_bytes())?;
    w.write_all(&len.to_le_bytes())?;
    w.write_all(frame)
}

/// Writes the capture; returns (answered, unanswered) session counts it contains.
pub fn write(path: &Path, spec: &Spec) -> std::io::Result<(u64, u64)> {
    let mut w = BufWriter::with_capacity(1 << 20, File::create(path)?);
    w.write_all(&0xa1b2_3c4du32.to_le_bytes())?;
    w.write_all(&2u16.to_le_bytes())?;
    w.write_all(&4u16.to_le_bytes())?;
    w.write_all(&[0; 8])?;
    w.write_all(&65_535u32.to_le_bytes())?;
    w.write_all(&1u32.to_le_bytes())?;
    let (mut answered, mut unanswered) = (0, 0);
    for i in 0..spec.requests {
        let t = spec.start_ns + i64::from(i) * spec.spacing_ns;
        let (ip, port) = client(spec, i);
        let t1 = ntp_time(t - 1_000);
        write_record(&mut w, t, &frame(ip, SERVER, port, 123, &ntp_packet(3, 0, 0, t1)))?;
        if spec.unanswered_every > 0 && i % spec.unanswered_every == spec.unanswered_every - 1 {
            unanswered += 1;
            continue;
        }
        answered += 1;
        let resp = ntp_packet(4, t1, ntp_time(t + 5_000), ntp_time(t + 15_000));
        write_record(&mut w, t + 20_000, &frame(SERVER, ip, 123, port, &resp))?;
    }
    w.flush()?;
    Ok((answered, unanswered))
}
