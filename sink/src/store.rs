//! Writing one batch: upserts of the per-client deltas, the applied-message ids and the sink's
//! counters, all in the caller's transaction.
//!
//! The upsert is one multi-row `INSERT … SELECT … FROM (VALUES …) ON CONFLICT (host,
//! interface_name, client_ip) DO UPDATE` per chunk ([`upsert_sql_with`]), built here as SQL text
//! with bound values and executed through sea-orm's connection (sea-orm's own
//! `insert_many().on_conflict()` builds a plain `VALUES` statement but costs about a third more
//! CPU per row in its query builder; see `docs/performance.md`). A chunk holds the rows of one
//! host and interface, bound once for the statement, and of one [`Shape`]: a client the batch saw
//! in a single session, the common case, binds only what that session does not already
//! determine; and rows whose newest session has the same server's side ([`ServerSide`]: what a
//! server answers every client with) bind that once too. sea-orm copies and converts every
//! bound value while it holds the transaction's connection, so SQLite waits for that work
//! statement by statement; fewer values are the part of it the sink can cut. Chunks hold a
//! power-of-two number of rows, so only a few dozen statement texts ever reach sqlx's
//! prepared-statement cache (100 statements).
//!
//! Inserted rows are told from updated ones by `RETURNING created_at` on PostgreSQL and by the
//! range of new ids on SQLite ([`counts_by_returning`]).
//!
//! Counters add; `first_seen`/`last_seen` take the min/max; metric minima and maxima ignore
//! NULLs; latest-value columns (and the last mode) change only when the batch's newest session
//! is at least as new as the stored one, so an old capture replayed late never overwrites newer
//! values. The kiss code follows its own time, `last_kiss_at` (the request time of the kissed
//! session): a batch's newest kiss replaces the stored one only when it is at least as new. Rows
//! written before that column existed have a code without a time; for them the batch's newest
//! session is compared with the row's `last_seen` instead, as before the column.

use std::collections::BTreeMap;

use sea_orm::{ConnectionTrait, DbBackend, DbErr, Statement, Value};

use crate::aggregate::{COUNTER_COLUMNS, ClientDelta, ClientKey, Counters, Metric, SessionLatest};

const TABLE: &str = "ntp_clients";

/// Latest-value columns from the newest session; `session_timestamp` must stay last, because
/// every guard compares against the stored value before this row's update.
const LATEST_COLUMNS: [&str; 22] = [
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
    "t1_randomized",
    "session_timestamp",
];

const METRICS: [&str; 3] = ["latency", "processing", "turnaround"];

/// How the rows of one upsert statement are bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Shape {
    /// Every column's value is bound: any delta.
    Full,
    /// A client the batch saw in exactly one session and nothing else ([`shape_of`]), the common
    /// case for an NTP server's clients, which poll every minute or slower. Only what that
    /// session does not already determine is bound (34 values instead of 57); the counters,
    /// metric counts, sums, minima and maxima, `first_seen` and the kiss time are written from
    /// those values by the statement.
    Single,
}

/// How the rows of one statement are bound: their [`Shape`]; whether they share one host and
/// interface, bound once for the statement (with one agent, every statement), or bind theirs
/// per row (a chunk that spans agents or interfaces); and whether they share the server's side
/// of their newest session ([`ServerSide`]), bound once too.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Form {
    /// What the rows' deltas are.
    pub shape: Shape,
    /// The rows' host and interface are the statement's.
    pub shared_key: bool,
    /// The rows' [`ServerSide`] is the statement's.
    pub shared_server: bool,
}

impl Form {
    /// Every form, for tests and benchmarks.
    pub fn all() -> impl Iterator<Item = Form> {
        [Shape::Full, Shape::Single].into_iter().flat_map(|shape| {
            [(true, true), (true, false), (false, true), (false, false)].into_iter().map(move |(shared_key, shared_server)| Form {
                shape,
                shared_key,
                shared_server,
            })
        })
    }
}

/// What the newest session of a client says about the server that answered it (or, unanswered,
/// what the request said in those fields): the columns of [`Src::Server`]. A server answers
/// every client with the same address, port, stratum, precision, reference id and leap
/// indicator until it changes its own state (and the VLAN is the capture's), so the rows of a
/// batch fall into a few groups that agree on all of them, and a statement of one group binds
/// them once: seven values fewer per row, two of them strings (`docs/performance.md`). The
/// columns' values are computed from the side alone ([`ServerGet`]), so equal sides give equal
/// values; `None` for a delta without a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ServerSide<'a> {
    ip: &'a str,
    port: i32,
    vlan: Option<i32>,
    stratum: i32,
    precision: i32,
    reference_id: &'a str,
    leap: i32,
}

/// The server's side of `d`'s newest session, borrowed from it.
fn server_side(d: &ClientDelta) -> Option<ServerSide<'_>> {
    d.latest.as_ref().map(|l| ServerSide {
        ip: &l.server_ip,
        port: l.server_port,
        vlan: l.vlan_id,
        stratum: l.stratum,
        precision: l.precision,
        reference_id: &l.reference_id,
        leap: l.leap_indicator,
    })
}

/// The value of one column for a row of [`Shape::Full`].
type Get = fn(&ClientKey, &ClientDelta) -> Value;

/// The value of one column of the server's side ([`ServerSide`]).
type ServerGet = for<'a> fn(Option<ServerSide<'a>>) -> Value;

