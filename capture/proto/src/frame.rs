//! Link layer → IPv4/IPv6 → UDP, via etherparse's zero-copy slicing.
//!
//! Supported link types: Ethernet (with 802.1Q and QinQ tags), Linux cooked capture v1 and v2
//! (the `any` device), raw IP (IPv4 or IPv6), and BSD loopback (`NULL`, `LOOP`). IPv6 extension
//! headers are skipped by etherparse.
//!
//! **Invariant:** IP fragments are not reassembled; they are reported as [`Skip::Fragment`] and
//! counted. Reassembly would need per-flow buffers that a hostile sender could exhaust, and NTP
//! over fragmented UDP is vanishingly rare (fragmented monlist responses are the exception, and
//! their first fragment is still counted).
//!
//! A frame cut short by the snap length falls back to etherparse's lax slicing, so the UDP ports
//! and the bytes that were captured are still available; the datagram is then marked truncated.

use std::net::IpAddr;

use etherparse::{EtherType, LaxNetSlice, LaxSlicedPacket, NetSlice, SlicedPacket, TransportSlice, VlanId};

/// The capture's link-layer header type, from the pcap `DLT_*`/`LINKTYPE_*` number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LinkType {
    /// `LINKTYPE_ETHERNET` (1).
    Ethernet,
    /// `LINKTYPE_LINUX_SLL` (113): Linux cooked capture v1.
    LinuxSll,
    /// `LINKTYPE_LINUX_SLL2` (276): Linux cooked capture v2.
    LinuxSll2,
    /// `LINKTYPE_RAW` (101, also DLT 12 and 14 on some systems), `IPV4` (228), `IPV6` (229).
    RawIp,
    /// `LINKTYPE_NULL` (0) and `LINKTYPE_LOOP` (108): a 4-byte address family, then IP.
    Loopback,
}

impl LinkType {
    /// Maps a pcap link-type number; `None` for link types ntpscope does not decode.
    pub fn from_dlt(dlt: i32) -> Option<Self> {
        match dlt {
            1 => Some(Self::Ethernet),
            113 => Some(Self::LinuxSll),
            276 => Some(Self::LinuxSll2),
            12 | 14 | 101 | 228 | 229 => Some(Self::RawIp),
            0 | 108 => Some(Self::Loopback),
            _ => None,
        }
    }
}

/// VLAN tags of a frame: the outer (service) and, when double tagged, the inner (customer) id.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Vlan {
    /// Outermost 802.1Q/802.1ad tag.
    pub outer: Option<u16>,
    /// Second tag of a QinQ frame.
    pub inner: Option<u16>,
}

/// A UDP datagram borrowed from a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UdpDatagram<'a> {
    /// Source address.
    pub src_ip: IpAddr,
    /// Destination address.
    pub dst_ip: IpAddr,
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// VLAN tags.
    pub vlan: Vlan,
    /// UDP payload (without Ethernet padding).
    pub payload: &'a [u8],
    /// The frame was cut short (snap length); `payload` holds only what was captured.
    pub truncated: bool,
}

/// Why a frame yields no UDP datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Skip {
    /// Not IPv4 or IPv6 (ARP, LLDP, …).
    NotIp,
    /// IP but not UDP (TCP, ICMP, unsupported IPv6 extension such as ESP).
    NotUdp,
    /// An IP fragment (not reassembled).
    Fragment,
    /// Headers cut short before the UDP header was complete.
    Truncated,
    /// Headers that cannot be decoded (bad IP version, bad header lengths).
    Malformed,
}

impl Skip {
    /// A stable snake_case name for counters.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotIp => "not_ip",
            Self::NotUdp => "not_udp",
            Self::Fragment => "ip_fragment",
            Self::Truncated => "truncated_frame",
            Self::Malformed => "bad_headers",
        }
    }
}

/// Extracts the UDP datagram from one captured frame.
pub fn decode(link: LinkType, frame: &[u8]) -> Result<UdpDatagram<'_>, Skip> {
    if let Some(d) = fast_path(link, frame) {
        return Ok(d);
    }
    decode_general(link, frame)
}

