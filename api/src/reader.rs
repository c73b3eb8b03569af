//! Where client rows are read from: sea-orm on PostgreSQL, and on an SQLite file a pool of
//! read-only rusqlite connections (pages, lookups, counts, exports).
//!
//! sqlx runs each SQLite connection on a worker thread and passes every row across a channel as
//! a vector of copied values; a 100-row page of ~60 columns costs ~6 000 allocations and a task
//! wake-up per row before sea-orm decodes it again by column name (docs/performance.md). Here the
//! query is still built by sea-orm (one query builder for both backends), then run with a cached
//! prepared statement (in line when it is [`Cost::Bounded`], on the blocking pool otherwise),
//! and decoded by position: into the same [`Model`] (lookups), or borrowed from the statement
//! into a [`ClientRow`] handed straight to its writer (pages, exports). Connections are opened read-only (`SQLITE_OPEN_READ_ONLY`, `query_only`) on
//! the file the sea-orm pool uses, so this path can never write; WAL lets it read while the sink
//! writes.

use std::{
    path::PathBuf,
    sync::{
        Arc, Condvar, Mutex, OnceLock, Weak,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use entity::ntp_clients::{self, Model};
use rusqlite::{
    Connection, OpenFlags, Row,
    types::{FromSql, FromSqlResult, Value as Sql, ValueRef},
};
use sea_orm::{ConnectionTrait, DatabaseBackend, DatabaseConnection, EntityTrait, Iterable, Statement};
use tokio::sync::Semaphore;

use crate::{
    error::ApiError,
    row::{ClientRow, WriteRow},
};

/// How much of the file each connection maps: SQLite's compile-time ceiling (2 GiB). A page
/// inside the map is read in place; one beyond it goes through `read()` into the connection's
/// page cache, behind a mutex (`perf` showed that path when the map was 256 MiB of a 2.3 GB file).
const MMAP_BYTES: i64 = 0x7fff_0000;

/// How a read may run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cost {
    /// An index walk of at most [`INLINE_ROWS`] rows (a keyset page without filters, one
    /// address): under a millisecond, so it runs on the request's own worker thread. Handing
    /// it to the blocking pool and back cost more than the read itself, and with two cores
    /// sixteen runnable reader threads pre-empted the workers serving the sockets (a p99 of
    /// 30–80 ms at 16 connections; docs/performance.md).
    Bounded,
    /// Anything else (filters that may scan, OFFSET, counts, exports): the blocking pool.
    Open,
}

/// The most rows a [`Cost::Bounded`] read returns (≈ 1.5 ms of work).
pub const INLINE_ROWS: u64 = 201;

/// Connections kept open between reads (more may be open while reads run).
const MAX_IDLE: usize = 8;

/// Page cache per connection, KiB: the map serves the file, so the cache only holds pages past
/// the map and pages read from the WAL.
const CACHE_KIB: i64 = 8_192;

/// Blocking reads at once (each holds one connection while it runs).
const MAX_READERS: usize = 16;

/// Connections opened and mapped for the next requests when a commit is noticed.
const SPARES: usize = 2;

/// Between two refreshes of retired connections: each takes a core for tens of milliseconds,
/// and back to back they starve the request threads of the other.
const REFRESH_PAUSE: Duration = Duration::from_millis(20);

/// The read-only rusqlite pool of an SQLite database file.
///
/// **Who unmaps.** When another connection (the sink) commits, each pooled connection, at its
/// next read, resets its cache and unmaps its view of the file (SQLite's `pager_reset` and
/// `unixUnmapfile`). Unmapping a 2 GiB view whose pages a second of random reads has touched
/// takes 25-125 ms (`perf`), and on a request's thread it stalls every request queued behind it.
/// So before each read one statement on a connection that maps nothing (`PRAGMA data_version`)
/// says whether anything was committed since the last look; if so the pool starts a new
/// generation: connections of older generations are retired and refreshed by the `sqlite-watch`
/// thread (a read there does the unmapping, then they rejoin the pool), and the request that
/// noticed opens and maps [`SPARES`] new connections for the requests that follow. A request
/// still unmaps in two narrow cases: a commit that lands between its look and its read, and a
/// connection closed after a failed read. When commits come faster than the watcher refreshes,
/// it closes the backlog instead (closing unmaps under SQLite's global VFS mutex, which is why
/// refreshing is preferred). This only decides which thread pays for the unmapping: every read
/// still sees a consistent snapshot, as SQLite guarantees for any connection.
#[derive(Debug)]
pub struct SqliteReader {
    path: PathBuf,
    pool: Mutex<Pool>,
    /// Signalled when a connection is retired.
    retiring: Condvar,
    /// Bumped each time a commit by another connection is noticed.
    generation: AtomicU64,
    permits: Arc<Semaphore>,
    watcher: OnceLock<()>,
    /// The connection that maps nothing, and the `data_version` it last answered.
    sentinel: Mutex<Option<(Connection, Option<i64>)>>,
}

/// Connections between reads.
#[derive(Debug, Default)]
struct Pool {
    /// Connections that have read nothing older than their generation.
    idle: Vec<(u64, Connection)>,
    /// Connections of older generations, for the watcher.
    retired: Vec<Connection>,
}

/// Errors of the SQLite read path (shown to the client only as a logged 500).
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// SQLite said no.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A bound value of a type this path does not bind.
    #[error("unsupported parameter {0:?}")]
    Parameter(sea_orm::Value),
    /// The statement's columns are not the entity's, in its order.
    #[error("unexpected columns: {0:?}")]
    Columns(Vec<String>),
    /// The request stopped waiting before the read began.
    #[error("read cancelled")]
    Cancelled,
    /// The pool was closed (never, while the API runs).
    #[error("reader pool closed")]
    Closed,
    /// The blocking task died.
    #[error("reader task: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl From<ReadError> for ApiError {
    fn from(e: ReadError) -> Self {
        ApiError::internal(&e)
    }
}

