//! Writing one batch: upserts of the per-client deltas, the applied-message ids and the sink's
//! counters, all in the caller's transaction.
//!
//! The upsert is one multi-row `INSERT … ON CONFLICT (host, interface_name, client_ip) DO UPDATE`
//! per chunk, built here as SQL text with bound values and executed through sea-orm's connection
//! (sea-orm's own `insert_many().on_conflict()` builds the same statement but costs about a third
//! more CPU per row in its query builder; see `docs/performance.md`). Chunks hold a power-of-two
//! number of rows so only a dozen statement shapes ever reach sqlx's prepared-statement cache.
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

use crate::aggregate::{COUNTER_COLUMNS, ClientDelta, ClientKey, Metric};

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

/// Every inserted column, in bind order.
fn columns() -> Vec<String> {
    let mut c: Vec<String> = ["host", "interface_name", "client_ip", "client_ip_bin"].iter().map(|s| (*s).to_string()).collect();
    c.extend(LATEST_COLUMNS.iter().map(|s| (*s).to_string()));
    c.extend(["first_seen", "last_seen", "last_kiss_code", "last_kiss_at", "last_mode"].iter().map(|s| (*s).to_string()));
    c.extend(COUNTER_COLUMNS.iter().map(|s| (*s).to_string()));
    for m in METRICS {
        for part in ["count", "sum", "min", "max"] {
            c.push(format!("{m}_{part}"));
        }
    }
    c.push("created_at".into());
    c.push("updated_at".into());
    c
}

/// Values bound per row.
pub fn columns_per_row() -> usize {
    columns().len()
}

fn placeholders(backend: DbBackend, rows: usize, cols: usize) -> String {
    let mut out = String::with_capacity(rows * cols * 5);
    let mut n = 0;
    for r in 0..rows {
        if r > 0 {
            out.push(',');
        }
        out.push('(');
        for c in 0..cols {
            if c > 0 {
                out.push(',');
            }
            n += 1;
            match backend {
                DbBackend::Postgres => {
                    out.push('$');
                    out.push_str(&n.to_string());
                }
                _ => out.push('?'),
            }
        }
        out.push(')');
    }
    out
}

