//! Request/response pairing: a sans-IO state machine with bounded memory.
//!
//! A session is a client request (mode 3) and the server response (mode 4) on the same flow
//! (client address:port, server address:port) whose **origin timestamp equals the request's
//! transmit timestamp** — the echo check of RFC 5905 and ntpd-rs's `valid_server_response`.
//! Reference ids and arrival order are never used.
//!
//! Interleaved mode (RFC 9769, chrony `xleave`): the client's request carries, in its receive
//! field, the time it received the previous response, and the server's interleaved reply echoes
//! that value in its origin field. Such a reply is paired with the request whose receive
//! timestamp it echoes; its transmit timestamp belongs to the *previous* response, so no
//! server processing time is derived from it.
//!
//! Time is an argument: [`Pairer::expire`] takes the current capture time, and nothing here reads
//! a clock. Memory is bounded by [`PairingConfig::max_outstanding`] (oldest evicted first) and
//! [`PairingConfig::max_per_flow`] (a flood from one client port cannot fill the table).
//!
//! Layout: pending requests live in a slab of fixed-size slots (about 120 bytes each) linked in
//! insertion order (for expiry and eviction) and per flow (for matching); a hash table maps each
//! flow to its newest slot. Extension fields and MACs of requests are kept in a side table only
//! for the requests that carry them.

use std::net::IpAddr;

use foldhash::fast::FixedState;
use hashbrown::{HashMap, HashTable};
use ntp_wire::{Extension, Mac, Record, Session, SessionOutcome, id::stable_hash, time};

use crate::{
    frame::Vlan,
    ntp::{HEADER_LEN, Header},
    stats::Counters,
    summary,
};

/// Limits and thresholds of the pairing state machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PairingConfig {
    /// A request with no response after this many nanoseconds is unanswered (the seed's
    /// `timeout`, default 2 s).
    pub timeout_ns: i64,
    /// At most this many requests are pending; beyond it the oldest is evicted and counted.
    pub max_outstanding: usize,
    /// At most this many requests are pending per flow; beyond it the flow's oldest is evicted.
    pub max_per_flow: usize,
    /// A request whose T1 is further than this from its capture time has a randomised (or badly
    /// wrong) T1; no client-to-server latency is reported for it.
    pub max_t1_skew_ns: i64,
    /// Seed of the flow hash (the shell passes a random one; a fixed one keeps tests stable).
    pub hash_seed: u64,
}

impl Default for PairingConfig {
    fn default() -> Self {
        Self {
            timeout_ns: 2_000_000_000,
            max_outstanding: 1_000_000,
            max_per_flow: 16,
            max_t1_skew_ns: 10_000_000_000,
            hash_seed: 0x6e74_7073_636f_7065,
        }
    }
}

/// The endpoints of a client/server exchange.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flow {
    /// Client address.
    pub client_ip: IpAddr,
    /// Client port.
    pub client_port: u16,
    /// Server address.
    pub server_ip: IpAddr,
    /// Server port.
    pub server_port: u16,
}

impl Flow {
    fn words(&self) -> (u128, u128, u32) {
        let ip = |ip: IpAddr| match ip {
            // A tag bit keeps IPv4 apart from IPv4-mapped IPv6 in the hash (equality does anyway).
            IpAddr::V4(v4) => u128::from(u32::from(v4)) | (1 << 127),
            IpAddr::V6(v6) => u128::from(v6),
        };
        (ip(self.client_ip), ip(self.server_ip), (u32::from(self.client_port) << 16) | u32::from(self.server_port))
    }
}

impl std::hash::Hash for Flow {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        let (a, b, ports) = self.words();
        h.write_u128(a);
        h.write_u128(b);
        h.write_u32(ports);
    }
}

/// A parsed packet with the context the pairer needs.
#[derive(Clone, Copy, Debug)]
pub struct Packet<'a> {
    /// Capture time, Unix nanoseconds.
    pub time_ns: i64,
    /// The flow, oriented client → server.
    pub flow: Flow,
    /// VLAN tags of the frame.
    pub vlan: Vlan,
    /// The NTP payload (at least [`HEADER_LEN`] bytes).
    pub payload: &'a [u8],
    /// The parsed header.
    pub header: &'a Header<'a>,
    /// The body had a defect.
    pub bad_trailer: bool,
}

const NIL: u32 = u32::MAX;
const NO_VLAN: u16 = u16::MAX;
const FLAG_SIDE: u8 = 1;
const FLAG_BAD_TRAILER: u8 = 2;
const FLAG_T1_RANDOM: u8 = 4;

