//! Synthetic NTP captures: client/server pairs written as a nanosecond pcap, for benchmarks and
//! end-to-end tests that need more traffic than the corpus has.
//!
//! Frames are Ethernet/IPv4/UDP with valid IP checksums; every request's transmit timestamp is
//! its capture time, and every response echoes it, so each pair is one answered session. Some
//! requests can be left unanswered.
//!
//! [`write_hostile`] writes the opposite: a deterministic mix of malformed and hostile frames
//! (truncated NTP, lying length fields, bad versions, broken extension fields, IP fragments, huge
//! mode 6/7 packets, random bytes on port 123, non-UDP frames) with valid pairs mixed in, and
//! reports how many frames of each kind it wrote. It classifies frames by what they are on the
//! wire (RFC 5905, RFC 7822, IP and UDP headers), never by how ntpscope reads them.

use std::{
    collections::VecDeque,
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

/// The pcap file header: nanosecond timestamps, snap length 65535, Ethernet.
fn write_header(w: &mut impl Write) -> std::io::Result<()> {
    w.write_all(&0xa1b2_3c4du32.to_le_bytes())?;
    w.write_all(&2u16.to_le_bytes())?;
    w.write_all(&4u16.to_le_bytes())?;
    w.write_all(&[0; 8])?;
    w.write_all(&65_535u32.to_le_bytes())?;
    w.write_all(&1u32.to_le_bytes())
}

/// Writes the capture; returns (answered, unanswered) session counts it contains.
pub fn write(path: &Path, spec: &Spec) -> std::io::Result<(u64, u64)> {
    let mut w = BufWriter::with_capacity(1 << 20, File::create(path)?);
    write_header(&mut w)?;
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

/// Source MAC address of every frame [`write_hostile`] writes: the BPF filter
/// `ether src 02:4e:54:50:00:02` selects exactly the replayed frames, and nothing that the lab's
/// own interfaces send (their MAC addresses are random).
pub const HOSTILE_SRC_MAC: [u8; 6] = [0x02, 0x4e, 0x54, 0x50, 0x00, 0x02];

/// Destination of unicast hostile frames; never a source, so a bridge floods it rather than
/// learning where it lives.
const HOSTILE_DST_MAC: [u8; 6] = [0x02, 0x4e, 0x54, 0x50, 0x00, 0x01];

/// The server of the hostile mix over IPv6 (IPv4: [`SERVER`]).
const SERVER6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

/// Largest UDP payload in the hostile mix: an IPv6 frame carrying it fits a 1500-byte MTU.
pub const HOSTILE_MAX_PAYLOAD: usize = 1400;

/// How many frames of each kind [`write_hostile`] wrote. Every frame belongs to exactly one of
/// the kinds (`valid_pairs` counts two frames each); the fields documented as subsets do not add
/// frames. Kinds are what the bytes are on the wire, not what any parser makes of them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostileMix {
    /// Frames written.
    pub frames: u64,
    /// Bytes of the frames (without pcap record headers).
    pub bytes: u64,
    /// Valid NTPv4 mode 3 requests, each followed within 64 frames by a valid mode 4 response on
    /// the same flow that echoes its transmit timestamp (two frames each); a third are IPv6.
    pub valid_pairs: u64,
    /// Frames of valid pairs with Ethernet padding after the IP datagram (a subset).
    pub padded: u64,
    /// UDP payloads to or from port 123 with a valid version (1–4) but shorter than their mode's
    /// header: 48 bytes, 12 for mode 6, 8 for mode 7 (0 bytes included).
    pub truncated: u64,
    /// A 48-byte NTP request whose UDP length field exceeds the datagram, cuts the NTP header, or
    /// is below 8 (IP lengths consistent).
    pub bad_udp_length: u64,
    /// A 48-byte NTP request whose IPv4 total length exceeds the frame, is below the IP and UDP
    /// headers or cuts the NTP header, or whose IHL is below 5; or whose IPv6 payload length
    /// exceeds the frame or cuts the UDP header or the NTP header.
    pub bad_ip_length: u64,
    /// 48 to 200 bytes on port 123 whose version field is 0, 5, 6 or 7.
    pub bad_version: u64,
    /// NTPv4 mode 3 or 4 packets with an extension field (the first or the second) whose length
    /// runs past the end of the packet.
    pub ext_overrun: u64,
    /// NTPv4 mode 3 or 4 packets with an extension field of length 0, below 16 or not a multiple
    /// of 4, within the packet.
    pub ext_bad_length: u64,
    /// The mode 3 requests among `ext_overrun` and `ext_bad_length` (a subset; never answered).
    pub ext_requests: u64,
    /// IPv4 fragments (first, with the UDP header, and later ones) and IPv6 fragments (fragment
    /// extension header, first and later).
    pub fragments: u64,
    /// Mode 6 (control) packets of 12 to 1400 bytes, most of them over 1000.
    pub control: u64,
    /// Mode 6 packets whose count field exceeds the data present (a subset of `control`).
    pub control_count_overrun: u64,
    /// Mode 7 (private) packets of 8 to 1400 bytes, most of them over 1000.
    pub private: u64,
    /// Mode 7 packets whose item count × item size exceeds the data present (a subset of `private`).
    pub private_items_overrun: u64,
    /// Mode 7 packets with request code 20 or 42, MON_GETLIST(_1) (a subset of `private`).
    pub monlist: u64,
    /// Random bytes on port 123 that cannot be an NTP header: empty, a version other than 1–4, or
    /// shorter than their mode's header.
    pub random_rejected: u64,
    /// Random bytes on port 123 with a version of 1–4 and at least their mode's header length.
    pub random_accepted: u64,
    /// TCP segments to port 123 (IPv4 and IPv6).
    pub tcp: u64,
    /// ICMP and ICMPv6 echo requests and port unreachables quoting an NTP datagram.
    pub icmp: u64,
    /// Frames that are not IP: ARP requests and IEEE local experimental ether type 0x88b5.
    pub non_ip: u64,
    /// Well-formed UDP datagrams (with an NTP request inside) between two ports other than 123.
    pub other_udp: u64,
}

/// SplitMix64: tiny, fast, and the same sequence everywhere, so a seed names one capture.
#[derive(Debug)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi` (the modulo bias is irrelevant here).
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() % (hi - lo + 1) as u64) as usize
    }

    fn percent(&mut self, p: u64) -> bool {
        self.next() % 100 < p
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            v.extend_from_slice(&self.next().to_le_bytes());
        }
        v.truncate(n);
        v
    }

    /// Random bytes, `lo..=hi` of them.
    fn bytes_in(&mut self, lo: usize, hi: usize) -> Vec<u8> {
        let n = self.range(lo, hi);
        self.bytes(n)
    }
}