impl SqliteReader {
    /// The reader of `db`'s file, when `db` is SQLite on a file (not in memory).
    pub fn for_database(db: &DatabaseConnection) -> Option<Self> {
        if db.get_database_backend() != DatabaseBackend::Sqlite {
            return None;
        }
        let path = db.get_sqlite_connection_pool().connect_options().get_filename().to_path_buf();
        path.is_file().then(|| Self::new(path))
    }

    /// A reader of the database file at `path` (connections open on first use).
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            pool: Mutex::default(),
            retiring: Condvar::new(),
            generation: AtomicU64::new(0),
            permits: Arc::new(Semaphore::new(MAX_READERS)),
            watcher: OnceLock::new(),
            sentinel: Mutex::new(None),
        }
    }

    fn open(&self) -> Result<Connection, rusqlite::Error> {
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(&self.path, flags)?;
        conn.busy_timeout(Duration::from_secs(10))?;
        conn.pragma_update(None, "cache_size", -CACHE_KIB)?;
        conn.pragma_update(None, "mmap_size", MMAP_BYTES)?;
        conn.pragma_update(None, "query_only", true)?;
        // Plans must not depend on bound values: otherwise SQLite marks a statement whose
        // `LIMIT ?` (or a range bound) it inspected as expired on every new binding, and each
        // cached page query is compiled again (10 % of a page's CPU in `perf`). The keyset
        // conditions are written to plan as range searches without their values (query.rs).
        conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
        conn.set_prepared_statement_cache_capacity(64);
        Ok(conn)
    }

    /// Runs `f` on a pooled connection: on the calling worker thread when the read is
    /// [`Cost::Bounded`], on a blocking thread otherwise. When the caller stops waiting (the
    /// client went away, `--request-timeout` answered 504), the blocking read is interrupted
    /// rather than left to run to its end, and its connection is closed.
    async fn with<R, F>(self: &Arc<Self>, cost: Cost, f: F) -> Result<R, ReadError>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> Result<R, ReadError> + Send + 'static,
    {
        self.watcher.get_or_init(|| {
            let weak = Arc::downgrade(self);
            if let Err(e) = std::thread::Builder::new().name("sqlite-watch".into()).spawn(move || watch(&weak)) {
                tracing::warn!(message = "No commit watcher for the SQLite readers.", error = %e);
            }
        });
        match cost {
            Cost::Bounded => {
                let conn = self.take()?;
                let out = f(&conn.1);
                self.give_back(conn, out.is_ok());
                out
            }
            Cost::Open => {
                // The permit travels with the read, so reads abandoned by their requests still
                // count against MAX_READERS until they stop.
                let permit = Arc::clone(&self.permits).acquire_owned().await.map_err(|_| ReadError::Closed)?;
                let conn = self.take()?;
                let flag = Arc::new(AtomicBool::new(false));
                let cancel = CancelOnDrop(Some(Arc::clone(&flag)));
                let (conn, out) = tokio::task::spawn_blocking(move || {
                    let _permit = permit;
                    let out = cancellable(&conn.1, &flag, f);
                    (conn, out)
                })
                .await?;
                cancel.disarm();
                self.give_back(conn, out.is_ok());
                out
            }
        }
    }

    /// An idle connection of the current generation, or a new one.
    fn take(&self) -> Result<(u64, Connection), ReadError> {
        self.check_commit();
        let current = self.generation.load(Ordering::Acquire);
        if let Ok(mut pool) = self.pool.lock() {
            while let Some((generation, conn)) = pool.idle.pop() {
                if generation == current {
                    return Ok((generation, conn));
                }
                pool.retired.push(conn);
                self.retiring.notify_one();
            }
        }
        Ok((current, self.open()?))
    }

    /// Returns a connection to the pool; one whose read failed is closed instead, rather than
    /// reused in an unknown state. One of an older generation, or one too many, goes to the
    /// watcher, which refreshes or closes it: neither happens on a request's thread.
    fn give_back(&self, (generation, conn): (u64, Connection), ok: bool) {
        if !ok {
            return;
        }
        if let Ok(mut pool) = self.pool.lock() {
            if generation == self.generation.load(Ordering::Acquire) && pool.idle.len() < MAX_IDLE {
                pool.idle.push((generation, conn));
            } else {
                pool.retired.push(conn);
                self.retiring.notify_one();
            }
        }
    }

    /// Starts a new generation when another connection has committed since the last look.
    fn check_commit(&self) {
        let Ok(mut guard) = self.sentinel.lock() else { return };
        if guard.is_none() {
            let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
            let Ok(conn) = Connection::open_with_flags(&self.path, flags) else { return };
            if conn.pragma_update(None, "mmap_size", 0).is_err() {
                return;
            }
            *guard = Some((conn, None));
        }
        let Some((conn, last)) = guard.as_mut() else { return };
        let Ok(now) = conn.prepare_cached("PRAGMA data_version").and_then(|mut st| st.query_row([], |r| r.get::<_, i64>(0))) else {
            return;
        };
        let changed = last.is_some_and(|l| l != now);
        *last = Some(now);
        if changed {
            // Bumped before the lock is released: a request that looks next sees the new
            // generation, not "no change" and an old connection.
            let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
            drop(guard);
            self.renew(generation);
        }
    }

    /// A new generation: mapped spares for it (unless the watcher is behind), and every idle
    /// connection retired.
    fn renew(&self, generation: u64) {
        let behind = self.pool.lock().map_or(true, |p| p.retired.len() >= MAX_IDLE);
        let spares: Vec<Connection> =
            if behind { Vec::new() } else { (0..SPARES).filter_map(|_| self.open().ok().filter(mapped)).collect() };
        if let Ok(mut pool) = self.pool.lock() {
            let stale = std::mem::take(&mut pool.idle);
            pool.retired.extend(stale.into_iter().map(|(_, c)| c));
            pool.idle.extend(spares.into_iter().map(|c| (generation, c)));
            self.retiring.notify_one();
        }
    }

    /// Refreshes the retired connections, one at a time: the first read of each drops its map
    /// of the file, here and not in a request, and it rejoins the pool (or is closed, when the
    /// pool is full). Waits up to `wait` for one; returns whether any was there.
    fn refresh_retired(&self, wait: Duration) -> bool {
        let Ok(pool) = self.pool.lock() else { return false };
        let Ok((mut pool, _)) = self.retiring.wait_timeout_while(pool, wait, |p| p.retired.is_empty()) else { return false };
        let mut any = false;
        while let Some(conn) = pool.retired.pop() {
            any = true;
            let full = pool.idle.len() >= MAX_IDLE;
            // Commits faster than the refreshes: close the backlog rather than let it grow.
            let behind = pool.retired.len() >= MAX_IDLE;
            drop(pool);
            let generation = self.generation.load(Ordering::Acquire);
            if !full && !behind && mapped(&conn) {
                self.give_back((generation, conn), true);
                std::thread::sleep(REFRESH_PAUSE);
            } else {
                drop(conn);
            }
            let Ok(next) = self.pool.lock() else { return any };
            pool = next;
        }
        any
    }

    /// The client rows a sea-orm `SELECT` of `ntp_clients` returns.
    pub async fn models(self: &Arc<Self>, st: Statement, cost: Cost) -> Result<Vec<Model>, ReadError> {
        self.with(cost, move |conn| {
            let params = params(st.values)?;
            let mut stmt = conn.prepare_cached(&st.sql)?;
            check_columns(&stmt)?;
            let mut rows = stmt.query(rusqlite::params_from_iter(params))?;
            let mut out = Vec::new();
            while let Some(row) = rows.next()? {
                out.push(model(row)?);
            }
            Ok(out)
        })
        .await
    }

    /// Up to `limit` rows of a sea-orm `SELECT` of `ntp_clients`, each handed to `write` as it
    /// is stepped, borrowed from the statement ([`ClientRow`]). No row is copied into a [`Model`]
    /// but the `limit`-th, which is kept (for the next page's cursor) only when a row follows.
    pub async fn write_rows<W>(self: &Arc<Self>, st: Statement, cost: Cost, limit: usize, mut write: W) -> Result<Written<W>, ReadError>
    where
        W: WriteRow,
    {
        self.with(cost, move |conn| {
            let params = params(st.values)?;
            let mut stmt = conn.prepare_cached(&st.sql)?;
            check_columns(&stmt)?;
            let mut rows = stmt.query(rusqlite::params_from_iter(params))?;
            let mut n = 0;
            let mut last = None;
            while let Some(row) = rows.next()? {
                if n == limit {
                    return Ok(Written { write, rows: n, more_after: last });
                }
                write.row(&client_row(row)?);
                n += 1;
                if n == limit {
                    last = Some(model(row)?);
                }
            }
            Ok(Written { write, rows: n, more_after: None })
        })
        .await
    }

    /// The first `n` columns of the first row of `st`, as integers (counts).
    pub async fn integers(self: &Arc<Self>, st: Statement, n: usize) -> Result<Vec<i64>, ReadError> {
        self.with(Cost::Open, move |conn| {
            let params = params(st.values)?;
            let mut stmt = conn.prepare_cached(&st.sql)?;
            Ok(stmt.query_row(rusqlite::params_from_iter(params), |r| (0..n).map(|i| r.get(i)).collect())?)
        })
        .await
    }
}

