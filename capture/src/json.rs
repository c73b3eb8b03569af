//! The JSON-lines view of records: what `--output jsonl` prints, one object per line.
//!
//! Field names follow the seed's `ntp_clients` columns wherever one exists (`client_ip`,
//! `ntp_version`, `client_to_server_latency_seconds`, …). The flat seed fields describe the
//! server's response (or the request when unanswered), exactly like the seed's rows; the nested
//! `request` and `response` objects carry every header field of each packet. Durations are
//! seconds; times are RFC 3339 with nanoseconds; NTP timestamps are also given raw (hex) because
//! randomised or unset ones have no meaningful date.

use std::io::{self, Write};

use ntp_wire::{
    Control, Observation, PacketSummary, Private, Record, Session, SessionOutcome,
    time::{format_rfc3339, ntp_short_to_seconds, ntp_to_unix_ns},
};
use serde::Serialize;

/// Context that records do not carry themselves.
#[derive(Debug, Clone, Copy)]
pub struct LineContext<'a> {
    /// Agent id.
    pub host: &'a str,
    /// Interface the record was captured on.
    pub interface: &'a str,
}

/// Writes one record as a JSON line.
pub fn write_record(w: &mut impl Write, ctx: LineContext<'_>, record: &Record) -> io::Result<()> {
    match record {
        Record::Session(s) => serde_json::to_writer(&mut *w, &SessionLine::new(ctx, s)),
        Record::Observation(o) => serde_json::to_writer(&mut *w, &ObservationLine::new(ctx, o)),
    }
    .map_err(io::Error::other)?;
    w.write_all(b"\n")
}

#[derive(Serialize)]
struct SessionLine<'a> {
    record_type: &'static str,
    session_id: String,
    outcome: &'static str,
    host: &'a str,
    interface_name: &'a str,
    vlan_id: Option<u16>,
    inner_vlan_id: Option<u16>,
    client_ip: String,
    client_port: u16,
    server_ip: String,
    server_port: u16,
    session_timestamp: String,
    request_time: String,
    response_time: Option<String>,
    ntp_version: u8,
    leap_indicator: u8,
    stratum: u8,
    poll_interval: i8,
    precision: i8,
    root_delay: f64,
    root_dispersion: f64,
    reference_id: String,
    kiss_code: Option<String>,
    reference_timestamp: Option<String>,
    origin_timestamp: Option<String>,
    receive_timestamp: Option<String>,
    transmit_timestamp: Option<String>,
    client_to_server_latency_seconds: Option<f64>,
    server_processing_time_seconds: Option<f64>,
    total_process_time_seconds: Option<f64>,
    timestamp_gap_seconds: Option<f64>,
    packet_length: u16,
    retransmits: u32,
    t1_randomized: bool,
    interleaved: bool,
    nts: bool,
    request: PacketLine,
    response: Option<PacketLine>,
}

impl<'a> SessionLine<'a> {
    fn new(ctx: LineContext<'a>, s: &Session) -> Self {
        let main = s.response.as_ref().unwrap_or(&s.request);
        let pivot = s.response_time_ns.unwrap_or(s.request_time_ns);
        let ts = |v: u64| (v != 0).then(|| format_rfc3339(ntp_to_unix_ns(v, pivot)));
        Self {
            record_type: "session",
            session_id: format!("{:016x}", s.id),
            outcome: match s.outcome {
                SessionOutcome::Answered => "answered",
                SessionOutcome::Unanswered => "unanswered",
            },
            host: ctx.host,
            interface_name: ctx.interface,
            vlan_id: s.vlan_id,
            inner_vlan_id: s.inner_vlan_id,
            client_ip: s.client_ip.to_string(),
            client_port: s.client_port,
            server_ip: s.server_ip.to_string(),
            server_port: s.server_port,
            session_timestamp: format_rfc3339(s.request_time_ns),
            request_time: format_rfc3339(s.request_time_ns),
            response_time: s.response_time_ns.map(format_rfc3339),
            ntp_version: main.version,
            leap_indicator: main.leap,
            stratum: main.stratum,
            poll_interval: main.poll,
            precision: main.precision,
            root_delay: ntp_short_to_seconds(main.root_delay),
            root_dispersion: ntp_short_to_seconds(main.root_dispersion),
            reference_id: main.reference_id_text(),
            kiss_code: s.kiss_code(),
            reference_timestamp: ts(main.reference_ts),
            origin_timestamp: ts(main.origin_ts),
            receive_timestamp: ts(main.receive_ts),
            transmit_timestamp: ts(main.transmit_ts),
            client_to_server_latency_seconds: s.client_to_server_latency_s,
            server_processing_time_seconds: s.server_processing_time_s,
            total_process_time_seconds: s.total_process_time_s,
            timestamp_gap_seconds: s.timestamp_gap_s(),
            packet_length: main.length,
            retransmits: s.retransmits,
            t1_randomized: s.t1_randomized,
            interleaved: s.interleaved,
            nts: s.uses_nts(),
            request: PacketLine::new(&s.request, s.request_time_ns),
            response: s.response.as_ref().map(|r| PacketLine::new(r, pivot)),
        }
    }
}

#[derive(Serialize)]
struct PacketLine {
    length: u16,
    leap_indicator: u8,
    version: u8,
    mode: u8,
    stratum: u8,
    poll: i8,
    precision: i8,
    root_delay: f64,
    root_dispersion: f64,
    reference_id: String,
    reference_id_raw: String,
    reference_timestamp: Option<String>,
    origin_timestamp: Option<String>,
    receive_timestamp: Option<String>,
    transmit_timestamp: Option<String>,
    timestamps_raw: [String; 4],
    extensions: Vec<ExtensionLine>,
    mac: Option<MacLine>,
    bad_trailer: bool,
}

