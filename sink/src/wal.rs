//! Keeping SQLite's write-ahead log bounded when readers starve its checkpoints.
//!
//! Every commit is appended to the WAL, and a checkpoint copies the log back into the database
//! file (the writer runs one after a commit once the log holds `wal_autocheckpoint` pages). A
//! checkpoint copies only the frames no reader still needs, and the log starts over from its
//! beginning only after every frame has been copied while no reader was using it. Readers that
//! are always there with a snapshot older than the last commit (an export streaming for
//! minutes, a dashboard polling a large query back to back) therefore let the log grow without
//! bound. The fault drill saw 1.28 GiB of WAL beside a 70 MiB database fill its disk, after which
//! every batch and heartbeat failed with `SQLITE_FULL`, and kept failing: with no commit, no
//! checkpoint ever ran again.
//!
//! After each batch, committed or failed, the writer looks at the log's size on disk (one
//! `stat`). Past [`WalLimit::bytes`] (twice the size at which the automatic checkpoint runs,
//! which a log that starts over does not reach) it runs `PRAGMA wal_checkpoint(TRUNCATE)`.
//! That waits for the readers of old snapshots to finish (a busy timeout of [`WAIT`] instead of
//! the writer's usual one), copies every frame back and truncates the file; readers that begin
//! meanwhile read the database file and do not hold it up. It is tried at most once per
//! [`EVERY`], so a reader that outlasts the wait costs the sink at most `WAIT` of every `EVERY`,
//! and the log says how large the WAL has grown and that readers hold it.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, DbErr, Statement, sqlx};

use crate::{clock, db};

/// How long a truncating checkpoint waits for the readers of old snapshots.
pub const WAIT: Duration = Duration::from_secs(2);

/// Tries at most this often.
pub const EVERY: Duration = Duration::from_secs(10);

/// Where the WAL of a database is and the size past which its checkpoints count as starved.
#[derive(Clone, Debug)]
pub struct WalLimit {
    /// The `-wal` file.
    pub path: PathBuf,
    /// Bytes past which a truncating checkpoint is tried.
    pub bytes: u64,
}

impl WalLimit {
    /// The limit for the writer's database: `None` unless it is an SQLite file. Twice the log's
    /// size when the automatic checkpoint runs (its page size times `wal_autocheckpoint`).
    pub async fn of(db: &DatabaseConnection, url: &str) -> Result<Option<Self>, DbErr> {
        let Some(file) = db::sqlite_path(url) else { return Ok(None) };
        if db.get_database_backend() != DbBackend::Sqlite {
            return Ok(None);
        }
        let page = pragma(db, "page_size").await?;
        // 0 turns the automatic checkpoint off; count SQLite's default then.
        let pages = match pragma(db, "wal_autocheckpoint").await? {
            0 => 1_000,
            n => n,
        };
        Ok(Some(Self { path: PathBuf::from(format!("{file}-wal")), bytes: 2 * page * pages }))
    }
}

async fn pragma(db: &DatabaseConnection, name: &str) -> Result<u64, DbErr> {
    let row = db.query_one_raw(Statement::from_string(DbBackend::Sqlite, format!("PRAGMA {name}"))).await?;
    let value = row.map(|r| r.try_get_by_index::<i64>(0)).transpose()?.unwrap_or(0);
    Ok(u64::try_from(value).unwrap_or(0))
}

/// The writer's watch over the WAL (see the module docs).
#[derive(Debug)]
pub struct WalWatch {
    limit: WalLimit,
    /// The writer's busy timeout, restored after a try.
    busy_timeout: Duration,
    last_try: Option<Instant>,
}

/// What a truncating checkpoint did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The log is within its limit, or the last try was too recent.
    NotDue,
    /// Every frame was copied back and the file truncated.
    Truncated { from_bytes: u64 },
    /// Readers of old snapshots outlasted [`WAIT`]; tried again after [`EVERY`].
    HeldByReaders { bytes: u64 },
}