/// Runs a read that maps the file (it reads the schema), so the map exists before a request.
fn mapped(conn: &Connection) -> bool {
    conn.query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get::<_, i64>(0)).is_ok()
}

/// The `sqlite-watch` thread: refreshes retired connections until the reader is dropped.
fn watch(reader: &Weak<SqliteReader>) {
    while let Some(r) = reader.upgrade() {
        if r.pool.is_poisoned() {
            return;
        }
        r.refresh_retired(Duration::from_secs(1));
    }
}

/// sea-query's bound values as SQLite values.
fn params(values: Option<sea_orm::Values>) -> Result<Vec<Sql>, ReadError> {
    use sea_orm::Value as V;
    let int = |v: Option<i64>| v.map_or(Sql::Null, Sql::Integer);
    values
        .map(|v| v.0)
        .unwrap_or_default()
        .into_iter()
        .map(|v| {
            Ok(match v {
                V::Bool(b) => int(b.map(i64::from)),
                V::TinyInt(i) => int(i.map(i64::from)),
                V::SmallInt(i) => int(i.map(i64::from)),
                V::Int(i) => int(i.map(i64::from)),
                V::BigInt(i) => int(i),
                V::TinyUnsigned(i) => int(i.map(i64::from)),
                V::SmallUnsigned(i) => int(i.map(i64::from)),
                V::Unsigned(i) => int(i.map(i64::from)),
                V::BigUnsigned(Some(u)) if i64::try_from(u).is_ok() => Sql::Integer(u as i64),
                V::BigUnsigned(None) => Sql::Null,
                V::Float(f) => f.map_or(Sql::Null, |f| Sql::Real(f64::from(f))),
                V::Double(f) => f.map_or(Sql::Null, Sql::Real),
                V::String(s) => s.map_or(Sql::Null, Sql::Text),
                V::Bytes(b) => b.map_or(Sql::Null, Sql::Blob),
                other => return Err(ReadError::Parameter(other)),
            })
        })
        .collect()
}