/// One pending request. Kept small: this is what 1 M outstanding requests cost.
#[derive(Clone, Debug)]
struct Slot {
    flow: Flow,
    /// The request's 48-byte header, raw.
    header: [u8; HEADER_LEN],
    first_ns: i64,
    /// Capture time of the latest retransmission, in microseconds after `first_ns`.
    last_delta_us: u32,
    length: u16,
    vlan: [u16; 2],
    retransmits: u16,
    flags: u8,
    /// Next older request of the same flow.
    flow_next: u32,
    /// Insertion-order list (doubles as the free list through `next`).
    prev: u32,
    next: u32,
}

impl Slot {
    fn t1(&self) -> u64 {
        u64::from_be_bytes(self.header[40..48].try_into().unwrap_or_default())
    }

    fn rx(&self) -> u64 {
        u64::from_be_bytes(self.header[32..40].try_into().unwrap_or_default())
    }
}

/// Extension fields and MAC of a pending request (only for requests that carry them).
#[derive(Clone, Debug, Default)]
struct SideInfo {
    extensions: Vec<Extension>,
    mac: Option<Mac>,
}

/// The pairing state machine. One per capture source (interface or file).
#[derive(Debug)]
pub struct Pairer {
    cfg: PairingConfig,
    hasher: FixedState,
    slots: Vec<Slot>,
    table: HashTable<u32>,
    side: HashMap<u32, SideInfo, FixedState>,
    head: u32,
    tail: u32,
    free: u32,
    len: usize,
}

impl Pairer {
    /// Creates an empty pairer.
    pub fn new(cfg: PairingConfig) -> Self {
        Self {
            hasher: FixedState::with_seed(cfg.hash_seed),
            side: HashMap::with_hasher(FixedState::with_seed(cfg.hash_seed ^ 0x5eed)),
            cfg,
            slots: Vec::new(),
            table: HashTable::new(),
            head: NIL,
            tail: NIL,
            free: NIL,
            len: 0,
        }
    }

    /// Requests pending right now.
    pub fn pending(&self) -> usize {
        self.len
    }

    /// Bytes of heap held by the pending state (slab, hash table, side table), an estimate.
    pub fn heap_bytes(&self) -> usize {
        self.slots.capacity() * size_of::<Slot>()
            + self.table.capacity() * (size_of::<u32>() + 1)
            + self.side.capacity() * (size_of::<(u32, SideInfo)>() + 1)
    }

    fn hash(&self, flow: &Flow) -> u64 {
        use std::hash::BuildHasher;
        self.hasher.hash_one(flow)
    }

    fn find_flow(&self, hash: u64, flow: &Flow) -> Option<u32> {
        let slots = &self.slots;
        self.table.find(hash, |&i| slots[i as usize].flow == *flow).copied()
    }

    /// Handles a client request (mode 3).
    pub fn request(&mut self, p: &Packet<'_>, counters: &mut Counters) {
        let t1 = p.header.transmit_ts;
        let hash = self.hash(&p.flow);
        let head = self.find_flow(hash, &p.flow);
        // A retransmission repeats the transmit timestamp: one session, counted.
        let mut it = head.unwrap_or(NIL);
        let mut chain_len = 0;
        let mut oldest = NIL;
        while it != NIL {
            let s = &mut self.slots[it as usize];
            if s.t1() == t1 {
                s.retransmits = s.retransmits.saturating_add(1);
                let delta = (p.time_ns - s.first_ns).max(0) / 1000;
                s.last_delta_us = u32::try_from(delta).unwrap_or(u32::MAX);
                counters.retransmits += 1;
                return;
            }
            chain_len += 1;
            oldest = it;
            it = s.flow_next;
        }
        counters.requests += 1;
        if chain_len >= self.cfg.max_per_flow.max(1) {
            self.remove_hashed(oldest, hash);
            counters.evicted_per_flow += 1;
        }
        if self.len >= self.cfg.max_outstanding.max(1) {
            self.remove(self.head);
            counters.evicted += 1;
        }
        let t1_random = {
            let t1_ns = time::ntp_to_unix_ns(t1, p.time_ns);
            (t1_ns - p.time_ns).abs() > self.cfg.max_t1_skew_ns
        };
        if t1_random {
            counters.t1_randomized += 1;
        }
        let extensions = summary::extensions(p.header);
        let mac = summary::mac(p.header);
        let has_side = !extensions.is_empty() || mac.is_some();
        let mut header = [0u8; HEADER_LEN];
        header.copy_from_slice(&p.payload[..HEADER_LEN]);
        let slot = Slot {
            flow: p.flow,
            header,
            first_ns: p.time_ns,
            last_delta_us: 0,
            length: u16::try_from(p.payload.len()).unwrap_or(u16::MAX),
            vlan: [p.vlan.outer.unwrap_or(NO_VLAN), p.vlan.inner.unwrap_or(NO_VLAN)],
            retransmits: 0,
            flags: (u8::from(has_side) * FLAG_SIDE) | (u8::from(p.bad_trailer) * FLAG_BAD_TRAILER) | (u8::from(t1_random) * FLAG_T1_RANDOM),
            flow_next: self.find_flow(hash, &p.flow).unwrap_or(NIL),
            prev: self.tail,
            next: NIL,
        };
        let idx = self.alloc(slot);
        if has_side {
            self.side.insert(idx, SideInfo { extensions, mac });
        }
        // Link at the tail of the insertion list.
        if self.tail == NIL {
            self.head = idx;
        } else {
            self.slots[self.tail as usize].next = idx;
        }
        self.tail = idx;
        // Make this slot the flow's head.
        let flow = p.flow;
        let (slots, hasher) = (&self.slots, &self.hasher);
        match self.table.find_mut(hash, |&i| slots[i as usize].flow == flow) {
            Some(h) => *h = idx,
            None => {
                self.table.insert_unique(hash, idx, |&i| {
                    use std::hash::BuildHasher;
                    hasher.hash_one(slots[i as usize].flow)
                });
            }
        }
        self.len += 1;
    }