/// Whether to try: the log is past its limit and the last try is `EVERY` ago (or none).
fn due(wal_bytes: u64, limit: u64, since_last_try: Option<Duration>) -> bool {
    wal_bytes > limit && since_last_try.is_none_or(|d| d >= EVERY)
}

impl WalWatch {
    /// A watch over `limit`; `busy_timeout` is the writer connection's own.
    pub fn new(limit: WalLimit, busy_timeout: Duration) -> Self {
        Self { limit, busy_timeout, last_try: None }
    }

    /// Checks the log's size and, when due, runs a truncating checkpoint on the writer's
    /// connection. Failures are logged, never returned: the batches go on either way.
    pub async fn after_batch(&mut self, db: &DatabaseConnection) -> Outcome {
        let bytes = std::fs::metadata(&self.limit.path).map_or(0, |m| m.len());
        if !due(bytes, self.limit.bytes, self.last_try.map(|t| t.elapsed())) {
            return Outcome::NotDue;
        }
        self.last_try = Some(clock::monotonic());
        match truncate(db, WAIT, self.busy_timeout).await {
            Ok(false) => {
                tracing::info!(
                    message = "The write-ahead log had outgrown its checkpoints; copied back and truncated.",
                    wal_mib = bytes >> 20,
                    limit_mib = self.limit.bytes >> 20
                );
                Outcome::Truncated { from_bytes: bytes }
            }
            Ok(true) => {
                tracing::warn!(
                    message = "The write-ahead log keeps growing: readers of old snapshots (long exports or queries) keep its \
                               checkpoints from finishing. Tried again in a while.",
                    wal_mib = bytes >> 20,
                    limit_mib = self.limit.bytes >> 20,
                    waited = ?WAIT
                );
                Outcome::HeldByReaders { bytes }
            }
            Err(e) => {
                tracing::warn!(message = "The truncating checkpoint failed.", wal_mib = bytes >> 20, error = %e);
                Outcome::HeldByReaders { bytes }
            }
        }
    }
}

