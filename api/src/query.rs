//! Read queries over `ntp_clients`, as free functions taking the state. Rows are read through
//! [`crate::reader`]: rusqlite on an SQLite file, sea-orm otherwise, from the same built query.
//!
//! Lists use keyset paging: the cursor carries the last row's sort value and id, so a page deep
//! in millions of rows costs what the first one does (with the default sort, which an index
//! serves). `page`/`page_size` (OFFSET) remain for compatibility with the seed and are fine for
//! shallow pages. Totals never scan the table per request: the unfiltered count follows the
//! sinks' inserted-row counter between rare counts ([`crate::total`]), and filtered counts stop
//! at [`COUNT_CAP`].

use std::{
    net::IpAddr,
    sync::{Arc, Mutex},
};

use base64::Engine as _;
use entity::ntp_clients::{self, Column as C, Entity as Clients};
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, DatabaseConnection, DbBackend, EntityTrait, Order, QueryFilter, QueryOrder, QuerySelect,
    QueryTrait, Select, Statement, Value,
    sea_query::{Expr, ExprTrait, SimpleExpr},
};
use serde::{Deserialize, Serialize};

use crate::{
    dto::{Filters, SortKey, SortOrder},
    error::ApiError,
    reader::{self, Cost},
    row::{ClientRow, WriteRow},
    state::AppState,
    total::Snapshot,
};

/// Filtered counts stop here; the response then says the total is a lower bound.
pub const COUNT_CAP: u64 = 10_000;

/// Validated filters.
#[derive(Debug, Clone, Default)]
pub struct Parsed {
    client_ips: Vec<String>,
    interface_names: Vec<String>,
    hosts: Vec<String>,
    search_ip: Option<String>,
    cidr: Option<(Vec<u8>, Vec<u8>)>,
    since: Option<i64>,
    until: Option<i64>,
    ntp_version: Option<i32>,
    min_sessions: Option<i64>,
    has_kod: Option<bool>,
    has_unanswered: Option<bool>,
}

impl Parsed {
    /// No filter at all (the cached total applies).
    pub fn is_empty(&self) -> bool {
        self.client_ips.is_empty()
            && self.interface_names.is_empty()
            && self.hosts.is_empty()
            && self.search_ip.is_none()
            && self.cidr.is_none()
            && self.since.is_none()
            && self.until.is_none()
            && self.ntp_version.is_none()
            && self.min_sessions.is_none()
            && self.has_kod.is_none()
            && self.has_unanswered.is_none()
    }
}

/// Canonical text of an address in any valid textual form.
pub fn canonical_ip(field: &str, text: &str) -> Result<IpAddr, ApiError> {
    let t = text.trim();
    let t = t.strip_prefix('[').and_then(|s| s.strip_suffix(']')).unwrap_or(t);
    t.parse::<IpAddr>().map_err(|_| ApiError::bad_request(field, format!("{text:?} is not an IPv4 or IPv6 address")))
}

