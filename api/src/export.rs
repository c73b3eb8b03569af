//! Streaming export of client rows as CSV, NDJSON or a JSON array, in constant memory.
//!
//! A task walks the result with keyset pages of [`CHUNK`] rows and sends each page, already
//! formatted, through a small channel into the response body: a million rows never sit in memory,
//! and a client that disconnects stops the walk. CSV follows RFC 4180 (CRLF, quoted fields),
//! starts with a UTF-8 BOM so spreadsheets detect the encoding, and neutralises cells that a
//! spreadsheet would run as formulas (text starting with `=`, `+`, `-`, `@`, tab or CR gets a
//! leading `'`): reference ids and kiss codes come from packets and are attacker-controlled.
//! Rows are written straight from the stored row (`csv_row` here, [`json::client`]), not through
//! poem-openapi's value tree; the tests check each CSV record against the cells of the row's JSON.

use bytes::Bytes;

use crate::{
    dto::{ExportFormat, MetricStats, SortKey, SortOrder},
    json::{self, boolean, finite, float, int},
    query::{self, Parsed},
    row::{ClientRow, WriteRow},
    state::AppState,
};

/// Rows per database page.
pub const CHUNK: u64 = 2_000;

/// CSV columns: JSON keys of [`crate::dto::ClientRecord`], nested ones with a dot.
const COLUMNS: &[&str] = &[
    "id",
    "host",
    "interface_name",
    "client_ip",
    "client_port",
    "server_ip",
    "server_port",
    "vlan_id",
    "ntp_version",
    "stratum",
    "precision",
    "root_delay",
    "root_dispersion",
    "reference_id",
    "leap_indicator",
    "poll_interval",
    "reference_timestamp",
    "originate_timestamp",
    "receive_timestamp",
    "transmit_timestamp",
    "client_to_server_latency",
    "server_processing_time",
    "total_process_time",
    "packet_length",
    "session_timestamp",
    "first_seen",
    "last_seen",
    "session_count",
    "answered_count",
    "unanswered_count",
    "kod_count",
    "last_kiss_code",
    "last_kiss_at",
    "retransmit_count",
    "interleaved_count",
    "t1_randomized_count",
    "t1_randomized",
    "nts_count",
    "extension_count",
    "mac_count",
    "observation_count",
    "control_count",
    "private_count",
    "monlist_count",
    "last_mode",
    "client_to_server_latency_stats.avg",
    "client_to_server_latency_stats.min",
    "client_to_server_latency_stats.max",
    "server_processing_time_stats.avg",
    "server_processing_time_stats.min",
    "server_processing_time_stats.max",
    "total_process_time_stats.avg",
    "total_process_time_stats.min",
    "total_process_time_stats.max",
    "created_at",
    "updated_at",
];

/// Appends a text cell: quoted when it holds a separator, a quote or a line break, and defused
/// (a leading `'`, quoted) when a spreadsheet would run it as a formula.
fn text(out: &mut Vec<u8>, s: &str) {
    let risky = s.starts_with(['=', '+', '-', '@', '\t', '\r']);
    let quote = risky || s.contains([',', '"', '\n', '\r']);
    if !quote {
        out.extend_from_slice(s.as_bytes());
        return;
    }
    out.push(b'"');
    if risky {
        out.push(b'\'');
    }
    for part in s.split_inclusive('"') {
        out.extend_from_slice(part.as_bytes());
        if part.ends_with('"') {
            out.push(b'"');
        }
    }
    out.push(b'"');
}

/// A capture time as RFC 3339 (digits and separators: never quoted).
fn time(out: &mut Vec<u8>, ns: i64) {
    out.extend_from_slice(&ntp_wire::time::rfc3339_bytes(ns));
}

/// `,` and the value when present; `,` alone (an empty cell) when absent.
macro_rules! cell {
    ($out:ident, $v:expr, $write:expr) => {
        $out.push(b',');
        if let Some(v) = $v {
            $write($out, v);
        }
    };
}

/// The avg, min and max cells of a metric (count, sum, min, max), as [`crate::dto::MetricStats`]
/// gives them.
fn stats(out: &mut Vec<u8>, (count, sum, min, max): (i64, f64, Option<f64>, Option<f64>)) {
    cell!(out, finite(MetricStats::average(count, sum)), float);
    cell!(out, finite(min), float);
    cell!(out, finite(max), float);
}