/// Adds big-endian 16-bit words to a one's-complement sum (an odd last byte is padded).
fn sum16(mut sum: u32, bytes: &[u8]) -> u32 {
    for c in bytes.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)]));
    }
    sum
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn ethernet(dst: [u8; 6], ether_type: u16, l3: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + l3.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&HOSTILE_SRC_MAC);
    f.extend_from_slice(&ether_type.to_be_bytes());
    f.extend_from_slice(l3);
    f
}

/// Recomputes the header checksum of the IPv4 header of an Ethernet frame (20 bytes, whatever
/// the IHL says).
fn fix_ipv4_checksum(f: &mut [u8]) {
    f[24..26].copy_from_slice(&[0, 0]);
    let c = fold(sum16(0, &f[14..34]));
    f[24..26].copy_from_slice(&c.to_be_bytes());
}

/// An Ethernet frame around an IP packet: IPv4 when the addresses have 4 bytes, else IPv6.
fn ip_frame(src: &[u8], dst: &[u8], proto: u8, payload: &[u8]) -> Vec<u8> {
    let mut ip = Vec::with_capacity(40 + payload.len());
    if src.len() == 4 {
        ip.extend_from_slice(&[0x45, 0]);
        ip.extend_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
        ip.extend_from_slice(&[0, 0, 0, 0, 64, proto, 0, 0]);
    } else {
        ip.extend_from_slice(&[0x60, 0, 0, 0]);
        ip.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        ip.extend_from_slice(&[proto, 64]);
    }
    ip.extend_from_slice(src);
    ip.extend_from_slice(dst);
    ip.extend_from_slice(payload);
    let mut f = ethernet(HOSTILE_DST_MAC, if src.len() == 4 { 0x0800 } else { 0x86dd }, &ip);
    if src.len() == 4 {
        fix_ipv4_checksum(&mut f);
    }
    f
}