/// Where an inserted column's value comes from.
enum Src {
    /// The batch's time: bound once per statement, in the select list.
    Now,
    /// The row's host or interface: bound once per statement, in the select list, when the
    /// statement's rows share it ([`Form::shared_key`]), per row otherwise.
    Key(Get),
    /// The server's side of the row's newest session ([`ServerSide`]): bound once per statement,
    /// in the select list, when the statement's rows share it ([`Form::shared_server`]), per row
    /// otherwise.
    Server(ServerGet),
    /// Bound per row in [`Shape::Full`]; in [`Shape::Single`] also bound, unless an expression
    /// is given: SQL over the row's bound columns, each written `{name}`.
    Row(Get, Option<&'static str>),
}

/// An inserted column.
struct Column {
    name: &'static str,
    src: Src,
}

const fn bound(name: &'static str, get: Get) -> Column {
    Column { name, src: Src::Row(get, None) }
}

const fn server(name: &'static str, get: ServerGet) -> Column {
    Column { name, src: Src::Server(get) }
}

const fn derived(name: &'static str, get: Get, single: &'static str) -> Column {
    Column { name, src: Src::Row(get, Some(single)) }
}

fn latest<T>(d: &ClientDelta, f: impl FnOnce(&SessionLatest) -> T) -> Option<T> {
    d.latest.as_ref().map(f)
}

/// A metric's four columns: in [`Shape::Single`] they follow from the session's own value.
macro_rules! metric {
    ($m:ident, $col:literal) => {
        [
            derived(
                concat!(stringify!($m), "_count"),
                |_, d| Value::BigInt(Some(d.$m.count)),
                concat!("CASE WHEN {", $col, "} IS NULL THEN 0 ELSE 1 END"),
            ),
            derived(concat!(stringify!($m), "_sum"), |_, d| Value::Double(Some(d.$m.sum)), concat!("COALESCE({", $col, "}, 0.0)")),
            derived(concat!(stringify!($m), "_min"), |_, d| Value::Double(d.$m.min), concat!("{", $col, "}")),
            derived(concat!(stringify!($m), "_max"), |_, d| Value::Double(d.$m.max), concat!("{", $col, "}")),
        ]
    };
}

/// A counter column: bound, or in [`Shape::Single`] the given expression.
macro_rules! counter {
    ($c:ident) => {
        bound(stringify!($c), |_, d| Value::BigInt(Some(d.counters.$c)))
    };
    ($c:ident, $single:expr) => {
        derived(stringify!($c), |_, d| Value::BigInt(Some(d.counters.$c)), $single)
    };
}

/// Every inserted column, in the statement's order. The `DO UPDATE` list is written from
/// [`LATEST_COLUMNS`], `COUNTER_COLUMNS` and [`METRICS`] (a unit test checks they agree).
static COLUMNS: std::sync::LazyLock<Vec<Column>> = std::sync::LazyLock::new(|| {
    let mut c = vec![
        Column { name: "host", src: Src::Key(|k, _| Value::String(Some(k.host.clone()))) },
        Column { name: "interface_name", src: Src::Key(|k, _| Value::String(Some(k.interface.clone()))) },
        bound("client_ip", |k, _| Value::String(Some(k.client_ip.clone()))),
        bound("client_ip_bin", |k, _| {
            Value::Bytes(k.client_ip.parse::<std::net::IpAddr>().ok().map(|ip| crate::aggregate::ip_bytes(ip).to_vec()))
        }),
        bound("client_port", |_, d| Value::Int(latest(d, |l| l.client_port))),
        server("server_ip", |s| Value::String(s.map(|s| s.ip.to_string()))),
        server("server_port", |s| Value::Int(s.map(|s| s.port))),
        server("vlan_id", |s| Value::Int(s.and_then(|s| s.vlan))),
        bound("ntp_version", |_, d| Value::Int(latest(d, |l| l.ntp_version))),
        server("stratum", |s| Value::Int(s.map(|s| s.stratum))),
        server("precision", |s| Value::Int(s.map(|s| s.precision))),
        bound("root_delay", |_, d| Value::Double(latest(d, |l| l.root_delay))),
        bound("root_dispersion", |_, d| Value::Double(latest(d, |l| l.root_dispersion))),
        server("reference_id", |s| Value::String(s.map(|s| s.reference_id.to_string()))),
        server("leap_indicator", |s| Value::Int(s.map(|s| s.leap))),
        bound("poll_interval", |_, d| Value::Int(latest(d, |l| l.poll_interval))),
        bound("reference_timestamp", |_, d| Value::BigInt(latest(d, |l| l.reference_timestamp).flatten())),
        bound("originate_timestamp", |_, d| Value::BigInt(latest(d, |l| l.originate_timestamp).flatten())),
        bound("receive_timestamp", |_, d| Value::BigInt(latest(d, |l| l.receive_timestamp).flatten())),
        bound("transmit_timestamp", |_, d| Value::BigInt(latest(d, |l| l.transmit_timestamp).flatten())),
        bound("client_to_server_latency", |_, d| Value::Double(latest(d, |l| l.client_to_server_latency).flatten())),
        bound("server_processing_time", |_, d| Value::Double(latest(d, |l| l.server_processing_time).flatten())),
        bound("total_process_time", |_, d| Value::Double(latest(d, |l| l.total_process_time).flatten())),
        bound("packet_length", |_, d| Value::Int(latest(d, |l| l.packet_length))),
        bound("t1_randomized", |_, d| Value::Bool(Some(d.latest.as_ref().is_some_and(|l| l.t1_randomized)))),
        bound("session_timestamp", |_, d| Value::BigInt(latest(d, |l| l.session_timestamp))),
        derived("first_seen", |_, d| Value::BigInt(Some(d.first_seen)), "{session_timestamp}"),
        bound("last_seen", |_, d| Value::BigInt(Some(d.last_seen))),
        bound("last_kiss_code", |_, d| Value::String(d.last_kiss_code.as_ref().map(|(_, k)| k.clone()))),
        derived(
            "last_kiss_at",
            |_, d| Value::BigInt(d.last_kiss_code.as_ref().map(|(t, _)| *t)),
            "CASE WHEN {last_kiss_code} IS NULL THEN NULL ELSE {session_timestamp} END",
        ),
        bound("last_mode", |_, d| Value::Int(Some(d.last_mode))),
        counter!(session_count, "1"),
        counter!(answered_count),
        counter!(unanswered_count, "1 - {answered_count}"),
        counter!(kod_count),
        counter!(retransmit_count),
        counter!(interleaved_count),
        counter!(t1_randomized_count, "CASE WHEN {t1_randomized} THEN 1 ELSE 0 END"),
        counter!(nts_count),
        counter!(extension_count),
        counter!(mac_count),
        counter!(observation_count, "0"),
        counter!(symmetric_count, "0"),
        counter!(broadcast_count, "0"),
        counter!(control_count, "0"),
        counter!(private_count, "0"),
        counter!(monlist_count, "0"),
    ];
    c.extend(metric!(latency, "client_to_server_latency"));
    c.extend(metric!(processing, "server_processing_time"));
    c.extend(metric!(turnaround, "total_process_time"));
    c.push(Column { name: "created_at", src: Src::Now });
    c.push(Column { name: "updated_at", src: Src::Now });
    c
});

/// Whether `column` is bound per row in statements of `form`.
fn is_bound(column: &Column, form: Form) -> bool {
    match column.src {
        Src::Now => false,
        Src::Key(_) => !form.shared_key,
        Src::Server(_) => !form.shared_server,
        Src::Row(_, single) => form.shape == Shape::Full || single.is_none(),
    }
}

/// Whether `column` is bound once for statements of `form`.
fn is_shared(column: &Column, form: Form) -> bool {
    match column.src {
        Src::Now => true,
        Src::Key(_) => form.shared_key,
        Src::Server(_) => form.shared_server,
        Src::Row(..) => false,
    }
}

/// Values bound per row in statements of `form`.
pub fn row_width(form: Form) -> usize {
    COLUMNS.iter().filter(|c| is_bound(c, form)).count()
}

/// Values bound once for statements of `form` ([`statement_values`]).
pub fn statement_width(form: Form) -> usize {
    COLUMNS.iter().filter(|c| is_shared(c, form)).count()
}

/// How a delta is bound: [`Shape::Single`] when the delta is exactly what one session makes of
/// a client (its counters, metrics, first seen and kiss time follow from the session's values,
/// as [`Shape::Single`]'s expressions write them), [`Shape::Full`] otherwise (several sessions,
/// observations, a non-finite or negative-zero metric, a response captured before its request).
pub fn shape_of(d: &ClientDelta) -> Shape {
    let Some(l) = &d.latest else { return Shape::Full };
    let c = &d.counters;
    let one_session = Counters {
        session_count: 1,
        answered_count: c.answered_count,
        unanswered_count: 1 - c.answered_count,
        kod_count: c.kod_count,
        retransmit_count: c.retransmit_count,
        interleaved_count: c.interleaved_count,
        t1_randomized_count: i64::from(l.t1_randomized),
        nts_count: c.nts_count,
        extension_count: c.extension_count,
        mac_count: c.mac_count,
        ..Counters::default()
    };
    // Not finite: the metric skips it, the statement would count it. Negative zero: the
    // metric's sum is 0.0 + -0.0 = +0.0, the statement's would be -0.0.
    let exact = |v: f64| v.is_finite() && !(v == 0.0 && v.is_sign_negative());
    let metric = |m: &Metric, v: Option<f64>| v.is_none_or(exact) && *m == Metric::of(v);
    let single = *c == one_session
        && (0..=1).contains(&c.answered_count)
        && d.first_seen == l.session_timestamp
        && d.last_kiss_code.as_ref().is_none_or(|(t, _)| *t == l.session_timestamp)
        && metric(&d.latency, l.client_to_server_latency)
        && metric(&d.processing, l.server_processing_time)
        && metric(&d.turnaround, l.total_process_time);
    if single { Shape::Single } else { Shape::Full }
}

/// The bound values of one row of `form`, in the statement's order.
pub fn row_values(key: &ClientKey, d: &ClientDelta, form: Form, v: &mut Vec<Value>) {
    for c in COLUMNS.iter().filter(|c| is_bound(c, form)) {
        match c.src {
            Src::Row(get, _) | Src::Key(get) => v.push(get(key, d)),
            Src::Server(get) => v.push(get(server_side(d))),
            Src::Now => {}
        }
    }
}

/// The values bound once per statement of `form`, before every row's, in the statement's
/// order: the batch's time, with [`Form::shared_key`] the host and interface of `first` (any
/// row of the statement), with [`Form::shared_server`] its [`ServerSide`].
pub fn statement_values(form: Form, first: (&ClientKey, &ClientDelta), now: i64) -> Vec<Value> {
    COLUMNS
        .iter()
        .filter_map(|c| match c.src {
            Src::Now => Some(Value::BigInt(Some(now))),
            Src::Key(get) if form.shared_key => Some(get(first.0, first.1)),
            Src::Server(get) if form.shared_server => Some(get(server_side(first.1))),
            Src::Key(_) | Src::Server(_) | Src::Row(..) => None,
        })
        .collect()
}

/// Placeholder number `n` (counted from 1 in the order of the text).
fn placeholder(backend: DbBackend, n: usize) -> String {
    match backend {
        DbBackend::Postgres => format!("${n}"),
        _ => "?".into(),
    }
}

/// `rows` tuples of `cols` placeholders, numbered from `first` on PostgreSQL.
fn placeholders_from(backend: DbBackend, first: usize, rows: usize, cols: usize) -> String {
    let mut out = String::with_capacity(rows * cols * 6);
    let mut n = first;
    for r in 0..rows {
        if r > 0 {
            out.push(',');
        }
        out.push('(');
        for c in 0..cols {
            if c > 0 {
                out.push(',');
            }
            match backend {
                DbBackend::Postgres => {
                    out.push('$');
                    out.push_str(&n.to_string());
                }
                _ => out.push('?'),
            }
            n += 1;
        }
        out.push(')');
    }
    out
}

fn placeholders(backend: DbBackend, rows: usize, cols: usize) -> String {
    placeholders_from(backend, 1, rows, cols)
}

/// The upsert statement for `rows` rows of `form`, as [`upsert`] runs it on `backend`: with
/// `RETURNING created_at` where [`counts_by_returning`], without it elsewhere.
pub fn upsert_sql(backend: DbBackend, form: Form, rows: usize) -> String {
    upsert_sql_with(backend, form, rows, counts_by_returning(backend))
}

/// Whether [`upsert`] tells inserted rows from updated ones by a `RETURNING created_at` per row
/// (PostgreSQL, where several sinks may insert at once), or by the range of new ids (SQLite:
/// one writer holds the lock for the whole batch, and `AUTOINCREMENT` gives every new row an
/// id above every id the table ever held). Through sqlx, every returned row crosses from
/// SQLite's worker thread to the sink's task on its own, and `perf` showed that worker waiting
/// on that channel for 89 % of its sleeps in the end-to-end run (docs/performance.md).
pub fn counts_by_returning(backend: DbBackend) -> bool {
    backend != DbBackend::Sqlite
}

/// The upsert statement for `rows` rows of `form`, with or without `RETURNING created_at`:
///
/// ```sql
/// INSERT OR FAIL INTO ntp_clients (host, interface_name, client_ip, …)
/// SELECT ?, ?, v.column1, …, ?, ? FROM (VALUES (?, …), …) AS v
/// WHERE true ON CONFLICT (host, interface_name, client_ip) DO UPDATE SET …
/// ```
///
/// The statement's values ([`statement_values`]) come first, then the rows'. SQLite numbers
/// anonymous parameters in the order of the text, and so does this code on PostgreSQL
/// (`$1` first), so every placeholder stays anonymous on
/// SQLite (sqlx looks numbered ones, `?NNN`, up by name, a linear scan per bound value), while
/// the select list may use a row's value in several columns ([`Shape::Single`]). The rows stay
/// one `VALUES` list, which SQLite runs as a co-routine (`SCAN n-ROW VALUES CLAUSE`).
///
/// On SQLite the statement is written so that it cannot abort half-way, which spares it a
/// statement journal (SQLite's copy of every page a statement changes, kept so that the
/// statement alone can be undone; it is kept for statements that may write several rows and
/// may abort): `INSERT OR FAIL` (the key's `NOT NULL` checks fail instead of aborting; the
/// transaction is rolled back on any error anyway), minima and maxima as `CASE` (SQLite counts
/// every SQL function call as a possible abort; `COALESCE` is compiled inline), and no
/// `NOT NULL` column among those the `DO UPDATE` changes (migration `m20261204_000004`). That
/// took the sink from 84–86 k to 91–93 k upserts/s (docs/performance.md).
pub fn upsert_sql_with(backend: DbBackend, form: Form, rows: usize, returning: bool) -> String {
    let t = TABLE;
    let bound: Vec<&str> = COLUMNS.iter().filter(|c| is_bound(c, form)).map(|c| c.name).collect();
    let value_of = |name: &str| {
        let i = bound.iter().position(|b| *b == name).unwrap_or_else(|| panic!("{name} is not bound in {form:?} rows"));
        format!("v.column{}", i + 1)
    };
    let mut shared = 0;
    let select: Vec<String> = COLUMNS
        .iter()
        .map(|c| match c.src {
            _ if is_shared(c, form) => {
                shared += 1;
                placeholder(backend, shared)
            }
            Src::Row(_, Some(expr)) if form.shape == Shape::Single => render(expr, &value_of),
            _ => value_of(c.name),
        })
        .collect();
    let names: Vec<&str> = COLUMNS.iter().map(|c| c.name).collect();
    let mut set: Vec<String> = Vec::new();
    // The batch's newest session replaces the stored values when it exists and is at least as
    // new as theirs, or when none is stored. Written as its negation, where a stored NULL makes
    // the comparison NULL and so picks the new values: SQLite then reads the stored time once per
    // column instead of twice and runs two fewer instructions (22 columns a row; `EXPLAIN`).
    let older = format!("excluded.session_timestamp IS NULL OR {t}.session_timestamp > excluded.session_timestamp");
    for c in LATEST_COLUMNS {
        set.push(format!("{c} = CASE WHEN {older} THEN {t}.{c} ELSE excluded.{c} END"));
    }
    set.push(format!("first_seen = {}", least(&format!("{t}.first_seen"), "excluded.first_seen")));
    set.push(format!("last_seen = {}", greatest(&format!("{t}.last_seen"), "excluded.last_seen")));
    // The batch's newest kiss replaces the stored one when it is at least as new; a row written
    // before `last_kiss_at` existed, holding a code without a time, is judged by its last_seen.
    let kiss_newer = format!(
        "excluded.last_kiss_at IS NOT NULL AND CASE WHEN {t}.last_kiss_at IS NOT NULL THEN excluded.last_kiss_at >= {t}.last_kiss_at \
         ELSE {t}.last_kiss_code IS NULL OR excluded.last_seen >= {t}.last_seen END"
    );
    for c in ["last_kiss_code", "last_kiss_at"] {
        set.push(format!("{c} = CASE WHEN {kiss_newer} THEN excluded.{c} ELSE {t}.{c} END"));
    }
    set.push(format!("last_mode = CASE WHEN excluded.last_seen >= {t}.last_seen THEN excluded.last_mode ELSE {t}.last_mode END"));
    for c in COUNTER_COLUMNS {
        set.push(format!("{c} = {t}.{c} + excluded.{c}"));
    }
    for m in METRICS {
        set.push(format!("{m}_count = {t}.{m}_count + excluded.{m}_count"));
        set.push(format!("{m}_sum = {t}.{m}_sum + excluded.{m}_sum"));
        let (stored, new) = (format!("COALESCE({t}.{m}_min, excluded.{m}_min)"), format!("COALESCE(excluded.{m}_min, {t}.{m}_min)"));
        set.push(format!("{m}_min = {}", least(&stored, &new)));
        let (stored, new) = (format!("COALESCE({t}.{m}_max, excluded.{m}_max)"), format!("COALESCE(excluded.{m}_max, {t}.{m}_max)"));
        set.push(format!("{m}_max = {}", greatest(&stored, &new)));
    }
    // `client_ip_bin` is not in the list: naming an indexed column there makes SQLite rewrite
    // its index entry on every update, same value or not (7 % of the write rate). Rows copied
    // in without it get it from [`fill_binary_addresses`] instead.
    set.push("updated_at = excluded.updated_at".into());
    format!(
        "INSERT {}INTO {t} ({}) SELECT {} FROM (VALUES {}) AS v \
         WHERE true ON CONFLICT (host, interface_name, client_ip) DO UPDATE SET {}{}",
        if backend == DbBackend::Sqlite { "OR FAIL " } else { "" },
        names.join(", "),
        select.join(", "),
        placeholders_from(backend, shared + 1, rows, bound.len()),
        set.join(", "),
        if returning { " RETURNING created_at" } else { "" }
    )
}

/// `expr` with every `{name}` replaced by `value_of(name)`.
fn render(expr: &str, value_of: &dyn Fn(&str) -> String) -> String {
    let mut out = String::new();
    let mut rest = expr;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let close = open + rest[open..].find('}').expect("a closing brace");
        out.push_str(&value_of(&rest[open + 1..close]));
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    out
}

/// The smaller of two values, written without a function call (see [`upsert_sql_with`]); `NULL`
/// when `b` is (callers make `b` `NULL` only when `a` is too).
fn least(a: &str, b: &str) -> String {
    format!("CASE WHEN {a} <= {b} THEN {a} ELSE {b} END")
}

/// The larger of two values, as [`least`].
fn greatest(a: &str, b: &str) -> String {
    format!("CASE WHEN {a} >= {b} THEN {a} ELSE {b} END")
}

/// Largest power of two of rows of `shape`, their server's side shared or not, that stays
/// within the backend's bind limit whether the key is bound per row or once.
fn max_chunk(backend: DbBackend, shape: Shape, shared_server: bool) -> usize {
    let limit = match backend {
        DbBackend::Postgres => 65_535,
        _ => 32_766,
    };
    let widest =
        |f: fn(Form) -> usize| f(Form { shape, shared_key: true, shared_server }).max(f(Form { shape, shared_key: false, shared_server }));
    let rows = ((limit - widest(statement_width)) / widest(row_width)).max(1);
    1 << (usize::BITS - 1 - rows.leading_zeros())
}

/// Chunk sizes for `n` rows: full chunks, then the remainder as powers of two.
pub fn chunk_sizes(n: usize, max: usize) -> Vec<usize> {
    let mut out = vec![max; n / max];
    let mut rest = n % max;
    while rest > 0 {
        let p = 1 << (usize::BITS - 1 - rest.leading_zeros());
        out.push(p);
        rest -= p;
    }
    out
}

/// Rows inserted and updated by one batch.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct UpsertCounts {
    /// New rows.
    pub inserted: u64,
    /// Existing rows changed.
    pub updated: u64,
}