/// The statement returns the entity's columns in the entity's order (what [`model`] reads).
fn check_columns(stmt: &rusqlite::CachedStatement<'_>) -> Result<(), ReadError> {
    let names = stmt.column_names();
    let expected = ntp_clients::Column::iter().map(|c| sea_orm::IdenStatic::as_str(&c));
    if names.iter().copied().eq(expected) { Ok(()) } else { Err(ReadError::Columns(names.iter().map(ToString::to_string).collect())) }
}

/// One row, by position, owned: [`client_row`]'s values copied out of the statement.
fn model(r: &Row<'_>) -> Result<Model, rusqlite::Error> {
    client_row(r).map(Model::from)
}

/// One value of `r` through `convert` (one of rusqlite's own conversions, those of `Row::get`);
/// a failure is a conversion failure of column `i` (`Row::get` names some
/// kinds apart, but either way the read fails and the request answers 500).
fn col<'a, T>(r: &'a Row<'_>, i: usize, convert: impl FnOnce(ValueRef<'a>) -> FromSqlResult<T>) -> Result<T, rusqlite::Error> {
    let v = r.get_ref(i)?;
    convert(v).map_err(|e| rusqlite::Error::FromSqlConversionFailure(i, v.data_type(), Box::new(e)))
}

/// One row, by position, its text borrowed, in the order of [`Model`]'s fields (checked by
/// [`check_columns`]).
fn client_row<'a>(r: &'a Row<'_>) -> Result<ClientRow<'a>, rusqlite::Error> {
    let mut i = 0;
    let mut next = || {
        i += 1;
        i - 1
    };
    Ok(ClientRow {
        id: col(r, next(), i64::column_result)?,
        host: col(r, next(), |v| v.as_str())?,
        interface_name: col(r, next(), |v| v.as_str())?,
        client_ip: col(r, next(), |v| v.as_str())?,
        client_ip_bin: col(r, next(), |v| v.as_blob_or_null())?,
        client_port: col(r, next(), Option::column_result)?,
        server_ip: col(r, next(), |v| v.as_str_or_null())?,
        server_port: col(r, next(), Option::column_result)?,
        vlan_id: col(r, next(), Option::column_result)?,
        ntp_version: col(r, next(), Option::column_result)?,
        stratum: col(r, next(), Option::column_result)?,
        precision: col(r, next(), Option::column_result)?,
        root_delay: col(r, next(), Option::column_result)?,
        root_dispersion: col(r, next(), Option::column_result)?,
        reference_id: col(r, next(), |v| v.as_str_or_null())?,
        leap_indicator: col(r, next(), Option::column_result)?,
        poll_interval: col(r, next(), Option::column_result)?,
        reference_timestamp: col(r, next(), Option::column_result)?,
        originate_timestamp: col(r, next(), Option::column_result)?,
        receive_timestamp: col(r, next(), Option::column_result)?,
        transmit_timestamp: col(r, next(), Option::column_result)?,
        client_to_server_latency: col(r, next(), Option::column_result)?,
        server_processing_time: col(r, next(), Option::column_result)?,
        total_process_time: col(r, next(), Option::column_result)?,
        packet_length: col(r, next(), Option::column_result)?,
        session_timestamp: col(r, next(), Option::column_result)?,
        first_seen: col(r, next(), i64::column_result)?,
        last_seen: col(r, next(), i64::column_result)?,
        last_kiss_code: col(r, next(), |v| v.as_str_or_null())?,
        last_kiss_at: col(r, next(), Option::column_result)?,
        last_mode: col(r, next(), Option::column_result)?,
        t1_randomized: col(r, next(), bool::column_result)?,
        session_count: col(r, next(), i64::column_result)?,
        answered_count: col(r, next(), i64::column_result)?,
        unanswered_count: col(r, next(), i64::column_result)?,
        kod_count: col(r, next(), i64::column_result)?,
        retransmit_count: col(r, next(), i64::column_result)?,
        interleaved_count: col(r, next(), i64::column_result)?,
        t1_randomized_count: col(r, next(), i64::column_result)?,
        nts_count: col(r, next(), i64::column_result)?,
        extension_count: col(r, next(), i64::column_result)?,
        mac_count: col(r, next(), i64::column_result)?,
        observation_count: col(r, next(), i64::column_result)?,
        symmetric_count: col(r, next(), i64::column_result)?,
        broadcast_count: col(r, next(), i64::column_result)?,
        control_count: col(r, next(), i64::column_result)?,
        private_count: col(r, next(), i64::column_result)?,
        monlist_count: col(r, next(), i64::column_result)?,
        latency_count: col(r, next(), i64::column_result)?,
        latency_sum: col(r, next(), f64::column_result)?,
        latency_min: col(r, next(), Option::column_result)?,
        latency_max: col(r, next(), Option::column_result)?,
        processing_count: col(r, next(), i64::column_result)?,
        processing_sum: col(r, next(), f64::column_result)?,
        processing_min: col(r, next(), Option::column_result)?,
        processing_max: col(r, next(), Option::column_result)?,
        turnaround_count: col(r, next(), i64::column_result)?,
        turnaround_sum: col(r, next(), f64::column_result)?,
        turnaround_min: col(r, next(), Option::column_result)?,
        turnaround_max: col(r, next(), Option::column_result)?,
        created_at: col(r, next(), i64::column_result)?,
        updated_at: col(r, next(), i64::column_result)?,
    })
}