/// `PRAGMA wal_checkpoint(TRUNCATE)` on the pool's connection, waiting `wait` for readers; the
/// connection's busy timeout is `restore` again afterwards. `true` when readers held it.
async fn truncate(db: &DatabaseConnection, wait: Duration, restore: Duration) -> Result<bool, sqlx::Error> {
    let mut conn = db.get_sqlite_connection_pool().acquire().await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("PRAGMA busy_timeout = {}", wait.as_millis()))).execute(&mut *conn).await?;
    let result: Result<(i64, i64, i64), sqlx::Error> = sqlx::query_as("PRAGMA wal_checkpoint(TRUNCATE)").fetch_one(&mut *conn).await;
    sqlx::query(sqlx::AssertSqlSafe(format!("PRAGMA busy_timeout = {}", restore.as_millis()))).execute(&mut *conn).await?;
    Ok(result?.0 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store;

    /// Commits `n` transactions of 200 applied ids each (a few pages of WAL apiece).
    async fn write(db: &DatabaseConnection, from: usize, n: usize) {
        for t in from..from + n {
            let ids: Vec<(String, u64)> = (0..200).map(|i| (format!("{t:08}-{i:04}-{}", "x".repeat(40)), (t * 200 + i) as u64)).collect();
            let txn = store::begin_write(db).await.expect("begin");
            store::record_applied(&txn, &ids, 1).await.expect("insert");
            txn.commit().await.expect("commit");
        }
    }

    fn wal_len(limit: &WalLimit) -> u64 {
        std::fs::metadata(&limit.path).map_or(0, |m| m.len())
    }

    /// On a real file: a reader holding an old snapshot keeps the WAL growing past its limit and
    /// the truncating checkpoint reports it; once that reader is gone, the next try truncates
    /// the file even though a newer reader is still open; nothing written is lost.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_log_starved_by_an_old_reader_is_truncated_once_the_reader_ends() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("ntp.db");
        let url = format!("sqlite://{}?mode=rwc", file.display());
        let db = db::connect_and_migrate(&url).await.expect("sqlite");
        let real = WalLimit::of(&db, &url).await.expect("pragmas").expect("an SQLite file");
        assert_eq!(real.bytes, 2 * u64::from(migration::SQLITE_PAGE_SIZE) * 65_536, "twice the autocheckpoint's size");
        // The writer checkpoints at 64 Ki pages; a limit of 512 KiB makes the test small.
        let limit = WalLimit { bytes: 512 << 10, ..real };
        write(&db, 0, 5).await;

        // A reader with a snapshot that every later commit leaves behind.
        let old = rusqlite::Connection::open(&file).expect("reader");
        old.execute_batch("BEGIN").expect("begin");
        let seen: i64 = old.query_row("SELECT COUNT(*) FROM applied_batches", [], |r| r.get(0)).expect("read");
        assert_eq!(seen, 1_000);
        let mut rounds = 0;
        while wal_len(&limit) <= limit.bytes {
            write(&db, 5 + rounds * 5, 5).await;
            rounds += 1;
            assert!(rounds < 1_000, "the WAL never outgrew {} bytes", limit.bytes);
        }
        let mut watch = WalWatch::new(limit.clone(), db::SQLITE_BUSY_TIMEOUT);
        let held = watch.after_batch(&db).await;
        assert!(matches!(held, Outcome::HeldByReaders { bytes } if bytes > limit.bytes), "{held:?}");
        assert_eq!(watch.after_batch(&db).await, Outcome::NotDue, "tried again at once");
        assert!(wal_len(&limit) > limit.bytes, "the reader's frames are still needed");

        // The old reader ends; a new one opens on the latest snapshot and stays open.
        old.execute_batch("COMMIT").expect("end the old read");
        let new = rusqlite::Connection::open(&file).expect("reader");
        new.execute_batch("BEGIN").expect("begin");
        let written = 1_000 + rounds as i64 * 1_000;
        let seen: i64 = new.query_row("SELECT COUNT(*) FROM applied_batches", [], |r| r.get(0)).expect("read");
        assert_eq!(seen, written);
        let mut watch = WalWatch::new(limit.clone(), db::SQLITE_BUSY_TIMEOUT);
        let outcome = watch.after_batch(&db).await;
        assert!(matches!(outcome, Outcome::Truncated { from_bytes } if from_bytes > limit.bytes), "{outcome:?}");
        assert_eq!(wal_len(&limit), 0, "truncated");
        let seen: i64 = new.query_row("SELECT COUNT(*) FROM applied_batches", [], |r| r.get(0)).expect("read");
        assert_eq!(seen, written, "the open reader still sees its snapshot");
        new.execute_batch("COMMIT").expect("end");

        // The writer carries on with its own busy timeout, and every row is in the file.
        write(&db, 100_000, 1).await;
        let timeout: i64 = db
            .query_one_raw(Statement::from_string(DbBackend::Sqlite, "PRAGMA busy_timeout"))
            .await
            .expect("pragma")
            .expect("row")
            .try_get_by_index(0)
            .expect("value");
        assert_eq!(timeout, 30_000);
        drop(db);
        let check = rusqlite::Connection::open(&file).expect("check");
        let count: i64 = check.query_row("SELECT COUNT(*) FROM applied_batches", [], |r| r.get(0)).expect("count");
        assert_eq!(count, written + 200);
        let ok: String = check.query_row("PRAGMA integrity_check", [], |r| r.get(0)).expect("check");
        assert_eq!(ok, "ok");
    }

    #[test]
    fn a_try_is_due_past_the_limit_and_at_most_once_per_period() {
        assert!(!due(100, 100, None), "at the limit");
        assert!(due(101, 100, None), "past it, never tried");
        assert!(!due(101, 100, EVERY.checked_sub(Duration::from_millis(1))));
        assert!(due(101, 100, Some(EVERY)));
    }
}