/// One statement's rows, in key order.
#[derive(Debug)]
struct Chunk<'a> {
    form: Form,
    rows: Vec<(&'a ClientKey, &'a ClientDelta)>,
}

/// Server sides ([`ServerSide`]) a batch's rows of one shape are grouped by, at most (the
/// largest groups); rows of any further side are bound per row.
const SERVER_GROUPS: usize = 8;

/// Distinct server sides counted per shape and batch, at most; rows of sides first seen after
/// that many are bound per row (only a batch from very many servers or very varied unanswered
/// requests gets there). The sides are looked up by a linear scan, most rows finding theirs at
/// the first place (a hash map's SipHash cost 2 % of the store bench's time in `perf`).
const SERVER_SIDES_COUNTED: usize = 64;

/// Rows a group of one [`ServerSide`] needs for statements of its own; the rows of smaller
/// groups are bound per row, with the rest, rather than adding a statement (each costs a round
/// trip to the driver's thread) for a handful of rows.
const SERVER_GROUP_MIN: usize = 64;

/// The sides of `rows` that bind theirs once ([`plan`]): the [`SERVER_GROUPS`] largest groups of
/// at least [`SERVER_GROUP_MIN`] rows, largest first, ties in the order first seen.
fn shared_sides<'a>(rows: &[(&ClientKey, &'a ClientDelta)]) -> Vec<Option<ServerSide<'a>>> {
    let mut sides: Vec<(Option<ServerSide<'a>>, usize)> = Vec::new();
    for (_, d) in rows {
        let side = server_side(d);
        if let Some((_, n)) = sides.iter_mut().find(|(s, _)| *s == side) {
            *n += 1;
        } else if sides.len() < SERVER_SIDES_COUNTED {
            sides.push((side, 1));
        }
    }
    sides.retain(|(_, n)| *n >= SERVER_GROUP_MIN);
    // Stable: equal groups stay in the order first seen.
    sides.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
    sides.into_iter().take(SERVER_GROUPS).map(|(s, _)| s).collect()
}