    /// Handles a server response (mode 4); pushes the answered session to `out` when it pairs.
    pub fn response(&mut self, p: &Packet<'_>, counters: &mut Counters, out: &mut Vec<Record>) {
        counters.responses += 1;
        let origin = p.header.origin_ts;
        let hash = self.hash(&p.flow);
        let Some(head) = self.find_flow(hash, &p.flow) else {
            counters.orphan_responses += 1;
            return;
        };
        let mut found = None;
        let mut it = head;
        while it != NIL {
            let s = &self.slots[it as usize];
            if s.t1() == origin {
                found = Some((it, false));
                break;
            }
            it = s.flow_next;
        }
        if found.is_none() && origin != 0 {
            let mut it = head;
            while it != NIL {
                let s = &self.slots[it as usize];
                if s.rx() == origin {
                    found = Some((it, true));
                    break;
                }
                it = s.flow_next;
            }
        }
        let Some((idx, interleaved)) = found else {
            counters.mismatched_responses += 1;
            return;
        };
        let session = self.session(idx, Some((p, interleaved)));
        counters.answered += 1;
        if interleaved {
            counters.interleaved += 1;
        }
        if session.response.as_ref().is_some_and(|r| r.stratum == 0) {
            counters.kiss_of_death += 1;
        }
        self.remove_hashed(idx, hash);
        out.push(Record::Session(session));
    }

    /// Emits every request pending for longer than the timeout at capture time `now_ns` as an
    /// unanswered session.
    pub fn expire(&mut self, now_ns: i64, counters: &mut Counters, out: &mut Vec<Record>) {
        while self.head != NIL {
            let idx = self.head;
            if now_ns.saturating_sub(self.slots[idx as usize].first_ns) <= self.cfg.timeout_ns {
                break;
            }
            out.push(Record::Session(self.session(idx, None)));
            counters.unanswered += 1;
            self.remove(idx);
        }
    }

    /// Emits every pending request as unanswered (used only when the operator asks for it on exit).
    pub fn flush(&mut self, counters: &mut Counters, out: &mut Vec<Record>) {
        self.expire(i64::MAX, counters, out);
    }

    fn alloc(&mut self, slot: Slot) -> u32 {
        if self.free == NIL {
            if self.slots.len() == self.slots.capacity() {
                // Grow in bounded steps rather than doubling, so capacity tracks the limit.
                let step = self.slots.len().clamp(1024, 1 << 18);
                let room = self.cfg.max_outstanding.max(1) - self.slots.len().min(self.cfg.max_outstanding.max(1));
                self.slots.reserve_exact(step.min(room.max(1)));
            }
            self.slots.push(slot);
            (self.slots.len() - 1) as u32
        } else {
            let idx = self.free;
            self.free = self.slots[idx as usize].next;
            self.slots[idx as usize] = slot;
            idx
        }
    }

    /// Unlinks a slot from both lists and the table, and frees it.
    fn remove(&mut self, idx: u32) {
        let hash = self.hash(&self.slots[idx as usize].flow);
        self.remove_hashed(idx, hash);
    }