/// The general path: etherparse's slicing, for every frame the fast path declines.
pub fn decode_general(link: LinkType, frame: &[u8]) -> Result<UdpDatagram<'_>, Skip> {
    let strict = match link {
        LinkType::Ethernet => SlicedPacket::from_ethernet(frame),
        // SLL v1's protocol field is an EtherType whatever the ARPHRD type (`any` gives loopback,
        // tun and WireGuard frames too), so the header is split here rather than by etherparse,
        // which refuses ARPHRD types it does not know.
        LinkType::LinuxSll => {
            let (ether_type, rest) = sll_split(frame).ok_or(Skip::Truncated)?;
            SlicedPacket::from_ether_type(ether_type, rest)
        }
        LinkType::LinuxSll2 => {
            let (ether_type, rest) = sll2_split(frame).ok_or(Skip::Truncated)?;
            SlicedPacket::from_ether_type(ether_type, rest)
        }
        LinkType::RawIp => SlicedPacket::from_ip(frame),
        LinkType::Loopback => SlicedPacket::from_ip(frame.get(4..).ok_or(Skip::Truncated)?),
    };
    match strict {
        Ok(sliced) => from_strict(&sliced),
        Err(etherparse::err::packet::SliceError::Len(_)) => decode_lax(link, frame),
        Err(etherparse::err::packet::SliceError::Ip(_)) if matches!(link, LinkType::RawIp | LinkType::Loopback) => Err(Skip::NotIp),
        Err(_) => Err(Skip::Malformed),
    }
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// The common case in a few comparisons: an untagged, unfragmented IPv4 or IPv6 (no extension
/// headers) UDP datagram whose lengths are all consistent. Anything else returns `None` and takes
/// the general path, so the fast path never decides a skip reason. A differential property test
/// checks it against etherparse.
pub fn fast_path(link: LinkType, frame: &[u8]) -> Option<UdpDatagram<'_>> {
    // (where the IP header starts, the IP version the link header announces, if it does)
    let ether = |at: usize| match be16(frame, at) {
        0x0800 => Some(4),
        0x86dd => Some(6),
        _ => None,
    };
    let (ip_start, announced) = match link {
        LinkType::Ethernet if frame.len() >= 14 => (14, Some(ether(12)?)),
        LinkType::LinuxSll if frame.len() >= 16 => (16, Some(ether(14)?)),
        LinkType::LinuxSll2 if frame.len() >= 20 => (20, Some(ether(0)?)),
        LinkType::RawIp => (0, None),
        LinkType::Loopback => (4, None),
        _ => return None,
    };
    let ip = frame.get(ip_start..)?;
    let version = ip.first()? >> 4;
    if announced.is_some_and(|v| v != version) {
        return None; // an EtherType that contradicts the header: the general path judges it
    }
    let (src_ip, dst_ip, udp) = match version {
        4 => {
            let ihl = usize::from(ip[0] & 0x0f) * 4;
            if ip.len() < 20 || ihl < 20 || ip[9] != 17 || be16(ip, 6) & 0x3fff != 0 {
                return None;
            }
            let total = usize::from(be16(ip, 2));
            if total < ihl + 8 || total > ip.len() {
                return None;
            }
            let src = std::net::Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
            let dst = std::net::Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
            (IpAddr::V4(src), IpAddr::V4(dst), &ip[ihl..total])
        }
        6 => {
            if ip.len() < 48 || ip[6] != 17 {
                return None;
            }
            let total = 40 + usize::from(be16(ip, 4));
            if total < 48 || total > ip.len() {
                return None;
            }
            let src: [u8; 16] = ip[8..24].try_into().ok()?;
            let dst: [u8; 16] = ip[24..40].try_into().ok()?;
            (IpAddr::from(src), IpAddr::from(dst), &ip[40..total])
        }
        _ => return None,
    };
    let udp_len = usize::from(be16(udp, 4));
    if udp_len < 8 || udp_len > udp.len() {
        return None;
    }
    Some(UdpDatagram {
        src_ip,
        dst_ip,
        src_port: be16(udp, 0),
        dst_port: be16(udp, 2),
        vlan: Vlan::default(),
        payload: &udp[8..udp_len],
        truncated: false,
    })
}

/// SLL2: protocol type (2), reserved (2), interface index (4), ARPHRD (2), packet type (1),
/// address length (1), address (8); 20 bytes in all.
fn sll_split(frame: &[u8]) -> Option<(EtherType, &[u8])> {
    let proto = u16::from_be_bytes([*frame.get(14)?, *frame.get(15)?]);
    Some((EtherType(proto), frame.get(16..)?))
}