/// The statements for `deltas`: the [`Shape::Single`] rows, then the others. Each shape's rows
/// are grouped by their [`ServerSide`] (the [`SERVER_GROUPS`] largest groups of at least
/// [`SERVER_GROUP_MIN`] rows, largest first, each binding its side once; then the other rows,
/// binding it per row), and each group is cut into chunks of at most the backend's bind limit
/// ([`chunk_sizes`]) in key order; a chunk whose rows all have one host and interface binds
/// them once. With `compact` false every row binds every value but the key ([`Shape::Full`],
/// nothing shared; a test compares the two).
fn plan(backend: DbBackend, deltas: &BTreeMap<ClientKey, ClientDelta>, compact: bool) -> Vec<Chunk<'_>> {
    let mut by_shape: [(Shape, Vec<(&ClientKey, &ClientDelta)>); 2] = [(Shape::Single, Vec::new()), (Shape::Full, Vec::new())];
    for (k, d) in deltas {
        let shape = if compact { shape_of(d) } else { Shape::Full };
        by_shape[usize::from(shape == Shape::Full)].1.push((k, d));
    }
    let mut chunks = Vec::new();
    for (shape, rows) in by_shape {
        let shared = if compact { shared_sides(&rows) } else { Vec::new() };
        // The shared groups' rows, then the others (last), each in key order.
        let mut groups: Vec<Vec<(&ClientKey, &ClientDelta)>> = vec![Vec::new(); shared.len() + 1];
        for row in rows {
            let side = server_side(row.1);
            let g = shared.iter().position(|s| *s == side).unwrap_or(shared.len());
            groups[g].push(row);
        }
        let others = shared.len();
        for (g, rows) in groups.into_iter().enumerate() {
            let shared_server = g < others;
            let mut rows = rows.into_iter();
            for size in chunk_sizes(rows.len(), max_chunk(backend, shape, shared_server)) {
                let rows: Vec<_> = rows.by_ref().take(size).collect();
                let (first, last) = (rows[0].0, rows[rows.len() - 1].0);
                // Rows are in key order, so the first and the last share host and interface
                // only when every row between them does.
                let shared_key = first.host == last.host && first.interface == last.interface;
                chunks.push(Chunk { form: Form { shape, shared_key, shared_server }, rows });
            }
        }
    }
    chunks
}