/// What [`SqliteReader::write_rows`] gives back.
#[derive(Debug)]
pub struct Written<W> {
    /// The writer, with every row in it.
    pub write: W,
    /// Rows written.
    pub rows: usize,
    /// The last row written, when more rows follow it.
    pub more_after: Option<Model>,
}

/// Sets its flag when dropped while armed: the request stopped waiting for its read.
struct CancelOnDrop(Option<Arc<AtomicBool>>);

impl CancelOnDrop {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(flag) = self.0.take() {
            flag.store(true, Ordering::Relaxed);
        }
    }
}

/// Runs `f` unless `cancelled` is already set, with a progress handler that stops SQLite once
/// it is. (`sqlite3_interrupt` would not do: SQLite forgets an interrupt that arrives before
/// the statement starts.) A connection whose read stopped is dropped, not pooled.
fn cancellable<R>(
    conn: &Connection,
    cancelled: &Arc<AtomicBool>,
    f: impl FnOnce(&Connection) -> Result<R, ReadError>,
) -> Result<R, ReadError> {
    if cancelled.load(Ordering::Relaxed) {
        return Err(ReadError::Cancelled);
    }
    let flag = Arc::clone(cancelled);
    conn.progress_handler(1_000, Some(move || flag.load(Ordering::Relaxed)))?;
    let out = f(conn);
    conn.progress_handler(0, None::<fn() -> bool>)?;
    out
}