/// A UDP datagram with a valid checksum (pseudo-header of either family).
fn udp(src: &[u8], dst: &[u8], sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut u = udp_unchecked(sport, dport, payload);
    let c = fold(sum16(sum16(sum16(17 + u32::from(u.len() as u16), src), dst), &u));
    u[6..8].copy_from_slice(&(if c == 0 { 0xffff } else { c }).to_be_bytes());
    u
}

/// A UDP datagram with checksum 0: "none" over IPv4, invalid over IPv6. Hostile frames carry
/// it; summing every byte of 350 MB in a debug build would cost most of a test's time budget.
fn udp_unchecked(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let len = (8 + payload.len()) as u16;
    let mut u = Vec::with_capacity(usize::from(len));
    for v in [sport, dport, len, 0] {
        u.extend_from_slice(&v.to_be_bytes());
    }
    u.extend_from_slice(payload);
    u
}

/// Offset of the transport header in an Ethernet frame.
fn l4(v6: bool) -> usize {
    if v6 { 54 } else { 34 }
}

/// Kinds of frame and their weights (per 920 draws).
#[derive(Clone, Copy, Debug)]
enum Kind {
    ValidPair,
    Truncated,
    BadUdpLength,
    BadIpLength,
    BadVersion,
    Extension,
    Fragment,
    Control,
    Private,
    Random,
    NonUdp,
    OtherUdp,
}

const KINDS: [(Kind, usize); 12] = [
    (Kind::ValidPair, 70),
    (Kind::Truncated, 80),
    (Kind::BadUdpLength, 50),
    (Kind::BadIpLength, 50),
    (Kind::BadVersion, 70),
    (Kind::Extension, 120),
    (Kind::Fragment, 80),
    (Kind::Control, 50),
    (Kind::Private, 50),
    (Kind::Random, 200),
    (Kind::NonUdp, 80),
    (Kind::OtherUdp, 20),
];

/// The generator's state: the random stream and the bookkeeping.
#[derive(Debug)]
struct Hostile {
    rng: Rng,
    mix: HostileMix,
}

impl Hostile {
    fn v6(&mut self) -> bool {
        self.rng.percent(30)
    }