/// Upserts the deltas. `now` must be unique per batch: a returned `created_at` equal to it marks
/// a row this statement inserted (where [`counts_by_returning`]; elsewhere the rows above the
/// table's highest id before the first chunk are the inserted ones, so on SQLite call it inside
/// a write transaction, as the sink does, or another writer's rows could count as this call's).
pub async fn upsert<C: ConnectionTrait>(conn: &C, deltas: &BTreeMap<ClientKey, ClientDelta>, now: i64) -> Result<UpsertCounts, DbErr> {
    upsert_shaped(conn, deltas, now, true).await
}

/// The form and row count of each statement [`upsert`] runs for `deltas` on `backend`, in order.
pub fn statement_forms(backend: DbBackend, deltas: &BTreeMap<ClientKey, ClientDelta>) -> Vec<(Form, usize)> {
    plan(backend, deltas, true).iter().map(|c| (c.form, c.rows.len())).collect()
}

/// [`upsert`], or with `compact` false every value but the key bound per row ([`Shape::Full`],
/// no server side shared): the two must leave the same rows behind (tested).
pub async fn upsert_shaped<C: ConnectionTrait>(
    conn: &C,
    deltas: &BTreeMap<ClientKey, ClientDelta>,
    now: i64,
    compact: bool,
) -> Result<UpsertCounts, DbErr> {
    let backend = conn.get_database_backend();
    let returning = counts_by_returning(backend);
    let id_floor =
        if returning || deltas.is_empty() { 0 } else { query_i64(conn, "SELECT COALESCE(MAX(id), 0) FROM ntp_clients", None).await? };
    let mut counts = UpsertCounts::default();
    let chunks = plan(backend, deltas, compact);
    let statement = |chunk: &Chunk<'_>| {
        let mut values = statement_values(chunk.form, chunk.rows[0], now);
        values.reserve(chunk.rows.len() * row_width(chunk.form));
        for (k, d) in &chunk.rows {
            row_values(k, d, chunk.form, &mut values);
        }
        Statement::from_sql_and_values(backend, upsert_sql_with(backend, chunk.form, chunk.rows.len(), returning), values)
    };
    let mut next = chunks.first().map(statement);
    for (i, chunk) in chunks.iter().enumerate() {
        let Some(stmt) = next.take() else { break };
        let size = chunk.rows.len();
        if !returning {
            // The next statement is built while this one runs on the driver's thread.
            let (written, ahead) = tokio::join!(conn.execute_raw(stmt), async { chunks.get(i + 1).map(statement) });
            next = ahead;
            let written = written?.rows_affected();
            if written != size as u64 {
                return Err(DbErr::Custom(format!("an upsert of {size} clients wrote {written} rows")));
            }
            continue;
        }
        next = chunks.get(i + 1).map(statement);
        for row in conn.query_all_raw(stmt).await? {
            let created: i64 = row.try_get_by_index(0)?;
            if created == now {
                counts.inserted += 1;
            } else {
                counts.updated += 1;
            }
        }
    }
    if !returning && !deltas.is_empty() {
        let inserted = query_i64(conn, "SELECT COUNT(*) FROM ntp_clients WHERE id > ?", Some(id_floor)).await?;
        counts.inserted = u64::try_from(inserted).unwrap_or(0);
        counts.updated = (deltas.len() as u64).saturating_sub(counts.inserted);
    }
    Ok(counts)
}

/// Rows [`fill_binary_addresses`] fills per call (the sink calls it after each batch).
pub const FILL_PER_BATCH: u64 = 4_096;

/// Gives up to `limit` rows without the binary form of their address (rows copied in from the
/// Flask seed's table, README) that form, in a transaction of its own, and returns how many it
/// filled. An address that does not parse gets an empty one, so it is not looked at again (it
/// matches no CIDR filter, as before). Finding none costs one seek in the `client_ip_bin` index
/// and writes nothing. On PostgreSQL, rows another sink is filling are skipped, not waited for.
pub async fn fill_binary_addresses(db: &sea_orm::DatabaseConnection, limit: u64) -> Result<u64, DbErr> {
    if copied_rows(db, limit).await?.is_empty() {
        return Ok(0);
    }
    let backend = db.get_database_backend();
    let txn = begin_write(db).await?;
    let rows = copied_rows(&txn, limit).await?;
    let mut filled = 0;
    for chunk in rows.chunks(1_024) {
        let mut values = Vec::with_capacity(chunk.len() * 2);
        for row in chunk {
            let (id, ip): (i64, Option<String>) = (row.try_get_by_index(0)?, row.try_get_by_index(1)?);
            let ip = ip.and_then(|ip| ip.parse::<std::net::IpAddr>().ok());
            values.push(Value::BigInt(Some(id)));
            values.push(Value::Bytes(Some(ip.map_or_else(Vec::new, |ip| crate::aggregate::ip_bytes(ip).to_vec()))));
        }
        // VALUES columns are `column1`, `column2` on both backends.
        let sql = format!(
            "UPDATE ntp_clients SET client_ip_bin = v.column2 FROM (VALUES {}) AS v \
             WHERE ntp_clients.id = v.column1 AND ntp_clients.client_ip_bin IS NULL",
            placeholders(backend, chunk.len(), 2)
        );
        filled += txn.execute_raw(Statement::from_sql_and_values(backend, sql, values)).await?.rows_affected();
    }
    txn.commit().await?;
    Ok(filled)
}