/// Rows of `st`, a `SELECT` of every `ntp_clients` column built for `db`'s backend: through
/// `reader` when there is one (there is one only on an SQLite file: [`SqliteReader::for_database`]).
pub async fn models_of(
    db: &DatabaseConnection,
    reader: Option<&Arc<SqliteReader>>,
    st: Statement,
    cost: Cost,
) -> Result<Vec<Model>, ApiError> {
    match reader {
        Some(r) => Ok(r.models(st, cost).await?),
        None => Ok(ntp_clients::Entity::find().from_raw_sql(st).all(db).await?),
    }
}

/// Up to `limit` rows of `st` (a `SELECT` of every `ntp_clients` column, built for `db`'s
/// backend), each handed to `write`: borrowed from the statement through `reader` when there is
/// one, from sea-orm's models otherwise.
pub async fn write_rows<W>(
    db: &DatabaseConnection,
    reader: Option<&Arc<SqliteReader>>,
    st: Statement,
    cost: Cost,
    limit: usize,
    mut write: W,
) -> Result<Written<W>, ApiError>
where
    W: WriteRow,
{
    if let Some(r) = reader {
        return Ok(r.write_rows(st, cost, limit, write).await?);
    }
    let mut models = ntp_clients::Entity::find().from_raw_sql(st).all(db).await?;
    let more = models.len() > limit;
    models.truncate(limit);
    for m in &models {
        write.row(&m.into());
    }
    Ok(Written { write, rows: models.len(), more_after: if more { models.pop() } else { None } })
}

/// The integer `st` returns (built for `db`'s backend): through `reader` when there is one.
pub async fn integer(db: &DatabaseConnection, reader: Option<&Arc<SqliteReader>>, st: Statement) -> Result<i64, ApiError> {
    Ok(integers(db, reader, st, 1).await?[0])
}

/// The first `n` columns of the first row of `st`, as integers (a missing row or a NULL reads
/// as 0), through the reader on an SQLite file, through sea-orm otherwise.
pub async fn integers(db: &DatabaseConnection, reader: Option<&Arc<SqliteReader>>, st: Statement, n: usize) -> Result<Vec<i64>, ApiError> {
    if let Some(r) = reader {
        return Ok(r.integers(st, n).await?);
    }
    let row = db.query_one_raw(st).await?;
    Ok((0..n).map(|i| row.as_ref().and_then(|r| r.try_get_by_index::<i64>(i).ok()).unwrap_or(0)).collect())
}

#[cfg(test)]
mod tests {
    use sea_orm::{
        ActiveModelTrait, ActiveValue::Set, ColumnTrait, Database, EntityTrait, QueryFilter, QueryOrder, QuerySelect, QueryTrait,
        sea_query::ExprTrait,
    };

    use super::*;

    /// A migrated file of 40 rows, NULLs and values in every optional column.
    async fn forty_rows() -> (tempfile::TempDir, DatabaseConnection) {
        use migration::MigratorTrait;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("r.db");
        let db = Database::connect(format!("sqlite://{}?mode=rwc", path.display())).await.expect("open");
        migration::Migrator::up(&db, None).await.expect("migrate");
        for i in 0..40_i64 {
            let full = i % 2 == 0;
            let some_i = |v: i32| full.then_some(v);
            let some_f = |v: f64| full.then_some(v);
            ntp_clients::ActiveModel {
                host: Set(format!("h{}", i % 3)),
                interface_name: Set("eth0".into()),
                client_ip: Set(format!("198.18.0.{i}")),
                client_ip_bin: Set(full.then(|| vec![0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 255, 255, 198, 18, 0, i as u8])),
                client_port: Set(some_i(40_000 + i as i32)),
                server_ip: Set(full.then(|| "198.19.0.1".into())),
                server_port: Set(some_i(123)),
                vlan_id: Set(some_i(7)),
                ntp_version: Set(some_i(3 + (i % 4 / 2) as i32)),
                stratum: Set(some_i(2)),
                precision: Set(some_i(-20)),
                root_delay: Set(some_f(0.25)),
                root_dispersion: Set(some_f(0.5)),
                reference_id: Set(full.then(|| "GPS".into())),
                leap_indicator: Set(some_i(0)),
                poll_interval: Set(some_i(6)),
                reference_timestamp: Set(full.then_some(i * 11)),
                originate_timestamp: Set(full.then_some(i * 13)),
                receive_timestamp: Set(full.then_some(i * 17)),
                transmit_timestamp: Set(full.then_some(i * 19)),
                client_to_server_latency: Set(some_f(0.001 * i as f64)),
                server_processing_time: Set(some_f(1e-6)),
                total_process_time: Set(some_f(2e-3)),
                packet_length: Set(some_i(48)),
                session_timestamp: Set(full.then_some(i * 23)),
                first_seen: Set(i * 1_000),
                last_seen: Set(i * 2_000),
                last_kiss_code: Set(full.then(|| "RATE".into())),
                last_kiss_at: Set(full.then_some(i * 29)),
                last_mode: Set(some_i(5 - (i % 3) as i32)),
                t1_randomized: Set(full),
                session_count: Set(i),
                answered_count: Set(i + 1),
                unanswered_count: Set(i + 2),
                kod_count: Set(i + 3),
                retransmit_count: Set(i + 4),
                interleaved_count: Set(i + 5),
                t1_randomized_count: Set(i + 6),
                nts_count: Set(i + 7),
                extension_count: Set(i + 8),
                mac_count: Set(i + 9),
                observation_count: Set(i + 10),
                symmetric_count: Set(i + 11),
                broadcast_count: Set(i + 12),
                control_count: Set(i + 13),
                private_count: Set(i + 14),
                monlist_count: Set(i + 15),
                latency_count: Set(i + 16),
                latency_sum: Set(0.5 * i as f64),
                latency_min: Set(some_f(0.125)),
                latency_max: Set(some_f(0.75)),
                processing_count: Set(i + 17),
                processing_sum: Set(0.25),
                processing_min: Set(some_f(1e-7)),
                processing_max: Set(some_f(1e-5)),
                turnaround_count: Set(i + 18),
                turnaround_sum: Set(3.5),
                turnaround_min: Set(some_f(1e-4)),
                turnaround_max: Set(some_f(1e-2)),
                created_at: Set(i * 29),
                updated_at: Set(i * 31),
                ..Default::default()
            }
            .insert(&db)
            .await
            .expect("insert");
        }
        (dir, db)
    }