/// The upsert statement for `rows` rows, as [`upsert`] runs it on `backend`: with
/// `RETURNING created_at` where [`counts_by_returning`], without it elsewhere.
pub fn upsert_sql(backend: DbBackend, rows: usize) -> String {
    upsert_sql_with(backend, rows, counts_by_returning(backend))
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

/// The upsert statement for `rows` rows, with or without `RETURNING created_at`.
///
/// On SQLite the statement is written so that it cannot abort half-way, which spares it a
/// statement journal (SQLite's copy of every page a statement changes, kept so that the
/// statement alone can be undone; it is kept for statements that may write several rows and
/// may abort): `INSERT OR FAIL` (the key's `NOT NULL` checks fail instead of aborting; the
/// transaction is rolled back on any error anyway), minima and maxima as `CASE` (SQLite counts
/// every SQL function call as a possible abort), and no `NOT NULL` column among those the
/// `DO UPDATE` changes (migration `m20261204_000004`). That took the sink from 84–86 k to
/// 91–93 k upserts/s (docs/performance.md).
pub fn upsert_sql_with(backend: DbBackend, rows: usize, returning: bool) -> String {
    let cols = columns();
    let t = TABLE;
    let mut set: Vec<String> = Vec::new();
    let newer = format!(
        "excluded.session_timestamp IS NOT NULL AND ({t}.session_timestamp IS NULL OR excluded.session_timestamp >= {t}.session_timestamp)"
    );
    for c in LATEST_COLUMNS {
        set.push(format!("{c} = CASE WHEN {newer} THEN excluded.{c} ELSE {t}.{c} END"));
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
        "INSERT {}INTO {t} ({}) VALUES {} ON CONFLICT (host, interface_name, client_ip) DO UPDATE SET {}{}",
        if backend == DbBackend::Sqlite { "OR FAIL " } else { "" },
        cols.join(", "),
        placeholders(backend, rows, cols.len()),
        set.join(", "),
        if returning { " RETURNING created_at" } else { "" }
    )
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

fn push_metric(v: &mut Vec<Value>, m: &Metric) {
    v.push(Value::BigInt(Some(m.count)));
    v.push(Value::Double(Some(m.sum)));
    v.push(Value::Double(m.min));
    v.push(Value::Double(m.max));
}

/// The bound values of one row, in [`columns`] order.
pub fn row_values(key: &ClientKey, d: &ClientDelta, now: i64, v: &mut Vec<Value>) {
    v.push(Value::String(Some(key.host.clone())));
    v.push(Value::String(Some(key.interface.clone())));
    v.push(Value::String(Some(key.client_ip.clone())));
    v.push(Value::Bytes(key.client_ip.parse::<std::net::IpAddr>().ok().map(|ip| crate::aggregate::ip_bytes(ip).to_vec())));
    match &d.latest {
        Some(l) => {
            v.push(Value::Int(Some(l.client_port)));
            v.push(Value::String(Some(l.server_ip.clone())));
            v.push(Value::Int(Some(l.server_port)));
            v.push(Value::Int(l.vlan_id));
            v.push(Value::Int(Some(l.ntp_version)));
            v.push(Value::Int(Some(l.stratum)));
            v.push(Value::Int(Some(l.precision)));
            v.push(Value::Double(Some(l.root_delay)));
            v.push(Value::Double(Some(l.root_dispersion)));
            v.push(Value::String(Some(l.reference_id.clone())));
            v.push(Value::Int(Some(l.leap_indicator)));
            v.push(Value::Int(Some(l.poll_interval)));
            v.push(Value::BigInt(l.reference_timestamp));
            v.push(Value::BigInt(l.originate_timestamp));
            v.push(Value::BigInt(l.receive_timestamp));
            v.push(Value::BigInt(l.transmit_timestamp));
            v.push(Value::Double(l.client_to_server_latency));
            v.push(Value::Double(l.server_processing_time));
            v.push(Value::Double(l.total_process_time));
            v.push(Value::Int(Some(l.packet_length)));
            v.push(Value::Bool(Some(l.t1_randomized)));
            v.push(Value::BigInt(Some(l.session_timestamp)));
        }
        None => {
            v.extend([
                Value::Int(None),
                Value::String(None),
                Value::Int(None),
                Value::Int(None),
                Value::Int(None),
                Value::Int(None),
                Value::Int(None),
                Value::Double(None),
                Value::Double(None),
                Value::String(None),
                Value::Int(None),
                Value::Int(None),
                Value::BigInt(None),
                Value::BigInt(None),
                Value::BigInt(None),
                Value::BigInt(None),
                Value::Double(None),
                Value::Double(None),
                Value::Double(None),
                Value::Int(None),
                Value::Bool(Some(false)),
                Value::BigInt(None),
            ]);
        }
    }
    v.push(Value::BigInt(Some(d.first_seen)));
    v.push(Value::BigInt(Some(d.last_seen)));
    v.push(Value::String(d.last_kiss_code.as_ref().map(|(_, k)| k.clone())));
    v.push(Value::BigInt(d.last_kiss_code.as_ref().map(|(t, _)| *t)));
    v.push(Value::Int(Some(d.last_mode)));
    v.extend(d.counters.values().into_iter().map(|c| Value::BigInt(Some(c))));
    push_metric(v, &d.latency);
    push_metric(v, &d.processing);
    push_metric(v, &d.turnaround);
    v.push(Value::BigInt(Some(now)));
    v.push(Value::BigInt(Some(now)));
}

/// Largest power of two ≤ the backend's bind limit divided by the row width.
fn max_chunk(backend: DbBackend, per_row: usize) -> usize {
    let limit = match backend {
        DbBackend::Postgres => 65_535,
        _ => 32_766,
    };
    let rows = (limit / per_row).max(1);
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

/// Upserts the deltas. `now` must be unique per batch: a returned `created_at` equal to it marks
/// a row this statement inserted (where [`counts_by_returning`]; elsewhere the rows above the
/// table's highest id before the first chunk are the inserted ones, so on SQLite call it inside
/// a write transaction, as the sink does, or another writer's rows could count as this call's).
pub async fn upsert<C: ConnectionTrait>(conn: &C, deltas: &BTreeMap<ClientKey, ClientDelta>, now: i64) -> Result<UpsertCounts, DbErr> {
    let backend = conn.get_database_backend();
    let per_row = columns_per_row();
    let max = max_chunk(backend, per_row);
    let returning = counts_by_returning(backend);
    let id_floor =
        if returning || deltas.is_empty() { 0 } else { query_i64(conn, "SELECT COALESCE(MAX(id), 0) FROM ntp_clients", None).await? };
    let mut counts = UpsertCounts::default();
    let mut it = deltas.iter();
    let sizes = chunk_sizes(deltas.len(), max);
    let mut statement = |size: usize| {
        let mut values = Vec::with_capacity(size * per_row);
        for (k, d) in it.by_ref().take(size) {
            row_values(k, d, now, &mut values);
        }
        Statement::from_sql_and_values(backend, upsert_sql_with(backend, size, returning), values)
    };
    let mut next = sizes.first().map(|&size| statement(size));
    for (i, &size) in sizes.iter().enumerate() {
        let Some(stmt) = next.take() else { break };
        if !returning {
            // The next statement is built while this one runs on the driver's thread.
            let (written, ahead) = tokio::join!(conn.execute_raw(stmt), async { sizes.get(i + 1).map(|&s| statement(s)) });
            next = ahead;
            let written = written?.rows_affected();
            if written != size as u64 {
                return Err(DbErr::Custom(format!("an upsert of {size} clients wrote {written} rows")));
            }
            continue;
        }
        next = sizes.get(i + 1).map(|&s| statement(s));
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
    /// counted apart (`stats`' `failed_attempts`).
    pub processing_errors: u64,
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
    fn chunks_are_full_then_powers_of_two() {
        assert_eq!(chunk_sizes(0, 512), Vec::<usize>::new());
        assert_eq!(chunk_sizes(1200, 512), vec![512, 512, 128, 32, 16]);
        assert_eq!(chunk_sizes(7, 512), vec![4, 2, 1]);
        assert!(max_chunk(DbBackend::Sqlite, columns_per_row()) * columns_per_row() <= 32_766);
        assert!(max_chunk(DbBackend::Postgres, columns_per_row()) * columns_per_row() <= 65_535);
    }

    #[test]
    fn statements_bind_every_column_once() {
        let sqlite = upsert_sql(DbBackend::Sqlite, 3);
        assert_eq!(sqlite.matches('?').count(), 3 * columns_per_row());
        assert!(sqlite.starts_with("INSERT OR FAIL INTO ntp_clients"));
        assert!(sqlite.contains(
            "first_seen = CASE WHEN ntp_clients.first_seen <= excluded.first_seen THEN ntp_clients.first_seen ELSE excluded.first_seen END"
        ));
        let pg = upsert_sql(DbBackend::Postgres, 2);
        assert!(pg.contains(&format!("${}", 2 * columns_per_row())));
        assert!(!pg.contains(&format!("${}", 2 * columns_per_row() + 1)));
        assert!(pg.starts_with("INSERT INTO ntp_clients"));
    }
}