/// `(id, client_ip)` of up to `limit` rows without `client_ip_bin`; on PostgreSQL locked, and
/// skipping rows another transaction has locked.
async fn copied_rows<C: ConnectionTrait>(conn: &C, limit: u64) -> Result<Vec<sea_orm::QueryResult>, DbErr> {
    let backend = conn.get_database_backend();
    let sql = match backend {
        DbBackend::Postgres => {
            "SELECT id, CAST(client_ip AS TEXT) FROM ntp_clients WHERE client_ip_bin IS NULL ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED"
        }
        _ => "SELECT id, CAST(client_ip AS TEXT) FROM ntp_clients WHERE client_ip_bin IS NULL LIMIT ?",
    };
    let limit = Value::BigInt(Some(i64::try_from(limit).unwrap_or(i64::MAX)));
    conn.query_all_raw(Statement::from_sql_and_values(backend, sql, [limit])).await
}

/// One integer from `sql` (with at most one bound integer).
async fn query_i64<C: ConnectionTrait>(conn: &C, sql: &str, arg: Option<i64>) -> Result<i64, DbErr> {
    let backend = conn.get_database_backend();
    let values: Vec<Value> = arg.into_iter().map(|a| Value::BigInt(Some(a))).collect();
    let row = conn.query_one_raw(Statement::from_sql_and_values(backend, sql, values)).await?;
    row.ok_or_else(|| DbErr::RecordNotFound(sql.to_string()))?.try_get_by_index(0)
}

/// Which of `ids` were applied before.
pub async fn applied_ids<C: ConnectionTrait>(conn: &C, ids: &[String]) -> Result<Vec<String>, DbErr> {
    let backend = conn.get_database_backend();
    let mut found = Vec::new();
    for chunk in ids.chunks(500) {
        let marks = placeholders(backend, 1, chunk.len());
        let sql = format!("SELECT message_id FROM applied_batches WHERE message_id IN {marks}");
        let values: Vec<Value> = chunk.iter().map(|s| Value::String(Some(s.clone()))).collect();
        for row in conn.query_all_raw(Statement::from_sql_and_values(backend, sql, values)).await? {
            found.push(row.try_get_by_index::<String>(0)?);
        }
    }
    Ok(found)
}

/// Records applied message ids with their stream sequences.
pub async fn record_applied<C: ConnectionTrait>(conn: &C, applied: &[(String, u64)], now: i64) -> Result<(), DbErr> {
    let backend = conn.get_database_backend();
    for chunk in applied.chunks(1000) {
        let sql = format!(
            "INSERT INTO applied_batches (message_id, stream_sequence, applied_at) VALUES {} ON CONFLICT (message_id) DO NOTHING",
            placeholders(backend, chunk.len(), 3)
        );
        let mut values = Vec::with_capacity(chunk.len() * 3);
        for (id, seq) in chunk {
            values.push(Value::String(Some(id.clone())));
            values.push(Value::BigInt(Some(i64::try_from(*seq).unwrap_or(i64::MAX))));
            values.push(Value::BigInt(Some(now)));
        }
        conn.execute_raw(Statement::from_sql_and_values(backend, sql, values)).await?;
    }
    Ok(())
}

/// Where to start a consumer that no longer exists: the oldest stream sequence still remembered
/// as applied (everything from there on is either remembered or new).
pub async fn resume_hint<C: ConnectionTrait>(conn: &C) -> Result<Option<u64>, DbErr> {
    let backend = conn.get_database_backend();
    let row = conn.query_one_raw(Statement::from_string(backend, "SELECT MIN(stream_sequence) FROM applied_batches")).await?;
    Ok(row.and_then(|r| r.try_get_by_index::<Option<i64>>(0).ok().flatten()).and_then(|v| u64::try_from(v).ok()))
}

/// Forgets applied ids older than `cutoff`; returns how many.
pub async fn prune_applied<C: ConnectionTrait>(conn: &C, cutoff: i64) -> Result<u64, DbErr> {
    let backend = conn.get_database_backend();
    let sql = match backend {
        DbBackend::Postgres => "DELETE FROM applied_batches WHERE applied_at < $1",
        _ => "DELETE FROM applied_batches WHERE applied_at < ?",
    };
    let res = conn.execute_raw(Statement::from_sql_and_values(backend, sql, [Value::BigInt(Some(cutoff))])).await?;
    Ok(res.rows_affected())
}

/// What one committed batch adds to the sink's persisted counters.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct StateDelta {
    /// Highest stream sequence in the batch.
    pub last_sequence: u64,
    /// Records received (including ones skipped as duplicates or dead-lettered).
    pub total_received: u64,
    /// Records applied.
    pub total_processed: u64,
    /// Messages set aside as undecodable or invalid (dead-lettered); failed write attempts are
    /// counted apart ([`Self::failed_attempts`]).
    pub processing_errors: u64,
    /// Batch writes that failed (and were retried) since the last batch committed.
    pub failed_attempts: u64,
    /// Rows inserted.
    pub total_inserted: u64,
    /// Rows updated.
    pub total_updated: u64,
    /// Messages applied.
    pub messages_applied: u64,
    /// Messages skipped because they were applied before.
    pub duplicates_skipped: u64,
    /// Messages dead-lettered.
    pub dead_lettered: u64,
    /// Consumer pending + ack-pending, last known.
    pub queue_size: u64,
    /// Commit lag of the newest record, seconds.
    pub lag_seconds: Option<f64>,
    /// Records in this batch.
    pub batch_records: u64,
    /// Seconds the writer took for the batch: its transaction, from the look-up of applied ids
    /// to the commit (aggregation happens before, beside the previous batch, unless the batch is
    /// folded again because some of its messages were applied before).
    pub batch_seconds: f64,
    /// The commit time written into the row (`last_commit_at`, `updated_at`), Unix ns.
    pub written_at: i64,
}

/// Adds a batch's delta to the `sink_state` row of `consumer` (created on first use).
pub async fn update_state<C: ConnectionTrait>(conn: &C, consumer: &str, stream: &str, d: &StateDelta, now: i64) -> Result<(), DbErr> {
    let backend = conn.get_database_backend();
    let greatest = if backend == DbBackend::Postgres { "GREATEST" } else { "MAX" };
    let additive = [
        "total_received",
        "total_processed",
        "processing_errors",
        "total_inserted",
        "total_updated",
        "batches",
        "messages_applied",
        "duplicates_skipped",
        "dead_lettered",
        "failed_attempts",
    ];
    let cols = [
        "consumer",
        "stream",
        "last_sequence",
        "total_received",
        "total_processed",
        "processing_errors",
        "total_inserted",
        "total_updated",
        "batches",
        "messages_applied",
        "duplicates_skipped",
        "dead_lettered",
        "failed_attempts",
        "queue_size",
        "last_commit_at",
        "lag_seconds",
        "last_batch_records",
        "last_batch_seconds",
        "updated_at",
    ];
    let mut set: Vec<String> = additive.iter().map(|c| format!("{c} = sink_state.{c} + excluded.{c}")).collect();
    set.push(format!("last_sequence = {greatest}(sink_state.last_sequence, excluded.last_sequence)"));
    for c in ["queue_size", "last_commit_at", "lag_seconds", "last_batch_records", "last_batch_seconds", "updated_at"] {
        set.push(format!("{c} = excluded.{c}"));
    }
    let sql = format!(
        "INSERT INTO sink_state ({}) VALUES {} ON CONFLICT (consumer) DO UPDATE SET {}",
        cols.join(", "),
        placeholders(backend, 1, cols.len()),
        set.join(", ")
    );
    let i = |v: u64| Value::BigInt(Some(i64::try_from(v).unwrap_or(i64::MAX)));
    let values = vec![
        Value::String(Some(consumer.to_string())),
        Value::String(Some(stream.to_string())),
        i(d.last_sequence),
        i(d.total_received),
        i(d.total_processed),
        i(d.processing_errors),
        i(d.total_inserted),
        i(d.total_updated),
        i(1),
        i(d.messages_applied),
        i(d.duplicates_skipped),
        i(d.dead_lettered),
        i(d.failed_attempts),
        i(d.queue_size),
        Value::BigInt(Some(now)),
        Value::Double(d.lag_seconds),
        i(d.batch_records),
        Value::Double(Some(d.batch_seconds)),
        Value::BigInt(Some(now)),
    ];
    conn.execute_raw(Statement::from_sql_and_values(backend, sql, values)).await?;
    Ok(())
}