fn sll2_split(frame: &[u8]) -> Option<(EtherType, &[u8])> {
    let proto = u16::from_be_bytes([*frame.first()?, *frame.get(1)?]);
    Some((EtherType(proto), frame.get(20..)?))
}

fn vlan_of(ids: &[VlanId]) -> Vlan {
    Vlan { outer: ids.first().map(|v| v.value()), inner: ids.get(1).map(|v| v.value()) }
}

fn from_strict<'a>(s: &SlicedPacket<'a>) -> Result<UdpDatagram<'a>, Skip> {
    let (src_ip, dst_ip, fragmented) = match &s.net {
        Some(NetSlice::Ipv4(v4)) => {
            (IpAddr::V4(v4.header().source_addr()), IpAddr::V4(v4.header().destination_addr()), v4.is_payload_fragmented())
        }
        Some(NetSlice::Ipv6(v6)) => {
            (IpAddr::V6(v6.header().source_addr()), IpAddr::V6(v6.header().destination_addr()), v6.is_payload_fragmented())
        }
        Some(NetSlice::Arp(_)) | None => return Err(Skip::NotIp),
    };
    if fragmented {
        return Err(Skip::Fragment);
    }
    match &s.transport {
        Some(TransportSlice::Udp(udp)) => Ok(UdpDatagram {
            src_ip,
            dst_ip,
            src_port: udp.source_port(),
            dst_port: udp.destination_port(),
            vlan: if s.link_exts.is_empty() { Vlan::default() } else { vlan_of(&s.vlan_ids()) },
            payload: udp.payload(),
            truncated: false,
        }),
        _ => Err(Skip::NotUdp),
    }
}

fn decode_lax(link: LinkType, frame: &[u8]) -> Result<UdpDatagram<'_>, Skip> {
    let lax = match link {
        LinkType::Ethernet => LaxSlicedPacket::from_ethernet(frame).map_err(|_| Skip::Truncated)?,
        LinkType::LinuxSll => {
            // SLL v1: 16-byte header, protocol type in bytes 14..16.
            let proto = frame.get(14..16).ok_or(Skip::Truncated)?;
            let rest = frame.get(16..).ok_or(Skip::Truncated)?;
            LaxSlicedPacket::from_ether_type(EtherType(u16::from_be_bytes([proto[0], proto[1]])), rest)
        }
        LinkType::LinuxSll2 => {
            let (ether_type, rest) = sll2_split(frame).ok_or(Skip::Truncated)?;
            LaxSlicedPacket::from_ether_type(ether_type, rest)
        }
        LinkType::RawIp => LaxSlicedPacket::from_ip(frame).map_err(|_| Skip::Truncated)?,
        LinkType::Loopback => LaxSlicedPacket::from_ip(frame.get(4..).ok_or(Skip::Truncated)?).map_err(|_| Skip::Truncated)?,
    };
    let (src_ip, dst_ip, fragmented) = match &lax.net {
        Some(LaxNetSlice::Ipv4(v4)) => {
            (IpAddr::V4(v4.header().source_addr()), IpAddr::V4(v4.header().destination_addr()), v4.is_payload_fragmented())
        }
        Some(LaxNetSlice::Ipv6(v6)) => {
            (IpAddr::V6(v6.header().source_addr()), IpAddr::V6(v6.header().destination_addr()), v6.is_payload_fragmented())
        }
        Some(LaxNetSlice::Arp(_)) => return Err(Skip::NotIp),
        None => return Err(Skip::Truncated),
    };
    if fragmented {
        return Err(Skip::Fragment);
    }
    match &lax.transport {
        Some(TransportSlice::Udp(udp)) => Ok(UdpDatagram {
            src_ip,
            dst_ip,
            src_port: udp.source_port(),
            dst_port: udp.destination_port(),
            vlan: vlan_of(&lax.vlan_ids()),
            payload: udp.payload(),
            truncated: true,
        }),
        Some(_) => Err(Skip::NotUdp),
        None => Err(Skip::Truncated),
    }
}