/// Appends one row as a CSV record in the order of [`COLUMNS`]: the cells of
/// [`crate::dto::ClientRecord`]'s JSON (nested objects flattened), written straight from the stored row. Numbers
/// print as in the JSON documents; fields the JSON leaves out (absent, or a float that is not
/// finite) are empty cells.
fn csv_row(out: &mut Vec<u8>, m: &ClientRow<'_>) {
    int(out, m.id);
    cell!(out, Some(m.host), text);
    cell!(out, Some(m.interface_name), text);
    cell!(out, Some(m.client_ip), text);
    cell!(out, m.client_port, int);
    cell!(out, m.server_ip, text);
    cell!(out, m.server_port, int);
    cell!(out, m.vlan_id, int);
    cell!(out, m.ntp_version, int);
    cell!(out, m.stratum, int);
    cell!(out, m.precision, int);
    cell!(out, finite(m.root_delay), float);
    cell!(out, finite(m.root_dispersion), float);
    cell!(out, m.reference_id, text);
    cell!(out, m.leap_indicator, int);
    cell!(out, m.poll_interval, int);
    cell!(out, m.reference_timestamp, time);
    cell!(out, m.originate_timestamp, time);
    cell!(out, m.receive_timestamp, time);
    cell!(out, m.transmit_timestamp, time);
    cell!(out, finite(m.client_to_server_latency), float);
    cell!(out, finite(m.server_processing_time), float);
    cell!(out, finite(m.total_process_time), float);
    cell!(out, m.packet_length, int);
    cell!(out, m.session_timestamp, time);
    cell!(out, Some(m.first_seen), time);
    cell!(out, Some(m.last_seen), time);
    cell!(out, Some(m.session_count), int);
    cell!(out, Some(m.answered_count), int);
    cell!(out, Some(m.unanswered_count), int);
    cell!(out, Some(m.kod_count), int);
    cell!(out, m.last_kiss_code, text);
    cell!(out, m.last_kiss_at, time);
    cell!(out, Some(m.retransmit_count), int);
    cell!(out, Some(m.interleaved_count), int);
    cell!(out, Some(m.t1_randomized_count), int);
    cell!(out, Some(m.t1_randomized), boolean);
    cell!(out, Some(m.nts_count), int);
    cell!(out, Some(m.extension_count), int);
    cell!(out, Some(m.mac_count), int);
    cell!(out, Some(m.observation_count), int);
    cell!(out, Some(m.control_count), int);
    cell!(out, Some(m.private_count), int);
    cell!(out, Some(m.monlist_count), int);
    cell!(out, m.last_mode, int);
    stats(out, (m.latency_count, m.latency_sum, m.latency_min, m.latency_max));
    stats(out, (m.processing_count, m.processing_sum, m.processing_min, m.processing_max));
    stats(out, (m.turnaround_count, m.turnaround_sum, m.turnaround_min, m.turnaround_max));
    cell!(out, Some(m.created_at), time);
    cell!(out, Some(m.updated_at), time);
    out.extend_from_slice(b"\r\n");
}

fn csv_header() -> String {
    let mut s = String::from("\u{feff}");
    s.push_str(&COLUMNS.join(","));
    s.push_str("\r\n");
    s
}

/// The file extension of a format.
pub fn extension(format: ExportFormat) -> &'static str {
    match format {
        ExportFormat::Csv => "csv",
        ExportFormat::Ndjson => "ndjson",
        ExportFormat::Json => "json",
    }
}

/// One chunk of an export, written as its rows are read.
struct Chunk {
    out: Vec<u8>,
    format: ExportFormat,
    /// Rows of the export before this one.
    sent: u64,
}

impl WriteRow for Chunk {
    fn row(&mut self, r: &ClientRow<'_>) {
        let out = &mut self.out;
        match self.format {
            ExportFormat::Csv => csv_row(out, r),
            ExportFormat::Ndjson => {
                json::client(out, r);
                out.push(b'\n');
            }
            ExportFormat::Json => {
                if self.sent > 0 {
                    out.push(b',');
                }
                json::client(out, r);
            }
        }
        self.sent += 1;
    }
}