/// A write transaction. On SQLite the write lock is taken up front (`BEGIN IMMEDIATE`), so a
/// transaction that reads before it writes waits out a busy database (busy timeout) instead of
/// failing its lock upgrade.
pub async fn begin_write(db: &sea_orm::DatabaseConnection) -> Result<sea_orm::DatabaseTransaction, DbErr> {
    use sea_orm::TransactionTrait;
    db.begin_with_options(sea_orm::TransactionOptions {
        sqlite_transaction_mode: Some(sea_orm::SqliteTransactionMode::Immediate),
        ..sea_orm::TransactionOptions::default()
    })
    .await
}

/// Whether the database takes a write now, without writing one: on SQLite the write lock is
/// taken and given back (`BEGIN IMMEDIATE` then `ROLLBACK` adds nothing to the WAL, so the API's
/// readers keep their caches); on PostgreSQL an empty transaction. It waits as a batch would
/// (busy timeout), which is what the heartbeat's time limit watches.
pub async fn probe_write(db: &sea_orm::DatabaseConnection) -> Result<(), DbErr> {
    begin_write(db).await?.rollback().await
}

/// The sink's heartbeat: the last known queue size and the time, without counting a batch. It
/// creates the consumer's row when there is none yet, so a sink that has not applied anything
/// (no traffic so far) is still seen alive.
pub async fn heartbeat<C: ConnectionTrait>(conn: &C, consumer: &str, stream: &str, queue_size: u64, now: i64) -> Result<(), DbErr> {
    let backend = conn.get_database_backend();
    let sql = format!(
        "INSERT INTO sink_state (consumer, stream, queue_size, updated_at) VALUES {} \
         ON CONFLICT (consumer) DO UPDATE SET queue_size = excluded.queue_size, updated_at = excluded.updated_at",
        placeholders(backend, 1, 4)
    );
    let values = [
        Value::String(Some(consumer.to_string())),
        Value::String(Some(stream.to_string())),
        Value::BigInt(Some(i64::try_from(queue_size).unwrap_or(i64::MAX))),
        Value::BigInt(Some(now)),
    ];
    conn.execute_raw(Statement::from_sql_and_values(backend, sql, values)).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_full_then_powers_of_two_within_the_bind_limits() {
        assert_eq!(chunk_sizes(0, 512), Vec::<usize>::new());
        assert_eq!(chunk_sizes(1200, 512), vec![512, 512, 128, 32, 16]);
        assert_eq!(chunk_sizes(7, 512), vec![4, 2, 1]);
        for form in Form::all() {
            let (w, s) = (row_width(form), statement_width(form));
            assert!(max_chunk(DbBackend::Sqlite, form.shape, form.shared_server) * w + s <= 32_766);
            assert!(max_chunk(DbBackend::Postgres, form.shape, form.shared_server) * w + s <= 65_535);
        }
        let sizes =
            |shape| [DbBackend::Sqlite, DbBackend::Postgres].map(|b| [false, true].map(|shared_server| max_chunk(b, shape, shared_server)));
        // SQLite: (32 766 - 4) / 59 = 555 and (32 766 - 11) / 52 = 629 rows in full; one session
        // (32 766 - 4) / 36 = 910, and (32 766 - 11) / 29 = 1 129 with the server's side shared.
        assert_eq!(sizes(Shape::Full), [[512, 512], [1024, 1024]]);
        assert_eq!(sizes(Shape::Single), [[512, 1024], [1024, 2048]]);
    }

    #[test]
    fn statements_bind_every_row_value_and_the_statement_values_once() {
        for form in Form::all() {
            let sqlite = upsert_sql(DbBackend::Sqlite, form, 3);
            assert_eq!(sqlite.matches('?').count(), 3 * row_width(form) + statement_width(form));
            assert!(sqlite.starts_with("INSERT OR FAIL INTO ntp_clients"));
            assert!(sqlite.contains(
                "first_seen = CASE WHEN ntp_clients.first_seen <= excluded.first_seen THEN ntp_clients.first_seen ELSE excluded.first_seen END"
            ));
            let pg = upsert_sql(DbBackend::Postgres, form, 2);
            let last = 2 * row_width(form) + statement_width(form);
            let head = if form.shared_key { "SELECT $1, $2, v.column1, " } else { "SELECT v.column1, v.column2, v.column3, " };
            assert!(pg.contains(head), "{form:?}");
            assert!(pg.contains(&format!("${last})")));
            assert!(!pg.contains(&format!("${}", last + 1)));
            assert!(pg.starts_with("INSERT INTO ntp_clients"));
        }
        let widths: Vec<(usize, usize)> = Form::all().map(|f| (row_width(f), statement_width(f))).collect();
        // Full, then Single; each with the key shared and the server's side shared, the key
        // shared, the server's side shared, neither. The server's side is seven columns.
        assert_eq!(widths, [(50, 11), (57, 4), (52, 9), (59, 2), (27, 11), (34, 4), (29, 9), (36, 2)]);
    }

    /// Chunks follow the bind limit across hosts and interfaces (so a batch from many agents
    /// needs no more statements than one from a single agent), and bind the key once only where
    /// all their rows share it.
    #[test]
    fn chunks_span_agents_and_share_the_key_where_they_can() {
        let mut deltas = BTreeMap::new();
        for (host, interface, n) in [("a", "eth0", 300), ("a", "eth1", 300), ("b", "eth0", 700)] {
            for i in 0..n {
                let key =
                    ClientKey { host: host.into(), interface: interface.into(), client_ip: format!("198.18.{}.{}", i / 250, i % 250) };
                let d = if i % 100 == 0 { ClientDelta { latest: None, ..one_session(Some(0.5)) } } else { one_session(Some(0.5)) };
                deltas.insert(key, d);
            }
        }
        let chunks = plan(DbBackend::Sqlite, &deltas, true);
        let got: Vec<(Shape, usize, bool, bool)> =
            chunks.iter().map(|c| (c.form.shape, c.rows.len(), c.form.shared_key, c.form.shared_server)).collect();
        assert_eq!(
            got,
            [
                // 1 287 single-session clients, all answered by one server: a/eth0, a/eth1 and
                // the first 430 of b/eth0 ...
                (Shape::Single, 1024, false, true),
                // ... then b/eth0 alone.
                (Shape::Single, 256, true, true),
                (Shape::Single, 4, true, true),
                (Shape::Single, 2, true, true),
                (Shape::Single, 1, true, true),
                // 13 others without a session, 3 + 3 + 7: too few to share anything more.
                (Shape::Full, 8, false, false),
                (Shape::Full, 4, true, false),
                (Shape::Full, 1, true, false),
            ]
        );
        let all: Vec<&ClientKey> = chunks.iter().flat_map(|c| c.rows.iter().map(|(k, _)| *k)).collect();
        assert_eq!(all.len(), deltas.len());
        for c in &chunks {
            let (k, _) = c.rows[0];
            assert_eq!(c.form.shared_key, c.rows.iter().all(|(r, _)| r.host == k.host && r.interface == k.interface));
        }
    }

    /// Rows group by their server's side: the largest groups of at least [`SERVER_GROUP_MIN`]
    /// rows (at most [`SERVER_GROUPS`]) bind it once per statement, largest first; every other
    /// row binds it per row, after them. A group's rows have the same side.
    #[test]
    fn rows_that_share_their_servers_side_bind_it_once() {
        // Sides: 300 rows of A, 100 of B (stratum 3), 64 of C (another reference id), 63 of D
        // (another server address), and 12 of a side each, spread over 539 keys.
        let mut sides = Vec::new();
        for (side, n) in [(0, 300), (1, 100), (2, 64), (3, 63)] {
            sides.extend(std::iter::repeat_n(side, n));
        }
        sides.extend(4..16);
        let n = sides.len();
        assert_eq!(n, 539);
        let mut deltas = BTreeMap::new();
        for i in 0..n {
            let mut d = one_session(Some(0.5));
            let l = d.latest.as_mut().expect("a session");
            match sides[i * 7_919 % n] {
                0 => {}
                1 => l.stratum = 3,
                2 => l.reference_id = "GPS".into(),
                3 => l.server_ip = "198.18.0.2".into(),
                other => l.reference_id = format!("R{other}"),
            }
            deltas.insert(ClientKey { host: "a".into(), interface: "eth0".into(), client_ip: format!("2001:db8::{i:04x}") }, d);
        }
        let chunks = plan(DbBackend::Sqlite, &deltas, true);
        let got: Vec<(usize, bool)> = chunks.iter().map(|c| (c.rows.len(), c.form.shared_server)).collect();
        let mut want: Vec<(usize, bool)> = Vec::new();
        for (rows, shared) in [(300, true), (100, true), (64, true), (63 + 12, false)] {
            want.extend(chunk_sizes(rows, 1024).into_iter().map(|r| (r, shared)));
        }
        assert_eq!(got, want);
        for c in &chunks {
            assert!(c.rows.is_sorted_by_key(|(k, _)| *k), "key order within a statement");
            let first = server_side(c.rows[0].1);
            let same = c.rows.iter().all(|(_, d)| server_side(d) == first);
            assert!(same || !c.form.shared_server, "a shared statement's rows have its side");
        }
        assert_eq!(chunks.iter().map(|c| c.rows.len()).sum::<usize>(), n);
        // Not compact: nothing shared.
        assert!(plan(DbBackend::Sqlite, &deltas, false).iter().all(|c| !c.form.shared_server && c.form.shape == Shape::Full));

        // Ten sides of 70 rows each: the first eight seen share theirs, the others bind it.
        let mut deltas = BTreeMap::new();
        for i in 0..700 {
            let mut d = one_session(Some(0.5));
            d.latest.as_mut().expect("a session").reference_id = format!("R{}", i / 70);
            deltas.insert(ClientKey { host: "a".into(), interface: "eth0".into(), client_ip: format!("2001:db8::{i:04x}") }, d);
        }
        let got: Vec<(usize, bool)> = plan(DbBackend::Sqlite, &deltas, true).iter().map(|c| (c.rows.len(), c.form.shared_server)).collect();
        let mut want = [(64, true), (4, true), (2, true)].repeat(8);
        want.extend([(128, false), (8, false), (4, false)]);
        assert_eq!(got, want);
    }

    /// The insert list and the `DO UPDATE` list name the same columns, bar the key, the binary
    /// address (see [`upsert_sql_with`]) and `created_at`.
    #[test]
    fn every_inserted_column_is_updated_or_known_not_to_be() {
        let mut inserted: Vec<&str> = COLUMNS.iter().map(|c| c.name).collect();
        let mut updated: Vec<String> = LATEST_COLUMNS.iter().chain(COUNTER_COLUMNS.iter()).map(|c| (*c).to_string()).collect();
        updated.extend(["first_seen", "last_seen", "last_kiss_code", "last_kiss_at", "last_mode", "updated_at"].map(String::from));
        for m in METRICS {
            updated.extend(["count", "sum", "min", "max"].map(|p| format!("{m}_{p}")));
        }
        inserted.retain(|c| !["host", "interface_name", "client_ip", "client_ip_bin", "created_at"].contains(c));
        inserted.sort_unstable();
        updated.sort_unstable();
        assert_eq!(inserted, updated);
        let sql = upsert_sql(DbBackend::Sqlite, Form { shape: Shape::Full, shared_key: true, shared_server: false }, 1);
        for c in &updated {
            assert!(sql.contains(&format!(" {c} = ")), "{c} is updated");
        }
    }

    /// The delta of one answered session with a randomised T1 and the given latency.
    fn one_session(latency: Option<f64>) -> ClientDelta {
        let ntp_wire::Record::Session(s) = crate::aggregate::tests::session("198.18.0.9", 1_000, true, latency) else {
            unreachable!("a session")
        };
        let record = ntp_wire::Record::Session(ntp_wire::Session { t1_randomized: true, ..s });
        let batch = ntp_wire::Batch::new("a", "eth0", vec![record]);
        crate::aggregate::aggregate([&batch]).into_values().next().expect("one client")
    }

    #[test]
    fn one_session_is_single_unless_its_values_cannot_say_everything() {
        assert_eq!(shape_of(&one_session(Some(0.5))), Shape::Single);
        assert_eq!(shape_of(&one_session(None)), Shape::Single);
        assert_eq!(shape_of(&one_session(Some(f64::NAN))), Shape::Full, "the metric skips it, the statement would count it");
        assert_eq!(shape_of(&one_session(Some(-0.0))), Shape::Full, "the metric's sum is +0.0, the statement's -0.0");
        assert_eq!(shape_of(&one_session(Some(0.0))), Shape::Single);
        let mut twice = one_session(Some(0.5));
        twice.counters.session_count = 2;
        assert_eq!(shape_of(&twice), Shape::Full);
        let mut observed = one_session(Some(0.5));
        observed.counters.observation_count = 1;
        assert_eq!(shape_of(&observed), Shape::Full);
        let mut early = one_session(Some(0.5));
        early.first_seen -= 1;
        assert_eq!(shape_of(&early), Shape::Full, "a response captured before its request");
    }
}