#[cfg(test)]
mod tests {
    use etherparse::PacketBuilder;
    use proptest::prelude::*;

    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    /// Found by the `frame` fuzz target: `-i any` gives SLL v1 frames of loopback (ARPHRD 772),
    /// tun and WireGuard (65534) interfaces; their protocol field is still the EtherType, so a
    /// truncated NTP packet is the same truncated packet on any of them.
    #[test]
    fn sll_frames_of_any_arphrd_type_decode_alike() {
        let mut frame = unhex("000003040006020000000001000008004500004c0000400040110000c612010ac61200019c40007b0038000023");
        frame.extend([0; 47]);
        frame.truncate(frame.len() - 8);
        let mut ether = frame.clone();
        ether[2..4].copy_from_slice(&[0, 1]);
        let d = decode(LinkType::LinuxSll, &ether).unwrap();
        assert!(d.truncated);
        for arphrd in [772u16, 65534, 776] {
            frame[2..4].copy_from_slice(&arphrd.to_be_bytes());
            assert_eq!(decode(LinkType::LinuxSll, &frame), Ok(d), "ARPHRD {arphrd}");
        }
    }

    /// Found by the `frame` fuzz target: an EtherType that contradicts the IP version is a bad
    /// header on both paths, not a datagram on the fast one.
    #[test]
    fn an_ether_type_contradicting_the_ip_version_is_a_bad_header() {
        let mut frame = unhex("02000000000202000000000108006000000000381140");
        frame.extend(unhex("20010db800000000000000000001000a20010db80000000000000000000000019c40007b00380000"));
        frame.extend([0x23; 48]);
        assert_eq!(fast_path(LinkType::Ethernet, &frame), None);
        assert_eq!(decode(LinkType::Ethernet, &frame), decode_general(LinkType::Ethernet, &frame));
        assert!(decode(LinkType::Ethernet, &frame).is_err());
    }

    fn eth_udp(payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        PacketBuilder::ethernet2([1; 6], [2; 6])
            .ipv4([198, 18, 0, 2], [198, 18, 0, 1], 64)
            .udp(40000, 123)
            .write(&mut out, payload)
            .unwrap();
        out
    }

    #[test]
    fn ethernet_ipv4_udp() {
        let frame = eth_udp(&[0x23; 48]);
        let d = decode(LinkType::Ethernet, &frame).unwrap();
        assert_eq!(d.src_ip, "198.18.0.2".parse::<IpAddr>().unwrap());
        assert_eq!((d.src_port, d.dst_port, d.payload.len(), d.truncated), (40000, 123, 48, false));
        assert_eq!(d.vlan, Vlan::default());
    }

