//! Streaming export of client rows as CSV, NDJSON or a JSON array, in constant memory.
//!
//! A task walks the result with keyset pages of [`CHUNK`] rows and sends each page, already
//! formatted, through a small channel into the response body: a million rows never sit in memory,
//! and a client that disconnects stops the walk. CSV follows RFC 4180 (CRLF, quoted fields),
//! starts with a UTF-8 BOM so spreadsheets detect the encoding, and neutralises cells that a
//! spreadsheet would run as formulas (text starting with `=`, `+`, `-`, `@`, tab or CR gets a
//! leading `'`): reference ids and kiss codes come from packets and are attacker-controlled.

use bytes::Bytes;
use poem_openapi::types::ToJSON;
use serde_json::Value;

use crate::{
    dto::{ClientRecord, ExportFormat, SortKey, SortOrder},
    query::{self, Parsed},
    state::AppState,
};

/// Rows per database page.
pub const CHUNK: u64 = 2_000;

/// CSV columns: JSON keys of [`ClientRecord`], nested ones with a dot.
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

fn csv_header() -> String {
    let mut s = String::from("\u{feff}");
    s.push_str(&COLUMNS.join(","));
    s.push_str("\r\n");
    s
}

fn csv_row(row: &Value, out: &mut String) {
    for (i, key) in COLUMNS.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        csv_cell(lookup(row, key), out);
    }
    out.push_str("\r\n");
}

/// The file extension of a format.
pub fn extension(format: ExportFormat) -> &'static str {
    match format {
        ExportFormat::Csv => "csv",
        ExportFormat::Ndjson => "ndjson",
        ExportFormat::Json => "json",
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
            let (rows, next) = match query::page(&state, &parsed, sort, order, cursor.as_deref(), 0, size).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(message = "Export failed part-way; the body is truncated.", error = ?e);
                    let _ = tx.send(Err(std::io::Error::other("export failed"))).await;
                    return;
                }
            };
            let mut buf = Vec::with_capacity(rows.len() * crate::json::ROW_BYTES);
            let mut line = String::new();
            for m in rows {
                match format {
                    ExportFormat::Csv => {
                        line.clear();
                        csv_row(&ClientRecord::from(m).to_json().unwrap_or(Value::Null), &mut line);
                        buf.extend_from_slice(line.as_bytes());
                    }
                    ExportFormat::Ndjson => {
                        crate::json::client(&mut buf, &m);
                        buf.push(b'\n');
                    }
                    ExportFormat::Json => {
                        if sent > 0 {
                            buf.push(b',');
                        }
                        crate::json::client(&mut buf, &m);
                    }
                }
                sent += 1;
            }
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
    use super::*;

    #[test]
    fn csv_cells_quote_escape_and_defuse_formulas() {
        let mut s = String::new();
        for v in [
            Value::String("plain".into()),
            Value::String("a,b".into()),
            Value::String("say \"hi\"".into()),
            Value::String("=HYPERLINK(\"x\")".into()),
            Value::String("-1+2".into()),
            Value::from(-3),
            Value::Null,
        ] {
            csv_cell(Some(&v), &mut s);
            s.push('|');
        }
        assert_eq!(s, "plain|\"a,b\"|\"say \"\"hi\"\"\"|\"'=HYPERLINK(\"\"x\"\")\"|\"'-1+2\"|-3||");
    }
}
