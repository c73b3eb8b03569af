//! JSON of the client-row endpoints, written straight from the stored rows.
//!
//! poem-openapi's `Json<T>` turns every response into a `serde_json::Value` tree first and prints
//! it after: for a 100-row page of our ~60-field rows that is thousands of map inserts and string
//! allocations, and it was most of the cost of a page (docs/performance.md). The writers here
//! append the same documents to one buffer, with the keys as literals (nothing to escape) and
//! the numbers through itoa and serde_json's float printer. The contract stays where it was:
//! [`JsonBody<T>`] reports the schema of `T` ([`ClientPage`], [`ClientDetail`]), and the tests
//! below check, over generated rows, that the bytes parse to exactly what `T::to_json` gives.
//!
//! [`ClientPage`]: crate::dto::ClientPage
//! [`ClientDetail`]: crate::dto::ClientDetail

use std::marker::PhantomData;

use crate::dto::{ClientDetail, ClientPage, MetricStats, SortKey, SortOrder};
use crate::row::{ClientRow, WriteRow};
use entity::ntp_clients::Model;
use poem::{IntoResponse, Response};
use poem_openapi::{
    ApiResponse,
    payload::Payload,
    registry::{MetaMediaType, MetaResponse, MetaResponses, MetaSchemaRef, Registry},
    types::Type,
};

const CONTENT_TYPE: &str = "application/json; charset=utf-8";

/// A JSON response already serialised, documented with the schema of `T`.
pub struct JsonBody<T> {
    bytes: Vec<u8>,
    schema: PhantomData<fn() -> T>,
}

impl<T> JsonBody<T> {
    /// A document already written, which must have the shape of `T` (the tests check each
    /// writer against poem-openapi's own serialisation of `T`).
    fn from_bytes(bytes: Vec<u8>) -> Self {
        Self { bytes, schema: PhantomData }
    }

    /// The serialised document.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

impl<T> std::fmt::Debug for JsonBody<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "JsonBody({} bytes)", self.bytes.len())
    }
}

impl<T: Type> Payload for JsonBody<T> {
    const CONTENT_TYPE: &'static str = CONTENT_TYPE;

    fn schema_ref() -> MetaSchemaRef {
        T::schema_ref()
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
    }
}

impl<T> IntoResponse for JsonBody<T> {
    fn into_response(self) -> Response {
        Response::builder().content_type(CONTENT_TYPE).body(self.bytes)
    }
}

impl<T: Type> ApiResponse for JsonBody<T> {
    fn meta() -> MetaResponses {
        MetaResponses {
            responses: vec![MetaResponse {
                description: "",
                status: Some(200),
                status_range: None,
                content: vec![MetaMediaType { content_type: CONTENT_TYPE, schema: T::schema_ref() }],
                headers: vec![],
            }],
        }
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
    }
}

/// Room for one row: rows run 1.2–1.6 KB with every field set.
pub const ROW_BYTES: usize = 1_600;

/// Appends `s` as a JSON string: as is when nothing in it needs escaping (the usual case),
/// through serde_json's escaper otherwise.
fn string(out: &mut Vec<u8>, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else if serde_json::to_writer(&mut *out, s).is_err() {
        out.extend_from_slice(b"null"); // unreachable: writing to a Vec cannot fail
    }
}