/// Starts the export and returns the body stream.
pub fn stream(state: AppState, parsed: Parsed, sort: SortKey, order: SortOrder, format: ExportFormat, limit: u64) -> poem::Body {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    tokio::spawn(async move {
        let opening = match format {
            ExportFormat::Csv => csv_header(),
            ExportFormat::Json => "[".to_string(),
            ExportFormat::Ndjson => String::new(),
        };
        if !opening.is_empty() && tx.send(Ok(Bytes::from(opening))).await.is_err() {
            return;
        }
        let mut cursor: Option<String> = None;
        let mut sent = 0u64;
        while sent < limit {
            let size = CHUNK.min(limit - sent);
            let chunk = Chunk { out: Vec::with_capacity(usize::try_from(size).unwrap_or(0) * json::ROW_BYTES), format, sent };
            let (chunk, rows, next) = match query::page(&state, &parsed, sort, order, cursor.as_deref(), 0, size, chunk).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(message = "Export failed part-way; the body is truncated.", error = ?e);
                    let _ = tx.send(Err(std::io::Error::other("export failed"))).await;
                    return;
                }
            };
            debug_assert_eq!(chunk.sent, sent + rows as u64);
            sent = chunk.sent;
            let buf = chunk.out;
            if tx.send(Ok(Bytes::from(buf))).await.is_err() {
                return; // the client went away
            }
            match next {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        if format == ExportFormat::Json {
            let _ = tx.send(Ok(Bytes::from_static(b"]"))).await;
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
    poem::Body::from_bytes_stream(stream)
}

#[cfg(test)]
mod tests {
    use poem_openapi::types::ToJSON;
    use serde_json::Value;

    use super::*;
    use crate::dto::ClientRecord;
    use entity::ntp_clients::Model;

    // The reference: a row's cells looked up in poem-openapi's JSON of `ClientRecord`, as the
    // export wrote CSV before it wrote rows directly.
    fn csv_cell(v: Option<&Value>, out: &mut String) {
        match v {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) => {
                let risky = s.starts_with(['=', '+', '-', '@', '\t', '\r']);
                let quote = risky || s.contains([',', '"', '\n', '\r']);
                if quote {
                    out.push('"');
                }
                if risky {
                    out.push('\'');
                }
                for c in s.chars() {
                    if c == '"' {
                        out.push('"');
                    }
                    out.push(c);
                }
                if quote {
                    out.push('"');
                }
            }
            Some(other) => out.push_str(&other.to_string()),
        }
    }

    fn lookup<'a>(row: &'a Value, key: &str) -> Option<&'a Value> {
        match key.split_once('.') {
            Some((a, b)) => row.get(a)?.get(b),
            None => row.get(key),
        }
    }

    fn reference_row(row: &Value, out: &mut String) {
        for (i, key) in COLUMNS.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            csv_cell(lookup(row, key), out);
        }
        out.push_str("\r\n");
    }

    #[test]
    fn rows_are_written_as_the_cells_of_their_json() {
        for m in crate::json::tests::rows(500) {
            let mut reference = String::new();
            reference_row(&ClientRecord::from(m.clone()).to_json().unwrap_or(Value::Null), &mut reference);
            let mut fast = Vec::new();
            csv_row(&mut fast, &(&m).into());
            assert_eq!(String::from_utf8(fast).expect("UTF-8"), reference, "row {}", m.id);
        }
    }

    /// An export's chunks joined are the document one chunk of every row would be, in each
    /// format: the JSON array's commas run across chunks (a chunk knows the rows before it).
    #[test]
    fn chunks_join_into_one_document() {
        let rows = crate::json::tests::rows(7);
        let write = |format, parts: &[&[Model]]| {
            let mut out = Vec::new();
            let mut sent = 0;
            for part in parts {
                let mut chunk = Chunk { out: Vec::new(), format, sent };
                for m in *part {
                    chunk.row(&m.into());
                }
                assert_eq!(chunk.sent, sent + part.len() as u64);
                sent = chunk.sent;
                out.extend_from_slice(&chunk.out);
            }
            String::from_utf8(out).expect("UTF-8")
        };
        for format in [ExportFormat::Json, ExportFormat::Ndjson, ExportFormat::Csv] {
            let whole = write(format, &[&rows]);
            assert_eq!(write(format, &[&rows[..3], &rows[3..3], &rows[3..]]), whole);
            assert_eq!(write(format, &[&rows[..1], &rows[1..]]), whole);
            let records = match format {
                ExportFormat::Json => {
                    serde_json::from_str::<Value>(&format!("[{whole}]")).expect("one JSON array").as_array().map(Vec::len)
                }
                ExportFormat::Ndjson => Some(whole.lines().filter(|l| serde_json::from_str::<Value>(l).is_ok()).count()),
                ExportFormat::Csv => None,
            };
            assert!(records.is_none_or(|n| n == 7), "{format:?}: {records:?} records");
        }
    }

    #[test]
    fn text_cells_quote_escape_and_defuse_formulas() {
        let mut out = Vec::new();
        for s in ["plain", "a,b", "say \"hi\"", "=HYPERLINK(\"x\")", "-1+2", "line\nbreak", "\"", ""] {
            text(&mut out, s);
            out.push(b'|');
        }
        assert_eq!(
            String::from_utf8(out).expect("UTF-8"),
            "plain|\"a,b\"|\"say \"\"hi\"\"\"|\"'=HYPERLINK(\"\"x\"\")\"|\"'-1+2\"|\"line\nbreak\"|\"\"\"\"||"
        );
    }
}