#[derive(Serialize)]
struct ExtensionLine {
    field_type: u16,
    length: u16,
    name: Option<&'static str>,
}

#[derive(Serialize)]
struct MacLine {
    key_id: u32,
    digest_len: u8,
}

impl PacketLine {
    fn new(p: &PacketSummary, pivot: i64) -> Self {
        let ts = |v: u64| (v != 0).then(|| format_rfc3339(ntp_to_unix_ns(v, pivot)));
        Self {
            length: p.length,
            leap_indicator: p.leap,
            version: p.version,
            mode: p.mode,
            stratum: p.stratum,
            poll: p.poll,
            precision: p.precision,
            root_delay: ntp_short_to_seconds(p.root_delay),
            root_dispersion: ntp_short_to_seconds(p.root_dispersion),
            reference_id: p.reference_id_text(),
            reference_id_raw: format!("{:08x}", p.reference_id),
            reference_timestamp: ts(p.reference_ts),
            origin_timestamp: ts(p.origin_ts),
            receive_timestamp: ts(p.receive_ts),
            transmit_timestamp: ts(p.transmit_ts),
            timestamps_raw: [p.reference_ts, p.origin_ts, p.receive_ts, p.transmit_ts].map(|v| format!("{v:016x}")),
            extensions: p
                .extensions
                .iter()
                .map(|e| ExtensionLine { field_type: e.field_type, length: e.length, name: e.nts_name() })
                .collect(),
            mac: p.mac.map(|m| MacLine { key_id: m.key_id, digest_len: m.digest_len }),
            bad_trailer: p.bad_trailer,
        }
    }
}

#[derive(Serialize)]
struct ObservationLine<'a> {
    record_type: &'static str,
    observation_id: String,
    host: &'a str,
    interface_name: &'a str,
    time: String,
    vlan_id: Option<u16>,
    inner_vlan_id: Option<u16>,
    client_ip: String,
    client_port: u16,
    server_ip: String,
    server_port: u16,
    direction: &'static str,
    ntp_version: u8,
    mode: u8,
    mode_name: &'static str,
    leap_indicator: u8,
    packet_length: u16,
    header: Option<PacketLine>,
    control: Option<ControlLine>,
    private: Option<PrivateLine>,
}

#[derive(Serialize)]
struct ControlLine {
    response: bool,
    error: bool,
    more: bool,
    opcode: u8,
    opcode_name: &'static str,
    sequence: u16,
    status: u16,
    association_id: u16,
    offset: u16,
    count: u16,
}

#[derive(Serialize)]
struct PrivateLine {
    response: bool,
    more: bool,
    auth: bool,
    sequence: u8,
    implementation: u8,
    request_code: u8,
    monlist: bool,
    error: u8,
    items: u16,
    item_size: u16,
}

impl<'a> ObservationLine<'a> {
    fn new(ctx: LineContext<'a>, o: &Observation) -> Self {
        Self {
            record_type: "observation",
            observation_id: format!("{:016x}", o.id),
            host: ctx.host,
            interface_name: ctx.interface,
            time: format_rfc3339(o.time_ns),
            vlan_id: o.vlan_id,
            inner_vlan_id: o.inner_vlan_id,
            client_ip: o.client_ip.to_string(),
            client_port: o.client_port,
            server_ip: o.server_ip.to_string(),
            server_port: o.server_port,
            direction: if o.from_client { "from_client" } else { "to_client" },
            ntp_version: o.version,
            mode: o.mode,
            mode_name: mode_name(o.mode),
            leap_indicator: o.leap,
            packet_length: o.length,
            header: o.header.as_ref().map(|h| PacketLine::new(h, o.time_ns)),
            control: o.control.as_ref().map(control_line),
            private: o.private.as_ref().map(private_line),
        }
    }
}

fn control_line(c: &Control) -> ControlLine {
    ControlLine {
        response: c.response,
        error: c.error,
        more: c.more,
        opcode: c.opcode,
        opcode_name: control_opcode_name(c.opcode),
        sequence: c.sequence,
        status: c.status,
        association_id: c.association_id,
        offset: c.offset,
        count: c.count,
    }
}

fn private_line(m: &Private) -> PrivateLine {
    PrivateLine {
        response: m.response,
        more: m.more,
        auth: m.auth,
        sequence: m.sequence,
        implementation: m.implementation,
        request_code: m.request_code,
        monlist: m.is_monlist(),
        error: m.error,
        items: m.items,
        item_size: m.item_size,
    }
}

/// RFC 5905 mode names.
pub fn mode_name(mode: u8) -> &'static str {
    match mode {
        0 => "reserved",
        1 => "symmetric_active",
        2 => "symmetric_passive",
        3 => "client",
        4 => "server",
        5 => "broadcast",
        6 => "control",
        _ => "private",
    }
}

/// RFC 9327 / ntpq control opcodes.
fn control_opcode_name(op: u8) -> &'static str {
    match op {
        1 => "readstat",
        2 => "readvar",
        3 => "writevar",
        4 => "readclock",
        5 => "writeclock",
        6 => "setrap",
        7 => "asyncmsg",
        8 => "configure",
        9 => "saveconfig",
        10 => "read_mru",
        11 => "read_ordlist",
        12 => "req_nonce",
        31 => "unsettrap",
        _ => "unknown",
    }
}