/// Appends an integer.
pub(crate) fn int(out: &mut Vec<u8>, v: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

/// A float as serde_json writes it (so as poem-openapi did). Only finite values reach it: see
/// [`finite`].
pub(crate) fn float(out: &mut Vec<u8>, v: f64) {
    if serde_json::to_writer(&mut *out, &v).is_err() {
        out.extend_from_slice(b"null");
    }
}

/// poem-openapi leaves out a field whose float is NaN or infinite (JSON has no such number, and
/// the schema no `null`); so do we.
pub(crate) fn finite(v: Option<f64>) -> Option<f64> {
    v.filter(|f| f.is_finite())
}

/// A capture time as RFC 3339 text (ASCII digits and separators: nothing to escape).
fn time(out: &mut Vec<u8>, ns: i64) {
    out.push(b'"');
    out.extend_from_slice(&ntp_wire::time::rfc3339_bytes(ns));
    out.push(b'"');
}

/// Writes `,"name":` and the value when present; nothing when absent (as
/// `skip_serializing_if_is_none` does). Every key is a literal with nothing to escape.
macro_rules! field {
    ($out:ident, $name:literal, $v:expr, $write:expr) => {
        if let Some(v) = $v {
            $out.extend_from_slice(concat!(",\"", $name, "\":").as_bytes());
            $write($out, v);
        }
    };
}

/// Always-present field.
macro_rules! put {
    ($out:ident, $name:literal, $v:expr, $write:expr) => {
        $out.extend_from_slice(concat!(",\"", $name, "\":").as_bytes());
        $write($out, $v);
    };
}

/// [`crate::dto::MetricStats`] from the stored count, sum, min and max.
fn stats(out: &mut Vec<u8>, (count, sum, min, max): (i64, f64, Option<f64>, Option<f64>)) {
    out.extend_from_slice(b"{\"count\":");
    int(out, count);
    field!(out, "avg", finite(MetricStats::average(count, sum)), float);
    field!(out, "min", finite(min), float);
    field!(out, "max", finite(max), float);
    out.push(b'}');
}

/// Appends `true` or `false`.
pub(crate) fn boolean(out: &mut Vec<u8>, b: bool) {
    out.extend_from_slice(if b { b"true" } else { b"false" });
}

/// Appends one row as a [`crate::dto::ClientRecord`].
pub fn client(out: &mut Vec<u8>, m: &ClientRow<'_>) {
    out.extend_from_slice(b"{\"id\":");
    int(out, m.id);
    put!(out, "host", m.host, string);
    put!(out, "interface_name", m.interface_name, string);
    put!(out, "client_ip", m.client_ip, string);
    field!(out, "client_port", m.client_port, int);
    field!(out, "server_ip", m.server_ip, string);
    field!(out, "server_port", m.server_port, int);
    field!(out, "vlan_id", m.vlan_id, int);
    field!(out, "ntp_version", m.ntp_version, int);
    field!(out, "stratum", m.stratum, int);
    field!(out, "precision", m.precision, int);
    field!(out, "root_delay", finite(m.root_delay), float);
    field!(out, "root_dispersion", finite(m.root_dispersion), float);
    field!(out, "reference_id", m.reference_id, string);
    field!(out, "leap_indicator", m.leap_indicator, int);
    field!(out, "poll_interval", m.poll_interval, int);
    field!(out, "reference_timestamp", m.reference_timestamp, time);
    field!(out, "originate_timestamp", m.originate_timestamp, time);
    field!(out, "receive_timestamp", m.receive_timestamp, time);
    field!(out, "transmit_timestamp", m.transmit_timestamp, time);
    field!(out, "client_to_server_latency", finite(m.client_to_server_latency), float);
    field!(out, "server_processing_time", finite(m.server_processing_time), float);
    field!(out, "total_process_time", finite(m.total_process_time), float);
    field!(out, "packet_length", m.packet_length, int);
    field!(out, "session_timestamp", m.session_timestamp, time);
    put!(out, "first_seen", m.first_seen, time);
    put!(out, "last_seen", m.last_seen, time);
    put!(out, "session_count", m.session_count, int);
    put!(out, "answered_count", m.answered_count, int);
    put!(out, "unanswered_count", m.unanswered_count, int);
    put!(out, "kod_count", m.kod_count, int);
    field!(out, "last_kiss_code", m.last_kiss_code, string);
    field!(out, "last_kiss_at", m.last_kiss_at, time);
    put!(out, "retransmit_count", m.retransmit_count, int);
    put!(out, "interleaved_count", m.interleaved_count, int);
    put!(out, "t1_randomized_count", m.t1_randomized_count, int);
    put!(out, "t1_randomized", m.t1_randomized, boolean);
    put!(out, "nts_count", m.nts_count, int);
    put!(out, "extension_count", m.extension_count, int);
    put!(out, "mac_count", m.mac_count, int);
    put!(out, "observation_count", m.observation_count, int);
    put!(out, "control_count", m.control_count, int);
    put!(out, "private_count", m.private_count, int);
    put!(out, "monlist_count", m.monlist_count, int);
    field!(out, "last_mode", m.last_mode, int);
    put!(out, "client_to_server_latency_stats", (m.latency_count, m.latency_sum, m.latency_min, m.latency_max), stats);
    put!(out, "server_processing_time_stats", (m.processing_count, m.processing_sum, m.processing_min, m.processing_max), stats);
    put!(out, "total_process_time_stats", (m.turnaround_count, m.turnaround_sum, m.turnaround_min, m.turnaround_max), stats);
    put!(out, "created_at", m.created_at, time);
    put!(out, "updated_at", m.updated_at, time);
    out.push(b'}');
}

/// Appends rows as a JSON array of [`crate::dto::ClientRecord`].
fn rows(out: &mut Vec<u8>, rows: &[Model]) {
    out.push(b'[');
    for (i, m) in rows.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        client(out, &m.into());
    }
    out.push(b']');
}