/// 16-byte form, IPv4 mapped into IPv6 (as the sink stores `client_ip_bin`).
pub fn ip_bytes(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// A CIDR block as an inclusive byte range.
pub fn parse_cidr(field: &str, text: &str) -> Result<(Vec<u8>, Vec<u8>), ApiError> {
    let bad = || ApiError::bad_request(field, format!("{text:?} is not a CIDR block like 198.18.0.0/16 or 2001:db8::/32"));
    let (addr, len) = text.trim().split_once('/').ok_or_else(bad)?;
    let ip = canonical_ip(field, addr).map_err(|_| bad())?;
    let len: u32 = len.parse().map_err(|_| bad())?;
    let (bits, max) = match ip {
        IpAddr::V4(_) => (len + 96, 32),
        IpAddr::V6(_) => (len, 128),
    };
    if len > max {
        return Err(bad());
    }
    let base = u128::from_be_bytes(ip_bytes(ip));
    let mask = if bits == 0 { 0 } else { u128::MAX << (128 - bits) };
    let lo = base & mask;
    let hi = lo | !mask;
    Ok((lo.to_be_bytes().to_vec(), hi.to_be_bytes().to_vec()))
}

fn time(field: &str, v: Option<&String>) -> Result<Option<i64>, ApiError> {
    v.map(|s| ntp_wire::time::parse_rfc3339(s).ok_or_else(|| ApiError::bad_request(field, format!("{s:?} is not an RFC 3339 date-time"))))
        .transpose()
}

fn names(field: &str, v: &[String]) -> Result<Vec<String>, ApiError> {
    v.iter()
        .map(|n| {
            if n.is_empty() || n.len() > 253 || n.chars().any(char::is_control) {
                Err(ApiError::bad_request(field, format!("invalid name {n:?}")))
            } else {
                Ok(n.clone())
            }
        })
        .collect()
}

/// Validates filters, naming the field at fault.
pub fn parse(f: &Filters) -> Result<Parsed, ApiError> {
    let client_ips = f.client_ips.iter().map(|ip| canonical_ip("client_ips", ip).map(|a| a.to_string())).collect::<Result<Vec<_>, _>>()?;
    let search_ip = match &f.search_ip {
        Some(s) if !s.trim().is_empty() => {
            let s = s.trim().to_ascii_lowercase();
            if !s.chars().all(|c| c.is_ascii_hexdigit() || c == '.' || c == ':') {
                return Err(ApiError::bad_request("search_ip", "search_ip is an address prefix: digits, hex letters, '.' and ':'"));
            }
            Some(s)
        }
        _ => None,
    };
    let cidr = f.cidr.as_ref().filter(|c| !c.trim().is_empty()).map(|c| parse_cidr("cidr", c)).transpose()?;
    let since = time("since", f.since.as_ref())?;
    let until = time("until", f.until.as_ref())?;
    if let (Some(a), Some(b)) = (since, until)
        && a > b
    {
        return Err(ApiError::bad_request("until", "until is before since"));
    }
    Ok(Parsed {
        client_ips,
        interface_names: names("interface_names", &f.interface_names)?,
        hosts: names("hosts", &f.hosts)?,
        search_ip,
        cidr,
        since,
        until,
        ntp_version: f.ntp_version,
        min_sessions: f.min_sessions,
        has_kod: f.has_kod,
        has_unanswered: f.has_unanswered,
    })
}

/// The WHERE clause of the filters.
pub fn condition(p: &Parsed) -> Condition {
    let mut c = Condition::all();
    if !p.client_ips.is_empty() {
        c = c.add(C::ClientIp.is_in(p.client_ips.clone()));
    }
    if !p.interface_names.is_empty() {
        c = c.add(C::InterfaceName.is_in(p.interface_names.clone()));
    }
    if !p.hosts.is_empty() {
        c = c.add(C::Host.is_in(p.hosts.clone()));
    }
    if let Some(prefix) = &p.search_ip {
        // A range, so the client_ip index serves it (LIKE would not, being case-insensitive).
        c = c.add(C::ClientIp.gte(prefix.clone())).add(C::ClientIp.lt(format!("{prefix}\u{7f}")));
    }
    if let Some((lo, hi)) = &p.cidr {
        c = c.add(C::ClientIpBin.gte(lo.clone())).add(C::ClientIpBin.lte(hi.clone()));
    }
    if let Some(t) = p.since {
        c = c.add(C::LastSeen.gte(t));
    }
    if let Some(t) = p.until {
        c = c.add(C::LastSeen.lt(t));
    }
    if let Some(v) = p.ntp_version {
        c = c.add(C::NtpVersion.eq(v));
    }
    if let Some(n) = p.min_sessions {
        c = c.add(C::SessionCount.gte(n));
    }
    match p.has_kod {
        Some(true) => c = c.add(C::KodCount.gt(0)),
        Some(false) => c = c.add(C::KodCount.eq(0)),
        None => {}
    }
    match p.has_unanswered {
        Some(true) => c = c.add(C::UnansweredCount.gt(0)),
        Some(false) => c = c.add(C::UnansweredCount.eq(0)),
        None => {}
    }
    c
}

/// The sort value of a row, as carried in cursors.
///
/// Averages travel as the bits of their `f64` (`{"f": bits}`): printed as a decimal and parsed
/// back, a float can come back one step off (serde_json parses floats exactly only with its
/// `float_roundtrip` feature), and the keyset condition would then repeat or skip the rows that
/// tie with the page's last one. A plain number is still read as a float, as cursors before this
/// carried it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
enum SortValue {
    Int(i64),
    Float(f64),
    Bytes(String),
    FloatBits {
        /// `f64::to_bits` of the value.
        f: u64,
    },
}

#[derive(Debug, Serialize, Deserialize)]
struct Cursor {
    /// Sort key.
    k: String,
    /// Order.
    o: String,
    /// Sort value of the last row.
    v: SortValue,
    /// Id of the last row.
    id: i64,
}

fn avg(count: C, sum: C) -> SimpleExpr {
    Expr::case(Expr::col(count).gt(0), Expr::col(sum).div(Expr::col(count))).finally(Expr::val(-1.0)).into()
}

fn sort_expr(k: SortKey) -> SimpleExpr {
    match k {
        SortKey::LastSeen => Expr::col(C::LastSeen),
        SortKey::FirstSeen => Expr::col(C::FirstSeen),
        SortKey::SessionCount => Expr::col(C::SessionCount),
        SortKey::UnansweredCount => Expr::col(C::UnansweredCount),
        SortKey::KodCount => Expr::col(C::KodCount),
        SortKey::ClientIp => Expr::col(C::ClientIpBin),
        SortKey::AvgLatency => avg(C::LatencyCount, C::LatencySum),
        SortKey::AvgProcessingTime => avg(C::ProcessingCount, C::ProcessingSum),
    }
}

fn sort_value(k: SortKey, m: &ClientRow<'_>) -> SortValue {
    let avg = |count: i64, sum: f64| if count > 0 { sum / count as f64 } else { -1.0 };
    match k {
        SortKey::LastSeen => SortValue::Int(m.last_seen),
        SortKey::FirstSeen => SortValue::Int(m.first_seen),
        SortKey::SessionCount => SortValue::Int(m.session_count),
        SortKey::UnansweredCount => SortValue::Int(m.unanswered_count),
        SortKey::KodCount => SortValue::Int(m.kod_count),
        SortKey::ClientIp => SortValue::Bytes(m.client_ip_bin.map(hex).unwrap_or_default()),
        SortKey::AvgLatency => SortValue::FloatBits { f: avg(m.latency_count, m.latency_sum).to_bits() },
        SortKey::AvgProcessingTime => SortValue::FloatBits { f: avg(m.processing_count, m.processing_sum).to_bits() },
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().fold(String::with_capacity(b.len() * 2), |mut s, x| {
        s.push(char::from(b"0123456789abcdef"[usize::from(x >> 4)]));
        s.push(char::from(b"0123456789abcdef"[usize::from(x & 15)]));
        s
    })
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

/// The value a cursor's sort value binds as, or `None` when it is not of the sort key's kind
/// (a cursor made by hand): integers for the counts and times, bytes for the address, a float
/// (or an integer, read as one) for the averages. PostgreSQL refuses to compare a column with a
/// value of another kind, so this is checked here, as a bad cursor, and not left to the database.
fn sort_value_expr(k: SortKey, v: &SortValue) -> Option<Value> {
    let float = matches!(k, SortKey::AvgLatency | SortKey::AvgProcessingTime);
    Some(match (v, k) {
        (SortValue::Bytes(h), SortKey::ClientIp) => Value::Bytes(Some(unhex(h)?)),
        (_, SortKey::ClientIp) | (SortValue::Bytes(_), _) => return None,
        (SortValue::Int(i), _) if !float => Value::BigInt(Some(*i)),
        (SortValue::Int(i), _) => Value::Double(Some(*i as f64)),
        (SortValue::Float(f), _) if float && !f.is_nan() => Value::Double(Some(*f)),
        (SortValue::FloatBits { f }, _) if float && !f64::from_bits(*f).is_nan() => Value::Double(Some(f64::from_bits(*f))),
        // A float for an integer key, or NaN, which orders nowhere.
        (SortValue::Float(_) | SortValue::FloatBits { .. }, _) => return None,
    })
}

/// The opaque cursor after `m`.
pub fn encode_cursor(k: SortKey, o: SortOrder, m: &ClientRow<'_>) -> String {
    let c = Cursor { k: k.as_str().into(), o: o.as_str().into(), v: sort_value(k, m), id: m.id };
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(&c).unwrap_or_default())
}

/// The keyset condition of a cursor.
pub fn cursor_condition(k: SortKey, o: SortOrder, cursor: &str) -> Result<Condition, ApiError> {
    let (v, id) = decode_cursor(k, o, cursor)?;
    let e = sort_expr(k);
    // `sort <= v AND (sort < v OR (sort = v AND id < c.id))`: the first conjunct is implied by
    // the rest, but without it SQLite plans bound parameters as a scan of the whole index from
    // the top (88 ms at half depth in 5 M rows) instead of a range search (docs/performance.md).
    Ok(match o {
        SortOrder::Desc => Condition::all()
            .add(e.clone().lte(Expr::val(v.clone())))
            .add(Condition::any().add(e.clone().lt(Expr::val(v.clone()))).add(Condition::all().add(e.eq(Expr::val(v))).add(C::Id.lt(id)))),
        SortOrder::Asc => Condition::all()
            .add(e.clone().gte(Expr::val(v.clone())))
            .add(Condition::any().add(e.clone().gt(Expr::val(v.clone()))).add(Condition::all().add(e.eq(Expr::val(v))).add(C::Id.gt(id)))),
    })
}

/// The sort value and row id a cursor carries, checked against the request's sort and order.
fn decode_cursor(k: SortKey, o: SortOrder, cursor: &str) -> Result<(Value, i64), ApiError> {
    let bad = |why: &str| ApiError::bad_request("cursor", format!("invalid cursor: {why}"));
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(cursor.trim()).map_err(|_| bad("not base64url"))?;
    let c: Cursor = serde_json::from_slice(&bytes).map_err(|_| bad("not a cursor"))?;
    if c.k != k.as_str() || c.o != o.as_str() {
        return Err(bad("it belongs to another sort or order; start again without a cursor"));
    }
    Ok((sort_value_expr(k, &c.v).ok_or_else(|| bad("its sort value is not one of this sort"))?, c.id))
}

/// `SELECT … WHERE filters ORDER BY sort, id`.
pub fn select(p: &Parsed, k: SortKey, o: SortOrder) -> Select<Clients> {
    let order = match o {
        SortOrder::Asc => Order::Asc,
        SortOrder::Desc => Order::Desc,
    };
    Clients::find().filter(condition(p)).order_by(sort_expr(k), order.clone()).order_by(C::Id, order)
}

/// One page: its rows handed to `write` as they are read; gives back `write`, the number of
/// rows and the cursor for the next page (if more rows exist).
#[allow(clippy::too_many_arguments)] // the page's parameters, one each
pub async fn page<W>(
    state: &AppState,
    p: &Parsed,
    k: SortKey,
    o: SortOrder,
    cursor: Option<&str>,
    offset: u64,
    size: u64,
    write: W,
) -> Result<(W, usize, Option<String>), ApiError>
where
    W: WriteRow,
{
    let mut q = select(p, k, o);
    match cursor {
        Some(c) => q = q.filter(cursor_condition(k, o, c)?),
        None if offset > 0 => q = q.offset(offset),
        None => {}
    }
    // Without filters, the indexed sorts walk an index for exactly the rows returned.
    let indexed = matches!(k, SortKey::LastSeen | SortKey::ClientIp);
    let cost = if p.is_empty() && indexed && offset == 0 && size < reader::INLINE_ROWS { Cost::Bounded } else { Cost::Open };
    let st = q.limit(size + 1).build(state.db.get_database_backend());
    let limit = usize::try_from(size).unwrap_or(usize::MAX);
    let written = reader::write_rows(&state.db, state.reader.as_ref(), st, cost, limit, write).await?;
    let next = written.more_after.as_ref().map(|m| encode_cursor(k, o, &m.into()));
    Ok((written.write, written.rows, next))
}

/// Count of matching rows, stopping at [`COUNT_CAP`] + 1.
pub async fn capped_count(state: &AppState, p: &Parsed) -> Result<u64, ApiError> {
    let inner = Clients::find().select_only().column(C::Id).filter(condition(p)).limit(COUNT_CAP + 1);
    let backend = state.db.get_database_backend();
    let st = inner.build(backend);
    let wrapped = format!("SELECT COUNT(*) FROM ({}) AS capped", st.sql);
    let values = st.values.map(|v| v.0).unwrap_or_default();
    let n = reader::integer(&state.db, state.reader.as_ref(), Statement::from_sql_and_values(backend, wrapped, values)).await?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// The sinks' cumulative count of inserted rows (see [`crate::total`]).
const SINK_INSERTED: &str = "SELECT CAST(COALESCE(SUM(total_inserted), 0) AS BIGINT) FROM sink_state";

/// `COUNT(*)` of the whole table and the sinks' inserted-row counter, in one statement and so
/// one snapshot (callers keep it; see [`crate::total`]).
pub async fn count_snapshot(state: &AppState) -> Result<Snapshot, ApiError> {
    let sql = format!("SELECT (SELECT COUNT(*) FROM ntp_clients), ({SINK_INSERTED})");
    let st = Statement::from_string(state.db.get_database_backend(), sql);
    let v = reader::integers(&state.db, state.reader.as_ref(), st, 2).await?;
    Ok(Snapshot { rows: u64::try_from(v[0]).unwrap_or(0), inserted: v[1] })
}

/// The sinks' inserted-row counter alone (one row per sink: cheap).
pub async fn sink_inserted(state: &AppState) -> Result<i64, ApiError> {
    let st = Statement::from_string(state.db.get_database_backend(), SINK_INSERTED);
    reader::integer(&state.db, state.reader.as_ref(), st).await
}

/// Every row of one address (at most 10 000).
pub async fn by_ip(state: &AppState, ip: &str) -> Result<Vec<ntp_clients::Model>, ApiError> {
    let backend = state.db.get_database_backend();
    // The `client_ip` index holds one entry per host and interface that saw the address: a few
    // rows, read in line. An address seen on more pairs than that is read again in the pool.
    let st = by_ip_statement(backend, ip, reader::INLINE_ROWS);
    let rows = reader::models_of(&state.db, state.reader.as_ref(), st, Cost::Bounded).await?;
    if (rows.len() as u64) < reader::INLINE_ROWS {
        return Ok(rows);
    }
    reader::models_of(&state.db, state.reader.as_ref(), by_ip_statement(backend, ip, 10_000), Cost::Open).await
}

/// [`by_ip`]'s query: the rows of one address, newest first.
fn by_ip_select(ip: &str, limit: u64) -> Select<Clients> {
    Clients::find().filter(C::ClientIp.eq(ip)).order_by_desc(C::LastSeen).order_by_asc(C::Id).limit(limit)
}

/// A statement built once, and where the value bound per call sits among its values.
#[derive(Debug)]
struct Template {
    statement: Statement,
    at: usize,
}

/// [`by_ip_select`] for `backend` and `limit`, built on first use with a marker for the address
/// (none when the marker cannot be found among the built values).
fn by_ip_template(backend: DbBackend, limit: u64) -> Option<Arc<Template>> {
    /// The marker: a text no other value of the statement (the limit, an integer) can equal.
    const MARK: &str = "\u{0}address";
    static BUILT: Mutex<Vec<(DbBackend, u64, Arc<Template>)>> = Mutex::new(Vec::new());
    let mut built = BUILT.lock().ok()?;
    if let Some((.., t)) = built.iter().find(|(b, l, _)| *b == backend && *l == limit) {
        return Some(Arc::clone(t));
    }
    let statement = by_ip_select(MARK, limit).build(backend);
    let at = statement.values.as_ref()?.0.iter().position(|v| *v == Value::from(MARK))?;
    let t = Arc::new(Template { statement, at });
    built.push((backend, limit, Arc::clone(&t)));
    Some(t)
}

/// [`by_ip_select`] as a statement for `backend`: a copy of the one built for its limit, bound to
/// `ip`. Building the `SELECT` of every column afresh took a seventh of a lookup's CPU (`perf`
/// under `wrk`), more than SQLite spent finding and reading the row.
fn by_ip_statement(backend: DbBackend, ip: &str, limit: u64) -> Statement {
    let Some(t) = by_ip_template(backend, limit) else { return by_ip_select(ip, limit).build(backend) };
    let mut st = t.statement.clone();
    if let Some(v) = st.values.as_mut().and_then(|v| v.0.get_mut(t.at)) {
        *v = Value::from(ip);
    }
    st
}

/// Aggregates per host and interface.
#[derive(Debug, Clone, Default)]
pub struct InterfaceAggregate {
    /// Host.
    pub host: String,
    /// Interface.
    pub interface_name: String,
    /// Clients, sessions, answered, unanswered, kod, observations.
    pub counts: [i64; 6],
    /// (count, sum, min, max) of latency, processing, turnaround.
    pub metrics: [(i64, f64, Option<f64>, Option<f64>); 3],
    /// First and last activity.
    pub first_seen: Option<i64>,
    /// Last activity.
    pub last_seen: Option<i64>,
}

/// `GROUP BY host, interface_name` over the table.
pub async fn interface_aggregates(db: &DatabaseConnection) -> Result<Vec<InterfaceAggregate>, sea_orm::DbErr> {
    let backend = db.get_database_backend();
    let sum_int = |c: &str| format!("CAST(COALESCE(SUM({c}), 0) AS BIGINT)");
    let mut cols = vec!["host".to_string(), "interface_name".to_string(), "CAST(COUNT(*) AS BIGINT)".to_string()];
    for c in ["session_count", "answered_count", "unanswered_count", "kod_count", "observation_count"] {
        cols.push(sum_int(c));
    }
    for m in ["latency", "processing", "turnaround"] {
        cols.push(sum_int(&format!("{m}_count")));
        cols.push(format!("CAST(COALESCE(SUM({m}_sum), 0) AS DOUBLE PRECISION)"));
        cols.push(format!("MIN({m}_min)"));
        cols.push(format!("MAX({m}_max)"));
    }
    cols.push("MIN(first_seen)".into());
    cols.push("MAX(last_seen)".into());
    let sql = format!("SELECT {} FROM ntp_clients GROUP BY host, interface_name ORDER BY host, interface_name", cols.join(", "));
    let sql = if backend == DbBackend::Sqlite { sql.replace("DOUBLE PRECISION", "REAL") } else { sql };
    let rows = db.query_all_raw(Statement::from_string(backend, sql)).await?;
    rows.into_iter()
        .map(|r| {
            let mut a = InterfaceAggregate {
                host: r.try_get_by_index(0)?,
                interface_name: r.try_get_by_index(1)?,
                ..InterfaceAggregate::default()
            };
            for (i, slot) in a.counts.iter_mut().enumerate() {
                *slot = r.try_get_by_index(2 + i)?;
            }
            for (i, m) in a.metrics.iter_mut().enumerate() {
                let base = 8 + i * 4;
                *m = (
                    r.try_get_by_index(base)?,
                    r.try_get_by_index(base + 1)?,
                    r.try_get_by_index(base + 2)?,
                    r.try_get_by_index(base + 3)?,
                );
            }
            a.first_seen = r.try_get_by_index(20)?;
            a.last_seen = r.try_get_by_index(21)?;
            Ok(a)
        })
        .collect()
}

/// Deletes rows last seen before `cutoff`, in chunks so the writer is never blocked for long.
pub async fn delete_older_than(db: &DatabaseConnection, cutoff: i64) -> Result<u64, sea_orm::DbErr> {
    let backend = db.get_database_backend();
    let sql = match backend {
        DbBackend::Postgres => "DELETE FROM ntp_clients WHERE id IN (SELECT id FROM ntp_clients WHERE last_seen < $1 LIMIT 5000)",
        _ => "DELETE FROM ntp_clients WHERE id IN (SELECT id FROM ntp_clients WHERE last_seen < ? LIMIT 5000)",
    };
    let mut total = 0;
    loop {
        let res = db.execute_raw(Statement::from_sql_and_values(backend, sql, [Value::BigInt(Some(cutoff))])).await?;
        total += res.rows_affected();
        if res.rows_affected() == 0 {
            return Ok(total);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A page in an indexed sort, at any depth, walks one index from its cursor and never sorts:
    /// SQLite's plan for each order, with and without a cursor, on the migrated schema. (The
    /// address's index names no `id`: SQLite orders its ties by the rowid every entry ends with,
    /// which `id` is.)
    #[tokio::test]
    async fn pages_in_indexed_sorts_walk_an_index_from_the_cursor() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("ntp.db").display());
        let db = ntpscope_sink::db::connect_and_migrate(&url).await.expect("migrate");
        let p = parse(&Filters::default()).expect("no filters");
        for (k, v) in [(SortKey::LastSeen, "1767225600000000000"), (SortKey::ClientIp, r#""c6120001""#)] {
            for o in [SortOrder::Asc, SortOrder::Desc] {
                let cursor = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!(
                    r#"{{"k":"{}","o":"{}","v":{v},"id":7}}"#,
                    k.as_str(),
                    o.as_str()
                ));
                for cursor in [None, Some(cursor)] {
                    let mut q = select(&p, k, o);
                    if let Some(c) = &cursor {
                        q = q.filter(cursor_condition(k, o, c).expect("cursor"));
                    }
                    let st = q.limit(101).build(DbBackend::Sqlite);
                    let explain = Statement::from_sql_and_values(
                        DbBackend::Sqlite,
                        format!("EXPLAIN QUERY PLAN {}", st.sql),
                        st.values.map(|v| v.0).unwrap_or_default(),
                    );
                    let plan: Vec<String> = db
                        .query_all_raw(explain)
                        .await
                        .expect("plan")
                        .iter()
                        .map(|r| r.try_get_by_index::<String>(3).expect("detail"))
                        .collect();
                    let what = format!("{k:?} {o:?} cursor {}: {plan:?}", cursor.is_some());
                    assert_eq!(plan.len(), 1, "{what}");
                    let index = if k == SortKey::LastSeen { "ix_ntp_clients_last_seen" } else { "ix_ntp_clients_client_ip_bin" };
                    assert!(plan[0].contains(&format!("USING INDEX {index}")), "{what}");
                    assert_eq!(plan[0].starts_with("SEARCH"), cursor.is_some(), "a cursor is a range search: {what}");
                }
            }
        }
    }

    #[test]
    fn cidr_blocks_become_byte_ranges() {
        let (lo, hi) = parse_cidr("cidr", "198.18.0.0/15").unwrap();
        assert_eq!(lo, ip_bytes("198.18.0.0".parse().unwrap()));
        assert_eq!(hi, ip_bytes("198.19.255.255".parse().unwrap()));
        let (lo, hi) = parse_cidr("cidr", "2001:db8::/32").unwrap();
        assert_eq!(lo, ip_bytes("2001:db8::".parse().unwrap()));
        assert_eq!(hi, ip_bytes("2001:db8:ffff:ffff:ffff:ffff:ffff:ffff".parse().unwrap()));
        for bad in ["198.18.0.0", "198.18.0.0/33", "x/8", "2001:db8::/129", "/8"] {
            assert!(parse_cidr("cidr", bad).is_err(), "{bad}");
        }
    }

    /// The average a cursor carries comes back with the very bits it left with, or the next page
    /// would repeat or skip the rows that tie with the last one.
    #[test]
    fn a_cursor_carries_an_average_exactly() {
        let mut checked = 0;
        for m in crate::json::tests::rows(2_000) {
            for (k, count, sum) in
                [(SortKey::AvgLatency, m.latency_count, m.latency_sum), (SortKey::AvgProcessingTime, m.processing_count, m.processing_sum)]
            {
                let want = if count > 0 { sum / count as f64 } else { -1.0 };
                if want.is_nan() {
                    continue;
                }
                let (v, id) = decode_cursor(k, SortOrder::Asc, &encode_cursor(k, SortOrder::Asc, &(&m).into())).expect("own cursor");
                assert_eq!(id, m.id);
                let Value::Double(Some(got)) = v else { panic!("{v:?}") };
                assert_eq!(got.to_bits(), want.to_bits(), "{want:e}");
                checked += 1;
            }
        }
        assert!(checked > 3_000, "{checked}");
        // A cursor written before averages travelled as bits still reads.
        let old = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(r#"{"k":"avg_latency","o":"desc","v":0.25,"id":7}"#);
        assert_eq!(decode_cursor(SortKey::AvgLatency, SortOrder::Desc, &old).expect("old cursor"), (Value::Double(Some(0.25)), 7));
    }

    #[test]
    fn a_lookup_statement_is_the_one_sea_orm_builds() {
        for backend in [DbBackend::Sqlite, DbBackend::Postgres] {
            for limit in [reader::INLINE_ROWS, 10_000] {
                assert!(by_ip_template(backend, limit).is_some(), "{backend:?} {limit}: no template");
                for ip in ["198.18.0.1", "2001:db8::1", "198.18.0.1", "::ffff:198.18.0.2"] {
                    assert_eq!(by_ip_statement(backend, ip, limit), by_ip_select(ip, limit).build(backend), "{backend:?} {limit} {ip}");
                }
            }
        }
    }

    #[test]
    fn any_textual_address_is_canonicalised() {
        assert_eq!(canonical_ip("ip", "2001:DB8:0:0::1").unwrap().to_string(), "2001:db8::1");
        assert_eq!(canonical_ip("ip", "[::1]").unwrap().to_string(), "::1");
        assert!(canonical_ip("ip", "198.18.0.256").is_err());
        assert!(canonical_ip("ip", "' OR 1=1 --").is_err());
    }
}
