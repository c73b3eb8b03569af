//! A minimal pcap and pcapng reader for the seed generator: link type, capture time and bytes of
//! each frame.
//!
//! Enough for the shared corpus (classic pcap in either byte order with micro- or nanosecond
//! stamps; pcapng section, interface, enhanced and simple packet blocks, `if_tsresol`). It is not
//! used on the fuzzing path and does not need to be robust against hostile files: it stops at
//! the first block it cannot read.

/// One captured frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// pcap link-type number.
    pub dlt: i32,
    /// Capture time, Unix nanoseconds.
    pub time_ns: i64,
    /// Captured bytes.
    pub data: Vec<u8>,
}

fn u16_at(b: &[u8], at: usize, le: bool) -> Option<u16> {
    let a: [u8; 2] = b.get(at..at + 2)?.try_into().ok()?;
    Some(if le { u16::from_le_bytes(a) } else { u16::from_be_bytes(a) })
}

fn u32_at(b: &[u8], at: usize, le: bool) -> Option<u32> {
    let a: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
    Some(if le { u32::from_le_bytes(a) } else { u32::from_be_bytes(a) })
}

/// Every frame of a pcap or pcapng file, in file order; empty when the format is unknown.
pub fn frames(file: &[u8]) -> Vec<Frame> {
    match file.get(..4) {
        Some([0xd4, 0xc3, 0xb2, 0xa1]) => classic(file, true, 1_000),
        Some([0x4d, 0x3c, 0xb2, 0xa1]) => classic(file, true, 1),
        Some([0xa1, 0xb2, 0xc3, 0xd4]) => classic(file, false, 1_000),
        Some([0xa1, 0xb2, 0x3c, 0x4d]) => classic(file, false, 1),
        Some([0x0a, 0x0d, 0x0d, 0x0a]) => pcapng(file),
        _ => Vec::new(),
    }
}

fn classic(file: &[u8], le: bool, frac_ns: i64) -> Vec<Frame> {
    let mut out = Vec::new();
    let Some(dlt) = u32_at(file, 20, le) else { return out };
    // The low 16 bits are the link type; the rest may carry FCS flags.
    let dlt = (dlt & 0xffff) as i32;
    let mut at = 24;
    while let (Some(sec), Some(frac), Some(incl)) = (u32_at(file, at, le), u32_at(file, at + 4, le), u32_at(file, at + 8, le)) {
        let start = at + 16;
        let Some(data) = file.get(start..start + incl as usize) else { break };
        out.push(Frame { dlt, time_ns: i64::from(sec) * 1_000_000_000 + i64::from(frac) * frac_ns, data: data.to_vec() });
        at = start + incl as usize;
    }
    out
}

/// An interface of a pcapng section: link type and timestamp units per second.
#[derive(Clone, Copy, Debug)]
struct Interface {
    dlt: i32,
    units_per_sec: u64,
}

fn pcapng(file: &[u8]) -> Vec<Frame> {
    let mut out = Vec::new();
    let mut le = true;
    let mut ifaces: Vec<Interface> = Vec::new();
    let mut at = 0;
    while let Some(kind) = u32_at(file, at, le) {
        if kind == 0x0a0d_0d0a {
            // Section header: the byte-order magic decides the order of everything after it.
            le = file.get(at + 8..at + 12) == Some(&[0x4d, 0x3c, 0x2b, 0x1a]);
            ifaces.clear();
        }
        let Some(len) = u32_at(file, at + 4, le).map(|l| l as usize) else { break };
        let Some(body) = file.get(at + 8..(at + len).saturating_sub(4)) else { break };
        if len < 12 {
            break;
        }
        match kind {
            1 => ifaces.push(interface(body, le)),
            6 => {
                let (Some(id), Some(hi), Some(lo), Some(cap)) =
                    (u32_at(body, 0, le), u32_at(body, 4, le), u32_at(body, 8, le), u32_at(body, 12, le))
                else {
                    break;
                };
                let Some(iface) = ifaces.get(id as usize) else { break };
                let Some(data) = body.get(20..20 + cap as usize) else { break };
                let units = (u64::from(hi) << 32) | u64::from(lo);
                let secs = units / iface.units_per_sec;
                let sub = units % iface.units_per_sec;
                let time_ns =
                    secs.saturating_mul(1_000_000_000).saturating_add(sub.saturating_mul(1_000_000_000) / iface.units_per_sec) as i64;
                out.push(Frame { dlt: iface.dlt, time_ns, data: data.to_vec() });
            }
            3 => {
                let (Some(iface), Some(data)) = (ifaces.first(), body.get(4..)) else { break };
                let time_ns = out.last().map_or(0, |f: &Frame| f.time_ns);
                out.push(Frame { dlt: iface.dlt, time_ns, data: data.to_vec() });
            }
            _ => {}
        }
        at += len;
    }
    out
}

fn interface(body: &[u8], le: bool) -> Interface {
    let dlt = i32::from(u16_at(body, 0, le).unwrap_or(1));
    let mut units_per_sec = 1_000_000;
    let mut at = 8;
    while let (Some(code), Some(len)) = (u16_at(body, at, le), u16_at(body, at + 2, le)) {
        if code == 0 {
            break;
        }
        if code == 9
            && let Some(&res) = body.get(at + 4)
        {
            let exp = u32::from(res & 0x7f);
            units_per_sec = if res & 0x80 == 0 { 10u64.saturating_pow(exp) } else { 1u64 << exp.min(63) };
        }
        at += 4 + usize::from(len).div_ceil(4) * 4;
    }
    Interface { dlt, units_per_sec: units_per_sec.max(1) }
}