/// A [`crate::dto::ClientPage`] written as its rows are read: [`WriteRow::row`] for each
/// row, then [`ClientPageWriter::finish`] with the rest of the page.
#[derive(Debug)]
pub struct ClientPageWriter {
    out: Vec<u8>,
    rows: usize,
}

impl ClientPageWriter {
    /// A page with room for `rows` rows.
    pub fn new(rows: usize) -> Self {
        let mut out = Vec::with_capacity(512 + rows * ROW_BYTES);
        out.extend_from_slice(b"{\"clients\":[");
        Self { out, rows: 0 }
    }

    /// The document: the rows written so far and the rest of the page.
    pub fn finish(self, rest: &ClientPageJson<'_>) -> JsonBody<ClientPage> {
        let mut out = self.out;
        out.push(b']');
        let o = &mut out;
        put!(o, "page", rest.page, int);
        put!(o, "page_size", rest.page_size, int);
        put!(o, "total", rest.total, int);
        put!(o, "total_exact", rest.total_exact, boolean);
        put!(o, "pages", rest.pages, int);
        field!(o, "next_cursor", rest.next_cursor, string);
        put!(o, "sort", rest.sort.as_str(), string);
        put!(o, "order", rest.order.as_str(), string);
        out.push(b'}');
        JsonBody::from_bytes(out)
    }
}

impl WriteRow for ClientPageWriter {
    fn row(&mut self, r: &ClientRow<'_>) {
        if self.rows > 0 {
            self.out.push(b',');
        }
        client(&mut self.out, r);
        self.rows += 1;
    }
}

/// The fields of a [`crate::dto::ClientPage`] besides its rows ([`ClientPageWriter`]).
#[derive(Debug)]
pub struct ClientPageJson<'a> {
    /// Page number (0 with a cursor).
    pub page: u32,
    /// Page size.
    pub page_size: u32,
    /// Matching clients.
    pub total: u64,
    /// Whether `total` is exact.
    pub total_exact: bool,
    /// Pages of `page_size`.
    pub pages: u64,
    /// Cursor of the next page.
    pub next_cursor: Option<&'a str>,
    /// Sort key.
    pub sort: SortKey,
    /// Order.
    pub order: SortOrder,
}

/// A [`crate::dto::ClientDetail`]: every row of one address.
#[derive(Debug)]
pub struct ClientDetailJson<'a> {
    /// The canonical address.
    pub client_ip: &'a str,
    /// Its rows.
    pub rows: &'a [Model],
}

