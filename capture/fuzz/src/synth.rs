//! Frames around built NTP payloads: link layer (every supported link type, optional 802.1Q or
//! QinQ tags), IPv4 or IPv6 (optionally with IPv4 options or an IPv6 hop-by-hop header, which
//! the fast path leaves to etherparse), and UDP.
//!
//! Checksums are left zero: neither decoding path verifies them, and neither does libpcap.
//! Addresses come from 198.18.0.0/15 and 2001:db8::/32, as in the rest of the project's tests.

use std::net::IpAddr;

use capture_proto::frame::LinkType;

/// Extra headers between the link layer and UDP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// Untagged, plain IP header (the fast path).
    Plain,
    /// One 802.1Q tag (VLAN 100); only on link types that carry an EtherType.
    Vlan,
    /// QinQ: 802.1ad tag 100, then 802.1Q tag 7.
    QinQ,
    /// IPv4 with a 4-byte option, or IPv6 with an 8-byte hop-by-hop header.
    IpExtras,
}

/// One UDP datagram to frame.
#[derive(Clone, Copy, Debug)]
pub struct Datagram<'a> {
    /// Source address; both addresses must be of the same family.
    pub src: (IpAddr, u16),
    /// Destination address.
    pub dst: (IpAddr, u16),
    /// UDP payload.
    pub payload: &'a [u8],
    /// Headers between the link layer and UDP.
    pub shape: Shape,
    /// Bytes cut from the end of the frame after building it, as a short snap length would.
    pub snap_cut: usize,
}

/// Builds the whole frame for `link`.
pub fn frame(link: LinkType, d: &Datagram<'_>) -> Vec<u8> {
    let ip = ip_packet(d);
    let v6 = d.src.0.is_ipv6();
    let ether_type: u16 = if v6 { 0x86dd } else { 0x0800 };
    let mut tags = Vec::new();
    let outer = match d.shape {
        Shape::Vlan => {
            tags.extend_from_slice(&[0x00, 100]);
            tags.extend_from_slice(&ether_type.to_be_bytes());
            0x8100
        }
        Shape::QinQ => {
            tags.extend_from_slice(&[0x00, 100, 0x81, 0x00, 0x00, 7]);
            tags.extend_from_slice(&ether_type.to_be_bytes());
            0x88a8
        }
        Shape::Plain | Shape::IpExtras => ether_type,
    };
    let mut out = Vec::with_capacity(ip.len() + 24);
    match link {
        LinkType::Ethernet => {
            out.extend_from_slice(&[0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1]);
            out.extend_from_slice(&outer.to_be_bytes());
            out.extend_from_slice(&tags);
        }
        LinkType::LinuxSll => {
            // Packet type, ARPHRD_ETHER, address length, address (8), protocol.
            out.extend_from_slice(&[0, 0, 0, 1, 0, 6, 0x02, 0, 0, 0, 0, 1, 0, 0]);
            out.extend_from_slice(&outer.to_be_bytes());
            out.extend_from_slice(&tags);
        }
        LinkType::LinuxSll2 => {
            // Protocol, reserved, interface index, ARPHRD_ETHER, packet type, address length, address.
            out.extend_from_slice(&outer.to_be_bytes());
            out.extend_from_slice(&[0, 0, 0, 0, 0, 2, 0, 1, 0, 6, 0x02, 0, 0, 0, 0, 1, 0, 0]);
            out.extend_from_slice(&tags);
        }
        LinkType::RawIp => {}
        LinkType::Loopback => out.extend_from_slice(&(if v6 { 30u32 } else { 2u32 }).to_le_bytes()),
    }
    out.extend_from_slice(&ip);
    out.truncate(out.len().saturating_sub(d.snap_cut));
    out
}

fn udp(d: &Datagram<'_>) -> Vec<u8> {
    let len = u16::try_from(8 + d.payload.len()).unwrap_or(u16::MAX);
    let mut u = Vec::with_capacity(8 + d.payload.len());
    u.extend_from_slice(&d.src.1.to_be_bytes());
    u.extend_from_slice(&d.dst.1.to_be_bytes());
    u.extend_from_slice(&len.to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(d.payload);
    u
}

fn ip_packet(d: &Datagram<'_>) -> Vec<u8> {
    let udp = udp(d);
    let extras = d.shape == Shape::IpExtras;
    let mut ip = Vec::with_capacity(udp.len() + 48);
    match (d.src.0, d.dst.0) {
        (IpAddr::V4(s), IpAddr::V4(t)) => {
            let ihl: u8 = if extras { 6 } else { 5 };
            let total = u16::try_from(usize::from(ihl) * 4 + udp.len()).unwrap_or(u16::MAX);
            ip.push(0x40 | ihl);
            ip.push(0);
            ip.extend_from_slice(&total.to_be_bytes());
            ip.extend_from_slice(&[0x12, 0x34, 0x40, 0x00, 64, 17, 0, 0]);
            ip.extend_from_slice(&s.octets());
            ip.extend_from_slice(&t.octets());
            if extras {
                ip.extend_from_slice(&[1, 1, 1, 0]); // NOP, NOP, NOP, end of options
            }
        }
        (s, t) => {
            let to6 = |a: IpAddr| match a {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            let hbh = if extras { 8 } else { 0 };
            let len = u16::try_from(hbh + udp.len()).unwrap_or(u16::MAX);
            ip.extend_from_slice(&[0x60, 0, 0, 0]);
            ip.extend_from_slice(&len.to_be_bytes());
            ip.push(if extras { 0 } else { 17 });
            ip.push(64);
            ip.extend_from_slice(&to6(s).octets());
            ip.extend_from_slice(&to6(t).octets());
            if extras {
                ip.extend_from_slice(&[17, 0, 1, 4, 0, 0, 0, 0]); // next UDP, 8 bytes, PadN
            }
        }
    }
    ip.extend_from_slice(&udp);
    ip
}