    /// [`Pairer::remove`] with the flow's hash already known.
    fn remove_hashed(&mut self, idx: u32, hash: u64) {
        let (prev, next, flow) = {
            let s = &self.slots[idx as usize];
            (s.prev, s.next, s.flow)
        };
        if prev == NIL {
            self.head = next;
        } else {
            self.slots[prev as usize].next = next;
        }
        if next == NIL {
            self.tail = prev;
        } else {
            self.slots[next as usize].prev = prev;
        }
        // Unlink from the flow chain.
        let flow_next = self.slots[idx as usize].flow_next;
        let slots = &self.slots;
        if let Ok(entry) = self.table.find_entry(hash, |&i| slots[i as usize].flow == flow) {
            let head = *entry.get();
            if head == idx {
                if flow_next == NIL {
                    entry.remove();
                } else {
                    *entry.into_mut() = flow_next;
                }
            } else {
                let mut it = head;
                while it != NIL {
                    let n = self.slots[it as usize].flow_next;
                    if n == idx {
                        self.slots[it as usize].flow_next = flow_next;
                        break;
                    }
                    it = n;
                }
            }
        }
        if self.slots[idx as usize].flags & FLAG_SIDE != 0 {
            self.side.remove(&idx);
        }
        self.slots[idx as usize].next = self.free;
        self.free = idx;
        self.len -= 1;
    }

    fn session(&self, idx: u32, response: Option<(&Packet<'_>, bool)>) -> Session {
        let s = &self.slots[idx as usize];
        let side = if s.flags & FLAG_SIDE != 0 { self.side.get(&idx) } else { None };
        let request = summary::from_raw_header(
            &s.header,
            s.length,
            side.map(|x| x.extensions.clone()).unwrap_or_default(),
            side.and_then(|x| x.mac),
            s.flags & FLAG_BAD_TRAILER != 0,
        );
        let t1_random = s.flags & FLAG_T1_RANDOM != 0;
        let last_request_ns = s.first_ns + i64::from(s.last_delta_us) * 1000;
        let mut session = Session {
            id: session_id(&s.flow, s.t1(), s.first_ns),
            outcome: SessionOutcome::Unanswered,
            client_ip: s.flow.client_ip,
            client_port: s.flow.client_port,
            server_ip: s.flow.server_ip,
            server_port: s.flow.server_port,
            vlan_id: (s.vlan[0] != NO_VLAN).then_some(s.vlan[0]),
            inner_vlan_id: (s.vlan[1] != NO_VLAN).then_some(s.vlan[1]),
            request_time_ns: s.first_ns,
            response_time_ns: None,
            request,
            response: None,
            retransmits: u32::from(s.retransmits),
            t1_randomized: t1_random,
            interleaved: false,
            client_to_server_latency_s: None,
            server_processing_time_s: None,
            total_process_time_s: None,
        };
        if let Some((p, interleaved)) = response {
            let resp = summary::from_header(p.payload.len(), p.payload[0], p.header, p.bad_trailer);
            let (t2_minus_t1, t3_minus_t2) = resp.server_intervals_s();
            // The request the server answered is the latest one captured before the response.
            let turnaround = if last_request_ns <= p.time_ns { last_request_ns } else { s.first_ns };
            session.outcome = SessionOutcome::Answered;
            session.response_time_ns = Some(p.time_ns);
            session.interleaved = interleaved;
            // An interleaved reply echoes the request's receive field, so T2 - T1 must use the
            // request's own T1 rather than the reply's origin.
            session.client_to_server_latency_s = (!t1_random && resp.receive_ts != 0)
                .then(|| if interleaved { time::ntp_diff_seconds(resp.receive_ts, s.t1()) } else { t2_minus_t1 });
            session.server_processing_time_s = (!interleaved && resp.receive_ts != 0 && resp.transmit_ts != 0).then_some(t3_minus_t2);
            session.total_process_time_s = Some((p.time_ns - turnaround) as f64 / 1e9);
            session.response = Some(resp);
        }
        session
    }
}

/// Deterministic session id: a stable word hash of the flow, the request transmit timestamp and
/// the request capture time.
pub fn session_id(flow: &Flow, t1: u64, first_ns: i64) -> u64 {
    let (a, b, ports) = flow.words();
    stable_hash(&[a as u64, (a >> 64) as u64, b as u64, (b >> 64) as u64, u64::from(ports), t1, first_ns as u64])
}

/// Size of one pending-request slot in bytes (for benchmarks and docs).
pub const fn slot_bytes() -> usize {
    size_of::<Slot>()
}

#[cfg(test)]
mod tests;