impl ClientDetailJson<'_> {
    /// The document.
    pub fn to_body(&self) -> JsonBody<ClientDetail> {
        let mut out = Vec::with_capacity(256 + self.rows.len() * ROW_BYTES);
        out.extend_from_slice(b"{\"client_ip\":");
        string(&mut out, self.client_ip);
        let o = &mut out;
        o.extend_from_slice(b",\"records\":");
        rows(o, self.rows);
        put!(o, "total_sessions", self.rows.iter().map(|r| r.session_count).sum::<i64>(), int);
        put!(o, "first_seen", self.rows.iter().map(|r| r.first_seen).min().unwrap_or(0), time);
        put!(o, "last_seen", self.rows.iter().map(|r| r.last_seen).max().unwrap_or(0), time);
        out.push(b'}');
        JsonBody::from_bytes(out)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use poem_openapi::types::ToJSON;

    use super::*;
    use crate::dto::ClientRecord;

    /// Rows with every optional field present or absent, odd values (NaN and infinities too, which
    /// no JSON number can hold) and strings that need escaping.
    pub(crate) fn rows(n: usize) -> Vec<Model> {
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        (0..n)
            .map(|i| {
                let r = next();
                let some = |bit: u32| r >> bit & 1 == 1;
                let int = |bit: u32, v: i32| some(bit).then_some(v);
                let float = |bit: u32, v: f64| some(bit).then_some(v);
                let ts = |bit: u32, v: i64| some(bit).then_some(v);
                let f = (r % 1_000_003) as f64 * 1e-7 - 0.05;
                Model {
                    id: i as i64 * 7919 - 3,
                    host: format!("host-{i}.example.org"),
                    interface_name: if i % 3 == 0 { "eth0.100".into() } else { "we\"ird\\if\u{1}é".into() },
                    client_ip: if i % 2 == 0 { format!("198.18.{}.{}", i % 256, r % 256) } else { format!("2001:db8::{i:x}") },
                    client_ip_bin: some(1).then(|| vec![1, 2, 3]),
                    client_port: int(2, (r % 65536) as i32),
                    server_ip: some(3).then(|| "198.19.0.1".into()),
                    server_port: int(4, 123),
                    vlan_id: int(5, 100),
                    ntp_version: int(6, (r % 4) as i32 + 1),
                    stratum: int(7, 16),
                    precision: int(8, -24),
                    root_delay: float(9, f),
                    root_dispersion: if i % 5 == 0 { Some(f64::NAN) } else { float(10, -f) },
                    reference_id: some(11).then(|| if i % 4 == 1 { "=cmd|'x',\"".into() } else { "GPS\u{0}".into() }),
                    leap_indicator: int(12, 3),
                    poll_interval: int(13, -6),
                    reference_timestamp: ts(14, r as i64),
                    originate_timestamp: ts(15, -(r as i64 >> 3)),
                    receive_timestamp: ts(16, i64::MAX),
                    transmit_timestamp: ts(17, i64::MIN),
                    client_to_server_latency: float(18, f * 3.0),
                    server_processing_time: float(19, 1e-9),
                    total_process_time: if i % 11 == 0 { Some(f64::NEG_INFINITY) } else { float(20, 12345.678) },
                    packet_length: int(21, 48),
                    session_timestamp: ts(22, 1_559_246_614_027_454_000),
                    first_seen: r as i64 >> 1,
                    last_seen: r as i64 >> 2,
                    last_kiss_code: some(23).then(|| if i % 6 == 0 { "-R\r\nATE".into() } else { "RATE".into() }),
                    last_kiss_at: ts(33, 1_559_246_614_000_000_000 + (r % 1_000_000_000) as i64),
                    last_mode: int(24, 4),
                    t1_randomized: some(25),
                    session_count: (r >> 30) as i64,
                    answered_count: 1,
                    unanswered_count: 2,
                    kod_count: 3,
                    retransmit_count: 4,
                    interleaved_count: 5,
                    t1_randomized_count: 6,
                    nts_count: 7,
                    extension_count: 8,
                    mac_count: 9,
                    observation_count: 10,
                    symmetric_count: 11,
                    broadcast_count: 12,
                    control_count: 13,
                    private_count: 14,
                    monlist_count: i64::MAX,
                    latency_count: if some(26) { 3 } else { 0 },
                    latency_sum: if i % 13 == 0 { f64::NAN } else { f },
                    latency_min: float(27, f / 7.0),
                    latency_max: if i % 7 == 0 { Some(f64::INFINITY) } else { float(28, f * 9.0) },
                    processing_count: i64::from(some(29)),
                    processing_sum: 1e-6,
                    processing_min: float(30, 1e-6),
                    processing_max: float(31, 2e-6),
                    turnaround_count: 17,
                    turnaround_sum: 0.1,
                    turnaround_min: float(32, 0.001),
                    turnaround_max: float(34, 0.5),
                    created_at: -5,
                    updated_at: 0,
                }
            })
            .collect()
    }

    fn parsed(bytes: &[u8]) -> serde_json::Value {
        serde_json::from_slice(bytes).expect("valid JSON")
    }

    /// poem-openapi's value as text and back: serde_json parses floats to the nearest value only
    /// approximately (no `float_roundtrip`), so both sides go through the same print and parse.
    fn reference(v: Option<serde_json::Value>) -> serde_json::Value {
        parsed(&serde_json::to_vec(&v.expect("json")).expect("prints"))
    }

    /// The DTO poem-openapi would have printed for a page of `clients` with `rest`'s fields.
    fn reference_page(rest: &ClientPageJson<'_>, clients: Vec<ClientRecord>) -> ClientPage {
        ClientPage {
            clients,
            page: rest.page,
            page_size: rest.page_size,
            total: rest.total,
            total_exact: rest.total_exact,
            pages: rest.pages,
            next_cursor: rest.next_cursor.map(str::to_owned),
            sort: rest.sort,
            order: rest.order,
        }
    }

    #[test]
    fn a_page_is_what_poem_openapi_would_have_written() {
        let rows = rows(300);
        for (i, (sort, order)) in [SortKey::LastSeen, SortKey::ClientIp, SortKey::AvgLatency, SortKey::AvgProcessingTime, SortKey::KodCount]
            .into_iter()
            .zip([SortOrder::Asc, SortOrder::Desc].into_iter().cycle())
            .enumerate()
        {
            let next_cursor = (i % 2 == 0).then(|| format!("cursor-{i}"));
            let mut writer = ClientPageWriter::new(rows.len());
            for m in &rows {
                writer.row(&m.into());
            }
            let rest = ClientPageJson {
                page: 3,
                page_size: 300,
                total: 5_000_000,
                total_exact: i % 2 == 1,
                pages: 16_667,
                next_cursor: next_cursor.as_deref(),
                sort,
                order,
            };
            let fast = writer.finish(&rest);
            let clients = rows.iter().cloned().map(ClientRecord::from).collect();
            assert_eq!(parsed(fast.bytes()), reference(reference_page(&rest, clients).to_json()));
        }
    }

    #[test]
    fn an_empty_page_is_what_poem_openapi_would_have_written() {
        let rest = ClientPageJson {
            page: 0,
            page_size: 100,
            total: 0,
            total_exact: true,
            pages: 0,
            next_cursor: None,
            sort: SortKey::LastSeen,
            order: SortOrder::Desc,
        };
        let fast = ClientPageWriter::new(100).finish(&rest);
        assert_eq!(parsed(fast.bytes()), reference(reference_page(&rest, Vec::new()).to_json()));
    }

    #[test]
    fn a_detail_is_what_poem_openapi_would_have_written() {
        let rows = rows(7);
        let fast = ClientDetailJson { client_ip: "198.18.0.1", rows: &rows }.to_body();
        let reference_value = ClientDetail {
            client_ip: "198.18.0.1".into(),
            records: rows.iter().cloned().map(ClientRecord::from).collect(),
            total_sessions: rows.iter().map(|r| r.session_count).sum(),
            first_seen: ntp_wire::time::format_rfc3339(rows.iter().map(|r| r.first_seen).min().unwrap_or(0)),
            last_seen: ntp_wire::time::format_rfc3339(rows.iter().map(|r| r.last_seen).max().unwrap_or(0)),
        }
        .to_json();
        assert_eq!(parsed(fast.bytes()), reference(reference_value));
    }

    #[test]
    fn every_sort_key_and_order_has_the_name_the_schema_gives() {
        for k in [
            SortKey::LastSeen,
            SortKey::FirstSeen,
            SortKey::SessionCount,
            SortKey::UnansweredCount,
            SortKey::KodCount,
            SortKey::ClientIp,
            SortKey::AvgLatency,
            SortKey::AvgProcessingTime,
        ] {
            assert_eq!(k.to_json(), Some(serde_json::Value::from(k.as_str())));
        }
        for o in [SortOrder::Asc, SortOrder::Desc] {
            assert_eq!(o.to_json(), Some(serde_json::Value::from(o.as_str())));
        }
    }
}