    /// The 30 rows of [`forty_rows`] the tests read, newest first.
    fn select() -> sea_orm::Select<ntp_clients::Entity> {
        ntp_clients::Entity::find()
            .filter(ntp_clients::Column::SessionCount.gte(3))
            .filter(ntp_clients::Column::ClientIpBin.gt(vec![0_u8]).or(ntp_clients::Column::ClientIpBin.is_null()))
            .order_by_desc(ntp_clients::Column::LastSeen)
            .limit(30)
    }

    /// Rows handed over borrowed are the rows sea-orm reads, through the reader and through
    /// sea-orm, and the last one comes back whole only when more rows follow.
    #[tokio::test]
    async fn rows_handed_over_borrowed_equal_sea_orm_rows() {
        let (_dir, db) = forty_rows().await;
        let reader = Arc::new(SqliteReader::for_database(&db).expect("a file database has a reader"));
        let by_name = select().all(&db).await.expect("sea-orm");
        assert_eq!(by_name.len(), 30);
        let expected: Vec<String> = by_name.iter().map(|m| format!("{:?}", ClientRow::from(m))).collect();
        for (limit, more_after) in
            [(0, None), (1, Some(&by_name[0])), (10, Some(&by_name[9])), (29, Some(&by_name[28])), (30, None), (31, None)]
        {
            for cost in [Cost::Bounded, Cost::Open] {
                let st = select().build(DatabaseBackend::Sqlite);
                let written = reader.write_rows(st, cost, limit, Seen::default()).await.expect("rusqlite");
                assert_eq!(written.write.0, expected[..limit.min(30)], "limit {limit}");
                assert_eq!(written.rows, limit.min(30));
                assert_eq!(written.more_after.as_ref(), more_after, "limit {limit}");
            }
            let written =
                write_rows(&db, None, select().build(DatabaseBackend::Sqlite), Cost::Open, limit, Seen::default()).await.expect("sea-orm");
            assert_eq!(written.write.0, expected[..limit.min(30)], "limit {limit}");
            assert_eq!(written.rows, limit.min(30));
            assert_eq!(written.more_after.as_ref(), more_after, "limit {limit}");
        }
    }

    /// Every column read by position equals what sea-orm reads by name, on a migrated file,
    /// with NULLs and values in every optional column.
    #[tokio::test]
    async fn rows_read_by_position_equal_sea_orm_rows() {
        let (_dir, db) = forty_rows().await;
        let reader = Arc::new(SqliteReader::for_database(&db).expect("a file database has a reader"));
        let by_name = select().all(&db).await.expect("sea-orm");
        assert_eq!(by_name.len(), 30);
        for cost in [Cost::Bounded, Cost::Open] {
            let by_position = reader.models(select().build(DatabaseBackend::Sqlite), cost).await.expect("rusqlite");
            assert_eq!(by_position, by_name);
        }
        let count = Statement::from_string(DatabaseBackend::Sqlite, "SELECT COUNT(*) FROM ntp_clients");
        assert_eq!(reader.integers(count, 1).await.expect("count"), [40]);

        // A projection that is not the entity's is refused, not misread.
        let narrow = ntp_clients::Entity::find().select_only().column(ntp_clients::Column::Id).build(DatabaseBackend::Sqlite);
        assert!(matches!(reader.models(narrow, Cost::Open).await, Err(ReadError::Columns(_))));
        // The connections cannot write.
        let write = Statement::from_string(DatabaseBackend::Sqlite, "DELETE FROM ntp_clients");
        assert!(reader.integers(write, 1).await.is_err());
        assert_eq!(ntp_clients::Entity::find().all(&db).await.expect("rows").len(), 40);
    }