    #[test]
    fn vlan_and_qinq_ids_are_recorded() {
        let mut out = Vec::new();
        PacketBuilder::ethernet2([1; 6], [2; 6])
            .double_vlan(VlanId::try_new(100).unwrap(), VlanId::try_new(7).unwrap())
            .ipv6(
                [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
                [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
                64,
            )
            .udp(123, 123)
            .write(&mut out, &[0x1b; 48])
            .unwrap();
        let d = decode(LinkType::Ethernet, &out).unwrap();
        assert_eq!(d.vlan, Vlan { outer: Some(100), inner: Some(7) });
        assert_eq!(d.dst_ip, "2001:db8::1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn ipv6_extension_headers_are_skipped() {
        let payload = [0x23u8; 48];
        let mut ip = vec![0x60, 0, 0, 0];
        ip.extend_from_slice(&(8u16 + 8 + 48).to_be_bytes());
        ip.push(0); // next header: hop-by-hop options
        ip.push(64);
        ip.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        ip.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        ip.extend_from_slice(&[17, 0, 1, 4, 0, 0, 0, 0]); // HBH: next UDP, 8 bytes, PadN
        ip.extend_from_slice(&[0x9c, 0x40, 0, 123, 0, 56, 0, 0]);
        ip.extend_from_slice(&payload);
        assert_eq!(fast_path(LinkType::RawIp, &ip), None, "the fast path leaves extension headers to etherparse");
        let d = decode(LinkType::RawIp, &ip).unwrap();
        assert_eq!((d.src_port, d.dst_port, d.payload), (40000, 123, &payload[..]));
        assert_eq!(d.dst_ip, "2001:db8::1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn sll2_raw_and_loopback() {
        let frame = eth_udp(&[0x23; 48]);
        let ip = &frame[14..];
        let mut sll2 = vec![0x08, 0x00];
        sll2.extend_from_slice(&[0; 18]);
        sll2.extend_from_slice(ip);
        assert_eq!(decode(LinkType::LinuxSll2, &sll2).unwrap().dst_port, 123);
        assert_eq!(decode(LinkType::RawIp, ip).unwrap().dst_port, 123);
        let mut null = 2u32.to_le_bytes().to_vec();
        null.extend_from_slice(ip);
        assert_eq!(decode(LinkType::Loopback, &null).unwrap().src_port, 40000);
        let mut sll = vec![0, 0, 0, 1, 0, 6, 1, 2, 3, 4, 5, 6, 0, 0, 0x08, 0x00];
        sll.extend_from_slice(ip);
        assert_eq!(decode(LinkType::LinuxSll, &sll).unwrap().payload.len(), 48);
    }

    #[test]
    fn truncated_frames_keep_what_was_captured() {
        let frame = eth_udp(&[0x23; 100]);
        let d = decode(LinkType::Ethernet, &frame[..14 + 20 + 8 + 60]).unwrap();
        assert!(d.truncated);
        assert_eq!(d.payload.len(), 60);
        assert_eq!(decode(LinkType::Ethernet, &frame[..30]), Err(Skip::Truncated));
    }

    #[test]
    fn fragments_and_other_protocols_are_skipped() {
        let mut out = Vec::new();
        PacketBuilder::ethernet2([1; 6], [2; 6])
            .ipv4([198, 18, 0, 2], [198, 18, 0, 1], 64)
            .tcp(1, 123, 0, 1000)
            .write(&mut out, &[0; 10])
            .unwrap();
        assert_eq!(decode(LinkType::Ethernet, &out), Err(Skip::NotUdp));
        let mut frag = eth_udp(&[0x23; 48]);
        // Set "more fragments" in the IPv4 flags and fix the checksum is not needed for slicing.
        frag[14 + 6] |= 0x20;
        assert_eq!(decode(LinkType::Ethernet, &frag), Err(Skip::Fragment));
        let arp = [0xffu8; 12].iter().copied().chain([0x08, 0x06]).chain([0; 28]).collect::<Vec<_>>();
        assert_eq!(decode(LinkType::Ethernet, &arp), Err(Skip::NotIp));
    }

    fn built_frame(v6: bool, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let b = PacketBuilder::ethernet2([1; 6], [2; 6]);
        let b = if v6 {
            b.ipv6(
                [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
                [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
                64,
            )
        } else {
            b.ipv4([198, 18, 0, 2], [198, 18, 0, 1], 64)
        };
        b.udp(sport, dport).write(&mut out, payload).unwrap();
        out
    }

    proptest! {
        #[test]
        fn fast_path_agrees_with_etherparse(
            v6 in any::<bool>(),
            sport in any::<u16>(),
            dport in any::<u16>(),
            payload in proptest::collection::vec(any::<u8>(), 0..120),
            mutations in proptest::collection::vec((0usize..200, any::<u8>()), 0..4),
            cut in 0usize..200,
            link in 0usize..5,
        ) {
            let mut frame = built_frame(v6, sport, dport, &payload);
            for (at, byte) in mutations {
                if at < frame.len() {
                    frame[at] = byte;
                }
            }
            let eth = frame.clone();
            let mut sll = vec![0, 0, 0, 1, 0, 6, 1, 2, 3, 4, 5, 6, 0, 0];
            sll.extend_from_slice(&eth[12..]);
            let mut sll2 = eth[12..14].to_vec();
            sll2.extend_from_slice(&[0; 18]);
            sll2.extend_from_slice(&eth[14..]);
            let mut null = 2u32.to_le_bytes().to_vec();
            null.extend_from_slice(&eth[14..]);
            let (link, mut bytes) = match link {
                0 => (LinkType::Ethernet, eth),
                1 => (LinkType::LinuxSll, sll),
                2 => (LinkType::LinuxSll2, sll2),
                3 => (LinkType::RawIp, eth[14..].to_vec()),
                _ => (LinkType::Loopback, null),
            };
            bytes.truncate(bytes.len().saturating_sub(cut % 8));
            if let Some(fast) = fast_path(link, &bytes) {
                prop_assert_eq!(Ok(fast), decode_general(link, &bytes));
            }
        }

        #[test]
        fn arbitrary_frames_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200), link in 0usize..5) {
            let link = [LinkType::Ethernet, LinkType::LinuxSll, LinkType::LinuxSll2, LinkType::RawIp, LinkType::Loopback][link];
            let _ = decode(link, &bytes);
        }
    }
}