    /// A hostile client (198.19.0.0/16 or 2001:db8:bad::/48) and the server.
    fn ends(&mut self, v6: bool) -> (Vec<u8>, Vec<u8>) {
        let r = self.rng.next().to_be_bytes();
        if v6 {
            let mut c = [0x20, 0x01, 0x0d, 0xb8, 0x0b, 0xad, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
            c[8..].copy_from_slice(&r);
            (c.to_vec(), SERVER6.to_vec())
        } else {
            (vec![198, 19, r[0], r[1]], SERVER.to_vec())
        }
    }

    /// A UDP frame between a hostile client and the server, towards the server or from it.
    fn udp_frame(&mut self, v6: bool, to_server: bool, payload: &[u8]) -> Vec<u8> {
        let (client, server) = self.ends(v6);
        let eph = self.rng.range(1024, 65_535) as u16;
        let (src, dst, sport, dport) = if to_server { (client, server, eph, 123) } else { (server, client, 123, eph) };
        ip_frame(&src, &dst, 17, &udp_unchecked(sport, dport, payload))
    }

    /// A 48-byte NTPv4 header of `mode` with random fields.
    fn ntp_header(&mut self, mode: u8) -> Vec<u8> {
        let mut p = self.rng.bytes(48);
        p[0] = (4 << 3) | mode;
        p
    }

    /// A payload length for mode 6/7: mostly over 1000 bytes.
    fn huge_len(&mut self, min: usize) -> usize {
        if self.rng.percent(70) { self.rng.range(1000, HOSTILE_MAX_PAYLOAD) } else { self.rng.range(min, HOSTILE_MAX_PAYLOAD) }
    }

    fn valid_pair(&mut self, time_ns: i64) -> (Vec<u8>, Vec<u8>) {
        let i = self.mix.valid_pairs;
        self.mix.valid_pairs += 1;
        let c = (i % 50_000) as u16;
        let [hi, lo] = c.to_be_bytes();
        let (client, server) = if i % 3 == 2 {
            (vec![0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, hi, lo], SERVER6.to_vec())
        } else {
            (vec![198, 18, (1 + c / 250) as u8, (1 + c % 250) as u8], SERVER.to_vec())
        };
        let port = 1024 + c;
        let t1 = ntp_time(time_ns);
        let req = ntp_packet(3, 0, 0, t1);
        let resp = ntp_packet(4, t1, t1 + 0x0100_0000, t1 + 0x0200_0000);
        let mut frames = [
            ip_frame(&client, &server, 17, &udp(&client, &server, port, 123, &req)),
            ip_frame(&server, &client, 17, &udp(&server, &client, 123, port, &resp)),
        ];
        for f in &mut frames {
            if self.rng.percent(25) {
                f.resize(f.len() + self.rng.range(1, 16), 0);
                self.mix.padded += 1;
            }
        }
        let [req, resp] = frames;
        (req, resp)
    }

    fn truncated(&mut self) -> Vec<u8> {
        let mode = self.rng.range(0, 7) as u8;
        let need = match mode {
            6 => 12,
            7 => 8,
            _ => 48,
        };
        let len = self.rng.range(0, need - 1);
        let mut p = self.rng.bytes(len);
        if let Some(b) = p.first_mut() {
            *b = (*b & 0xc0) | ((self.rng.range(1, 4) as u8) << 3) | mode;
        }
        self.mix.truncated += 1;
        let (v6, to_server) = (self.v6(), self.rng.percent(70));
        self.udp_frame(v6, to_server, &p)
    }

    fn bad_udp_length(&mut self) -> Vec<u8> {
        let v6 = self.v6();
        let p = self.ntp_header(3);
        let mut f = self.udp_frame(v6, true, &p);
        let len = match self.rng.range(0, 2) {
            0 => 56 + self.rng.range(1, 400),
            1 => 8 + self.rng.range(0, 47),
            _ => self.rng.range(0, 7),
        };
        let at = l4(v6) + 4;
        f[at..at + 2].copy_from_slice(&(len as u16).to_be_bytes());
        self.mix.bad_udp_length += 1;
        f
    }

    fn bad_ip_length(&mut self) -> Vec<u8> {
        let v6 = self.v6();
        let p = self.ntp_header(3);
        let mut f = self.udp_frame(v6, true, &p);
        let datagram = f.len() - 14;
        if v6 {
            let len = match self.rng.range(0, 2) {
                0 => datagram - 40 + self.rng.range(1, 400),
                1 => self.rng.range(0, 7),
                _ => 8 + self.rng.range(0, 47),
            };
            f[18..20].copy_from_slice(&(len as u16).to_be_bytes());
        } else {
            let total = match self.rng.range(0, 3) {
                0 => datagram + self.rng.range(1, 400),
                1 => self.rng.range(0, 27),
                2 => 28 + self.rng.range(0, 47),
                _ => {
                    f[14] = 0x40 | self.rng.range(0, 4) as u8;
                    datagram
                }
            };
            f[16..18].copy_from_slice(&(total as u16).to_be_bytes());
            fix_ipv4_checksum(&mut f);
        }
        self.mix.bad_ip_length += 1;
        f
    }

    fn bad_version(&mut self) -> Vec<u8> {
        let version = [0u8, 5, 6, 7][self.rng.range(0, 3)];
        let len = self.rng.range(48, 200);
        let mut p = self.rng.bytes(len);
        p[0] = (p[0] & 0xc7) | (version << 3);
        self.mix.bad_version += 1;
        let (v6, to_server) = (self.v6(), self.rng.percent(70));
        self.udp_frame(v6, to_server, &p)
    }

    /// Room after the header (or after a valid field) that is not a legacy MAC (4, 20 or 24
    /// bytes) and can hold an extension field header.
    fn ext_room(&mut self) -> usize {
        loop {
            let r = 16 + 4 * self.rng.range(0, 240);
            if r != 20 && r != 24 {
                return r;
            }
        }
    }

    fn extension(&mut self) -> Vec<u8> {
        let mode = if self.rng.percent(50) { 3 } else { 4 };
        let mut p = self.ntp_header(mode);
        let ty = [0x0104u16, 0x0204, 0x0304, 0x0404, 0x2005, 0xffff][self.rng.range(0, 5)];
        let kind = self.rng.range(0, 9);
        if kind < 2 {
            // A valid first field, then the broken one.
            let len = 16 + 4 * self.rng.range(0, 12);
            p.extend_from_slice(&ty.to_be_bytes());
            p.extend_from_slice(&(len as u16).to_be_bytes());
            p.extend_from_slice(&self.rng.bytes(len - 4));
        }
        let room = self.ext_room();
        let len = match kind {
            0..=5 => room + 4 * self.rng.range(1, 1000),
            6 => 0,
            7 => 4 * self.rng.range(1, 3),
            _ => loop {
                let l = self.rng.range(1, room);
                if !l.is_multiple_of(4) {
                    break l;
                }
            },
        };
        p.extend_from_slice(&ty.to_be_bytes());
        p.extend_from_slice(&(len as u16).to_be_bytes());
        p.extend_from_slice(&self.rng.bytes(room - 4));
        if kind <= 5 {
            self.mix.ext_overrun += 1;
        } else {
            self.mix.ext_bad_length += 1;
        }
        self.mix.ext_requests += u64::from(mode == 3);
        let v6 = self.v6();
        self.udp_frame(v6, mode == 3, &p)
    }

    fn fragment(&mut self) -> Vec<u8> {
        let v6 = self.v6();
        let (client, server) = self.ends(v6);
        let id = self.rng.next();
        let (offset, more, data) = if self.rng.percent(50) {
            let mut p = self.ntp_header(3);
            p.extend_from_slice(&self.rng.bytes_in(0, 1000));
            let sport = self.rng.range(1024, 65_535) as u16;
            let mut d = udp_unchecked(sport, 123, &p);
            d.truncate(8 * self.rng.range(2, 5));
            (0, true, d)
        } else {
            let offset = self.rng.range(1, 170) as u16;
            let (more, len) = (self.rng.percent(50), 8 * self.rng.range(1, 175));
            (offset, more, self.rng.bytes(len))
        };
        self.mix.fragments += 1;
        if v6 {
            let mut h = vec![17, 0];
            h.extend_from_slice(&((offset << 3) | u16::from(more)).to_be_bytes());
            h.extend_from_slice(&(id as u32).to_be_bytes());
            h.extend_from_slice(&data);
            ip_frame(&client, &server, 44, &h)
        } else {
            let mut f = ip_frame(&client, &server, 17, &data);
            f[18..20].copy_from_slice(&(id as u16).to_be_bytes());
            f[20..22].copy_from_slice(&((u16::from(more) << 13) | offset).to_be_bytes());
            fix_ipv4_checksum(&mut f);
            f
        }
    }

    fn control(&mut self) -> Vec<u8> {
        let len = self.huge_len(12);
        let mut p = self.rng.bytes(len);
        let response = self.rng.percent(50);
        p[0] = ((self.rng.range(1, 4) as u8) << 3) | 6;
        p[1] = (u8::from(response) << 7) | (p[1] & 0x7f);
        let data = len - 12;
        let count = if self.rng.percent(40) {
            self.mix.control_count_overrun += 1;
            data + self.rng.range(1, 2000)
        } else {
            self.rng.range(0, data)
        };
        p[10..12].copy_from_slice(&(count as u16).to_be_bytes());
        self.mix.control += 1;
        let v6 = self.v6();
        self.udp_frame(v6, !response, &p)
    }

    fn private(&mut self) -> Vec<u8> {
        let len = self.huge_len(8);
        let mut p = self.rng.bytes(len);
        let response = self.rng.percent(50);
        p[0] = (u8::from(response) << 7) | (p[0] & 0x40) | ((self.rng.range(1, 4) as u8) << 3) | 7;
        p[2] = [0, 2, 3][self.rng.range(0, 2)];
        p[3] = match self.rng.range(0, 9) {
            0..=2 => 42,
            3 => 20,
            _ => self.rng.range(0, 255) as u8,
        };
        let data = len - 8;
        let (items, size) = if self.rng.percent(40) {
            self.mix.private_items_overrun += 1;
            let size = self.rng.range(1, 0xfff);
            (data / size + self.rng.range(1, 100), size)
        } else {
            let size = self.rng.range(0, 500);
            // Items of size 0 never exceed the data, however many.
            let most = data.checked_div(size).unwrap_or(0xfff);
            (self.rng.range(0, most), size)
        };
        p[4] = (p[4] & 0xf0) | (items >> 8) as u8;
        p[5] = items as u8;
        p[6] = (p[6] & 0xf0) | (size >> 8) as u8;
        p[7] = size as u8;
        self.mix.private += 1;
        self.mix.monlist += u64::from(matches!(p[3], 20 | 42));
        let v6 = self.v6();
        self.udp_frame(v6, !response, &p)
    }

    fn random(&mut self) -> Vec<u8> {
        let len = if self.rng.percent(50) { self.rng.range(0, 64) } else { self.rng.range(0, HOSTILE_MAX_PAYLOAD) };
        let p = self.rng.bytes(len);
        let header = p.first().is_some_and(|b| {
            let need = match b & 7 {
                6 => 12,
                7 => 8,
                _ => 48,
            };
            (1..=4).contains(&((b >> 3) & 7)) && len >= need
        });
        if header {
            self.mix.random_accepted += 1;
        } else {
            self.mix.random_rejected += 1;
        }
        let (v6, to_server) = (self.v6(), self.rng.percent(60));
        let mut f = self.udp_frame(v6, to_server, &p);
        if self.rng.percent(10) {
            // Port 123 on both sides (the UDP checksum no longer matches; nothing checks it).
            let at = l4(v6);
            f[at..at + 4].copy_from_slice(&[0, 123, 0, 123]);
        }
        f
    }

    fn non_udp(&mut self) -> Vec<u8> {
        let v6 = self.v6();
        let (client, server) = self.ends(v6);
        match self.rng.range(0, 4) {
            0 | 1 => {
                self.mix.tcp += 1;
                let mut t = self.rng.bytes(20);
                t[2..4].copy_from_slice(&123u16.to_be_bytes());
                t[12] = 5 << 4;
                t[13] = if self.rng.percent(50) { 0x02 } else { 0x18 };
                if self.rng.percent(50) {
                    t.extend_from_slice(&self.ntp_header(3));
                }
                ip_frame(&client, &server, 6, &t)
            }
            2 | 3 => {
                self.mix.icmp += 1;
                let unreachable = self.rng.percent(50);
                let (ty, code) = match (v6, unreachable) {
                    (false, false) => (8, 0),
                    (false, true) => (3, 3),
                    (true, false) => (128, 0),
                    (true, true) => (1, 4),
                };
                let mut m = vec![ty, code, 0, 0, 0, 0, 0, 0];
                if unreachable {
                    let p = self.ntp_header(3);
                    let quoted = ip_frame(&client, &server, 17, &udp(&client, &server, 40_000, 123, &p));
                    m.extend_from_slice(&quoted[14..]);
                } else {
                    m.extend_from_slice(&self.rng.bytes_in(0, 56));
                }
                let c = fold(sum16(0, &m));
                m[2..4].copy_from_slice(&c.to_be_bytes());
                ip_frame(&client, &server, if v6 { 58 } else { 1 }, &m)
            }
            _ => {
                self.mix.non_ip += 1;
                if self.rng.percent(50) {
                    let mut arp = vec![0, 1, 8, 0, 6, 4, 0, 1];
                    arp.extend_from_slice(&HOSTILE_SRC_MAC);
                    arp.extend_from_slice(&[198, 19, client[2], client[3]]);
                    arp.extend_from_slice(&[0; 6]);
                    arp.extend_from_slice(&SERVER);
                    ethernet([0xff; 6], 0x0806, &arp)
                } else {
                    let n = self.rng.range(46, 200);
                    ethernet(HOSTILE_DST_MAC, 0x88b5, &self.rng.bytes(n))
                }
            }
        }
    }

    fn other_udp(&mut self) -> Vec<u8> {
        let v6 = self.v6();
        let (client, server) = self.ends(v6);
        let p = self.ntp_header(3);
        let sport = self.rng.range(1024, 65_535) as u16;
        let dport = [53, 124, 1123, 4123][self.rng.range(0, 3)];
        self.mix.other_udp += 1;
        ip_frame(&client, &server, 17, &udp(&client, &server, sport, dport, &p))
    }
}

/// Writes `n` frames of hostile traffic (see the module docs) drawn from `seed`, with valid
/// request/response pairs mixed in; returns how many frames of each kind it wrote. The same
/// `n` and `seed` always give the same file. Addresses: 198.18.0.0/15 and 2001:db8::/32; frames
/// fit a 1500-byte MTU; capture times are 1 µs apart.
pub fn write_hostile(path: &Path, n: u64, seed: u64) -> std::io::Result<HostileMix> {
    let mut w = BufWriter::with_capacity(1 << 20, File::create(path)?);
    write_header(&mut w)?;
    let mut g = Hostile { rng: Rng(seed), mix: HostileMix::default() };
    let total: usize = KINDS.iter().map(|(_, weight)| weight).sum();
    // Responses wait here for their turn: (frame index due, frame).
    let mut responses: VecDeque<(u64, Vec<u8>)> = VecDeque::new();
    let mut time_ns = Spec::default().start_ns;
    while g.mix.frames < n {
        let left = n - g.mix.frames;
        let frame = match responses.front() {
            Some((due, _)) if *due <= g.mix.frames || left <= responses.len() as u64 => responses.pop_front().map(|(_, f)| f),
            _ => None,
        };
        let frame = frame.unwrap_or_else(|| {
            let mut pick = g.rng.range(0, total - 1);
            let kind = KINDS
                .iter()
                .find_map(|&(kind, weight)| {
                    if pick < weight {
                        return Some(kind);
                    }
                    pick -= weight;
                    None
                })
                .unwrap_or(Kind::Random);
            match kind {
                Kind::ValidPair if left >= responses.len() as u64 + 2 => {
                    let (req, resp) = g.valid_pair(time_ns);
                    responses.push_back((g.mix.frames + 1 + g.rng.range(0, 63) as u64, resp));
                    req
                }
                Kind::ValidPair | Kind::Truncated => g.truncated(),
                Kind::BadUdpLength => g.bad_udp_length(),
                Kind::BadIpLength => g.bad_ip_length(),
                Kind::BadVersion => g.bad_version(),
                Kind::Extension => g.extension(),
                Kind::Fragment => g.fragment(),
                Kind::Control => g.control(),
                Kind::Private => g.private(),
                Kind::Random => g.random(),
                Kind::NonUdp => g.non_udp(),
                Kind::OtherUdp => g.other_udp(),
            }
        });
        write_record(&mut w, time_ns, &frame)?;
        time_ns += 1_000;
        g.mix.frames += 1;
        g.mix.bytes += frame.len() as u64;
    }
    w.flush()?;
    Ok(g.mix)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The frames of a capture written by this module (24-byte header, 16-byte record headers).
    fn frames(bytes: &[u8]) -> Vec<&[u8]> {
        let mut out = Vec::new();
        let mut at = 24;
        while at + 16 <= bytes.len() {
            let len = u32::from_le_bytes(bytes[at + 8..at + 12].try_into().unwrap()) as usize;
            out.push(&bytes[at + 16..at + 16 + len]);
            at += 16 + len;
        }
        out
    }

    #[test]
    fn the_hostile_mix_is_deterministic_fully_accounted_for_and_in_the_test_ranges() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.pcap"), dir.path().join("b.pcap"));
        let mix = write_hostile(&a, 20_000, 7).unwrap();
        assert_eq!(write_hostile(&b, 20_000, 7).unwrap(), mix);
        let bytes = std::fs::read(&a).unwrap();
        assert_eq!(bytes, std::fs::read(&b).unwrap(), "the same seed writes the same file");
        let kinds = 2 * mix.valid_pairs
            + mix.truncated
            + mix.bad_udp_length
            + mix.bad_ip_length
            + mix.bad_version
            + mix.ext_overrun
            + mix.ext_bad_length
            + mix.fragments
            + mix.control
            + mix.private
            + mix.random_rejected
            + mix.random_accepted
            + mix.tcp
            + mix.icmp
            + mix.non_ip
            + mix.other_udp;
        assert_eq!((kinds, mix.frames), (20_000, 20_000), "{mix:?}");
        let frames = frames(&bytes);
        assert_eq!(frames.len(), 20_000);
        assert_eq!(frames.iter().map(|f| f.len() as u64).sum::<u64>(), mix.bytes);
        for f in frames {
            assert!((42..=1514).contains(&f.len()), "a frame of {} bytes", f.len());
            assert_eq!(f[6..12], HOSTILE_SRC_MAC);
            // Every address, wherever the headers put it: 198.18.0.0/15 and 2001:db8::/32 only.
            let addrs: &[std::ops::Range<usize>] = match u16::from_be_bytes([f[12], f[13]]) {
                0x0800 => &[26..30, 30..34],
                0x86dd => &[22..38, 38..54],
                0x0806 => &[28..32, 38..42],
                _ => &[],
            };
            for r in addrs {
                let a = &f[r.clone()];
                let ok = if a.len() == 4 { a[0] == 198 && a[1] & 0xfe == 18 } else { a[..4] == [0x20, 0x01, 0x0d, 0xb8] };
                assert!(ok, "address {a:?} in {f:?}");
            }
        }
    }
}