    /// Every row it is handed, printed whole.
    #[derive(Default)]
    struct Seen(Vec<String>);

    impl WriteRow for Seen {
        fn row(&mut self, r: &ClientRow<'_>) {
            self.0.push(format!("{r:?}"));
        }
    }

    /// A read whose caller gave up stops: dropping a runtime waits for its blocking tasks, so
    /// this would take minutes if the abandoned count ran to its end.
    #[test]
    fn an_abandoned_read_is_interrupted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("i.db");
        rusqlite::Connection::open(&path).and_then(|c| c.execute_batch("CREATE TABLE t(x)")).expect("db");
        let reader = Arc::new(SqliteReader::new(path));
        let forever = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 10000000000) SELECT count(*) FROM c";
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let started = crate::clock::monotonic();
        let waited = rt.block_on(async {
            tokio::time::timeout(Duration::from_millis(200), reader.integers(Statement::from_string(DatabaseBackend::Sqlite, forever), 1))
                .await
        });
        assert!(waited.is_err(), "the count cannot finish in 200 ms");
        drop(rt);
        assert!(started.elapsed() < Duration::from_secs(5), "the read ran on for {:?}", started.elapsed());
        // The pool still serves reads afterwards.
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let one = rt.block_on(reader.integers(Statement::from_string(DatabaseBackend::Sqlite, "SELECT 1"), 1));
        assert_eq!(one.expect("read"), [1]);
    }

    /// A commit by another connection starts a new generation: the next read sees it, the
    /// connections that read before it are refreshed by the watcher (not by a request) and come
    /// back to the pool; reads without a commit in between start none.
    #[test]
    fn a_commit_elsewhere_retires_the_pool_and_the_watcher_refreshes_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("g.db");
        let writer = rusqlite::Connection::open(&path).expect("db");
        writer.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t(x)").expect("schema");
        let reader = Arc::new(SqliteReader::new(path));
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let count =
            || rt.block_on(reader.integers(Statement::from_string(DatabaseBackend::Sqlite, "SELECT count(*) FROM t"), 1)).expect("read")[0];
        let generations = |r: &SqliteReader| {
            let pool = r.pool.lock().expect("pool");
            (pool.idle.iter().map(|(g, _)| *g).collect::<Vec<_>>(), pool.retired.len())
        };
        assert_eq!((count(), count()), (0, 0));
        assert_eq!(reader.generation.load(Ordering::Acquire), 0, "no commit, no new generation");
        assert_eq!(generations(&reader), (vec![0], 0));

        writer.execute("INSERT INTO t VALUES (1)", []).expect("insert");
        assert_eq!(count(), 1, "the read after the commit sees it");
        assert_eq!(reader.generation.load(Ordering::Acquire), 1);
        // The connection that read before the commit was retired; the watcher refreshes it and
        // it rejoins the pool at the new generation beside the spares.
        let started = crate::clock::monotonic();
        loop {
            let (idle, retired) = generations(&reader);
            if retired == 0 && idle.len() == SPARES + 1 {
                assert!(idle.iter().all(|g| *g == 1), "{idle:?}");
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(10), "not refreshed: idle {idle:?}, retired {retired}");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(count(), 1);
        assert_eq!(reader.generation.load(Ordering::Acquire), 1);
    }

    /// A request that gave up before its read began never starts it; one that gives up while
    /// it runs stops it at the next progress check.
    #[test]
    fn cancellation_before_and_during_a_read() {
        let conn = Connection::open_in_memory().expect("db");
        let ran = std::cell::Cell::new(false);
        let cancelled = Arc::new(AtomicBool::new(true));
        let out = cancellable(&conn, &cancelled, |_| {
            ran.set(true);
            Ok(())
        });
        assert!(matches!(out, Err(ReadError::Cancelled)) && !ran.get());

        let cancelled = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&cancelled);
        let out = cancellable(&conn, &cancelled, move |c| {
            flag.store(true, Ordering::Relaxed);
            Ok(c.query_row("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c", [], |r| {
                r.get::<_, i64>(0)
            })?)
        });
        assert!(
            matches!(out, Err(ReadError::Sqlite(rusqlite::Error::SqliteFailure(e, _))) if e.code == rusqlite::ErrorCode::OperationInterrupted)
        );
        // The connection still serves the next read.
        let ok = cancellable(&conn, &Arc::new(AtomicBool::new(false)), |c| Ok(c.query_row("SELECT 2", [], |r| r.get::<_, i64>(0))?));
        assert_eq!(ok.expect("read"), 2);
    }

    #[tokio::test]
    async fn memory_databases_have_no_reader() {
        let db = Database::connect("sqlite::memory:").await.expect("open");
        assert!(SqliteReader::for_database(&db).is_none());
    }
}
