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
//! After each batch the writer looks at the log's file (one `stat`), and at most once per
//! [`EVERY`] when the file is past [`WalLimit::bytes`] (twice the log's size when the automatic
//! checkpoint runs, which a log that starts over does not reach): a passive checkpoint (which
//! never waits) copies back what it can and says how many frames the log holds, and when they
//! are past the limit too,
//! `PRAGMA wal_checkpoint(TRUNCATE)` copies every frame back and truncates the file. That waits
//! for the readers using the log to finish, with a busy timeout of [`WAIT`] instead of the
//! writer's usual one; readers that begin once every frame is copied back read the database
//! file and do not hold it up. A reader that outlasts the wait (or another process's write
//! lock) gets a warning with the log's size, and another try `EVERY` later, so it costs the sink
//! at most `WAIT` of every `EVERY` plus the copying, which a checkpoint would do anyway.
//!
//! After each batch the writer also starts the log's new pages on their way to the disk
//! ([`LogWriteback`]). With `synchronous=NORMAL` no commit syncs the log; the checkpoint that
//! runs on the writer's connection once the log holds `wal_autocheckpoint` pages syncs it first,
//! and with 512 MiB of log waiting that took 0.8–1.1 s of the writer's time at 620 MB/s, the
//! tail of the pipeline's latency at an offered load (docs/performance.md). Synced behind the
//! writer on a blocking thread, the log leaves that checkpoint little to wait for; the pages
//! reach the disk either way, only sooner.
//!
//! The writer also looks after a failed batch: the log may be what filled the disk. Copying it
//! back needs room only for pages past the database file's end, so this prevents a full disk
//! far more surely than it cures one. The limit is a trigger, not a bound: readers that hold
//! the log past the wait at every look still let it grow, with a warning every `EVERY`.

use std::{
    fs::File,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, DbErr, Statement, sqlx};

use crate::{clock, db};

/// How long a truncating checkpoint waits for the readers of the log.
pub const WAIT: Duration = Duration::from_secs(2);

/// Looks at most this often.
pub const EVERY: Duration = Duration::from_secs(10);

/// Where the WAL of a database is and the size past which its checkpoints count as starved.
#[derive(Clone, Debug)]
pub struct WalLimit {
    /// The `-wal` file.
    pub path: PathBuf,
    /// The database's page size (a frame holds one page).
    pub page: u64,
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
        Ok(Some(Self { path: PathBuf::from(format!("{file}-wal")), page, bytes: 2 * page * pages }))
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
    last_look: Option<Instant>,
    /// The file's size as the last call found it (0 after a truncation it made).
    file_bytes: u64,
    /// The file's size when its log was last found within the limit: a log that started over
    /// in a file that had grown while starved is reused inside it, and only a file that grows
    /// past that size again (the log outgrowing it) is worth another look.
    quiet_up_to: u64,
    /// Syncs the log behind the writer.
    writeback: LogWriteback,
}

/// Syncs the WAL file on a blocking thread, one sync at a time, without ever making its caller
/// wait (see the module docs). It holds the file open, and opens it again when the path names
/// another file (SQLite deletes the log when its last connection closes, and a new connection
/// makes a new one). SQLite takes no locks on the log file itself (they live in `-shm`), so
/// this descriptor cannot release any.
#[derive(Debug, Clone)]
pub struct LogWriteback {
    path: PathBuf,
    /// The open log and its inode number.
    file: Arc<Mutex<Option<(File, u64)>>>,
    busy: Arc<AtomicBool>,
    /// Syncs that succeeded.
    syncs: Arc<AtomicU64>,
}

impl LogWriteback {
    /// Syncs of the log at `path`.
    pub fn new(path: PathBuf) -> Self {
        Self { path, file: Arc::default(), busy: Arc::default(), syncs: Arc::default() }
    }

    /// Starts a sync of the log on the blocking pool, unless one is still running (then the
    /// pages written since are left to the next). Returns at once. A log that does not exist
    /// (yet) is not an error; other failures are logged at debug level: the checkpoint syncs the
    /// log anyway.
    pub fn start(&self) {
        if self.busy.swap(true, Ordering::AcqRel) {
            return;
        }
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            match sync(&this.path, &this.file) {
                Ok(()) => {
                    this.syncs.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => tracing::debug!(message = "Could not sync the write-ahead log.", error = %e),
            }
            this.busy.store(false, Ordering::Release);
        });
    }

    /// Syncs that succeeded so far.
    pub fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }

    /// Whether a sync is running.
    pub fn busy(&self) -> bool {
        self.busy.load(Ordering::Acquire)
    }
}

/// Syncs the file at `path`, through `held` when it is still that file.
fn sync(path: &Path, held: &Mutex<Option<(File, u64)>>) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    let inode = std::fs::metadata(path)?.ino();
    let mut held = held.lock().unwrap_or_else(PoisonError::into_inner);
    let file = match &*held {
        Some((file, i)) if *i == inode => file,
        _ => &held.insert((File::open(path)?, inode)).0,
    };
    file.sync_data()
}

/// What a look at the WAL did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The file is within its limit (or within the size at which its log was last found
    /// within it), or the last look was too recent.
    NotDue,
    /// The file is past its limit but the log in it is not (a log that started over in a file
    /// that grew while it was starved): nothing to do until the file grows again.
    LogWithin { log_bytes: u64 },
    /// Every frame was copied back and the file truncated.
    Truncated { from_bytes: u64 },
    /// Readers of the log (or another process's write lock) outlasted [`WAIT`].
    Held { log_bytes: u64, copied_bytes: u64 },
    /// SQLite refused the checkpoint.
    Failed,
}

/// Whether to look: the file is past its limit and the last look is `EVERY` ago (or none).
fn due(file_bytes: u64, limit: u64, since_last_look: Option<Duration>) -> bool {
    file_bytes > limit && since_last_look.is_none_or(|d| d >= EVERY)
}

/// What `PRAGMA wal_checkpoint` returns.
#[derive(Debug, Clone, Copy)]
struct Checkpoint {
    /// Whether it could not finish.
    busy: bool,
    /// Frames in the log.
    log: i64,
    /// Frames copied back.
    checkpointed: i64,
}

impl WalWatch {
    /// A watch over `limit`; `busy_timeout` is the writer connection's own.
    pub fn new(limit: WalLimit, busy_timeout: Duration) -> Self {
        let writeback = LogWriteback::new(limit.path.clone());
        Self { limit, busy_timeout, last_look: None, file_bytes: 0, quiet_up_to: 0, writeback }
    }

    /// The WAL file's size as the last call found it (0 before the first, and after a
    /// truncation it made).
    pub fn file_bytes(&self) -> u64 {
        self.file_bytes
    }

    /// Starts a sync of the log behind the writer ([`LogWriteback`]), looks at the log and, when
    /// it is past its limit, runs a truncating checkpoint on the writer's connection. Failures
    /// are logged, never returned: the batches go on either way.
    pub async fn after_batch(&mut self, db: &DatabaseConnection) -> Outcome {
        self.writeback.start();
        let file = std::fs::metadata(&self.limit.path).map_or(0, |m| m.len());
        self.file_bytes = file;
        if !due(file, self.limit.bytes.max(self.quiet_up_to), self.last_look.map(|t| t.elapsed())) {
            return Outcome::NotDue;
        }
        self.last_look = Some(clock::monotonic());
        let frames = |n: i64| u64::try_from(n).unwrap_or(0) * self.limit.page;
        let outcome = match checkpoint(db, None).await {
            // Another connection checkpointing holds the passive one off, and the log's size
            // is unknown (-1): treat it as over the limit.
            Ok(c) if !c.busy && c.log >= 0 && frames(c.log) <= self.limit.bytes => {
                self.quiet_up_to = file;
                Outcome::LogWithin { log_bytes: frames(c.log) }
            }
            Ok(_) => match checkpoint(db, Some((WAIT, self.busy_timeout))).await {
                Ok(c) if !c.busy => {
                    self.quiet_up_to = 0;
                    self.file_bytes = 0;
                    Outcome::Truncated { from_bytes: file }
                }
                Ok(c) => Outcome::Held { log_bytes: frames(c.log), copied_bytes: frames(c.checkpointed) },
                Err(e) => {
                    tracing::warn!(message = "The truncating checkpoint failed.", wal_mib = file >> 20, error = %e);
                    Outcome::Failed
                }
            },
            Err(e) => {
                tracing::warn!(message = "The passive checkpoint failed.", wal_mib = file >> 20, error = %e);
                Outcome::Failed
            }
        };
        let limit_mib = self.limit.bytes >> 20;
        match outcome {
            Outcome::Truncated { from_bytes } => tracing::info!(
                message = "The write-ahead log had outgrown its checkpoints; copied back and truncated.",
                wal_mib = from_bytes >> 20,
                limit_mib
            ),
            Outcome::Held { log_bytes, copied_bytes } => tracing::warn!(
                message = "The write-ahead log is past its limit and readers using it (long exports or queries), or another \
                           process's write lock, keep the checkpoint from finishing; tried again in a while.",
                log_mib = log_bytes >> 20,
                copied_mib = copied_bytes >> 20,
                limit_mib,
                waited = ?WAIT
            ),
            _ => {}
        }
        outcome
    }
}

/// `PRAGMA wal_checkpoint` on the pool's connection: passive with `None`; truncating with
/// `Some((wait, restore))`, waiting `wait` for readers, with the connection's busy timeout set
/// back to `restore` afterwards (a connection that cannot be set back is closed, and the pool
/// opens a new one with the configured timeout). Never cancelled: the writer awaits it.
async fn checkpoint(db: &DatabaseConnection, truncate: Option<(Duration, Duration)>) -> Result<Checkpoint, sqlx::Error> {
    let mut conn = db.get_sqlite_connection_pool().acquire().await?;
    let of = |(busy, log, checkpointed): (i64, i64, i64)| Checkpoint { busy: busy != 0, log, checkpointed };
    let Some((wait, restore)) = truncate else {
        return sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)").fetch_one(&mut *conn).await.map(of);
    };
    let busy_timeout = |d: Duration| sqlx::query(sqlx::AssertSqlSafe(format!("PRAGMA busy_timeout = {}", d.as_millis())));
    busy_timeout(wait).execute(&mut *conn).await?;
    let result = sqlx::query_as("PRAGMA wal_checkpoint(TRUNCATE)").fetch_one(&mut *conn).await.map(of);
    if let Err(e) = busy_timeout(restore).execute(&mut *conn).await {
        tracing::warn!(message = "Could not set the writer's busy timeout back; opening a new connection.", error = %e);
        conn.close_on_drop();
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store;

    /// Commits `n` transactions of 200 applied ids each (a few pages of WAL apiece), numbered
    /// from `from`.
    async fn write(db: &DatabaseConnection, from: i64, n: i64) {
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

    /// On a real file: a reader holding a snapshot older than the last commit keeps the WAL past
    /// its limit and is reported; once it is gone the file is truncated; a reader open on the
    /// newest snapshot still holds the truncation (every frame copied back, the file kept); a
    /// log that has started over in a large file is left alone; nothing written is lost.
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
        let look = |limit: &WalLimit| {
            let mut watch = WalWatch::new(limit.clone(), db::SQLITE_BUSY_TIMEOUT);
            let db = db.clone();
            async move { watch.after_batch(&db).await }
        };
        write(&db, 0, 5).await;
        db.execute_unprepared("PRAGMA wal_checkpoint(TRUNCATE)").await.expect("an empty log to start from");
        assert_eq!(look(&limit).await, Outcome::NotDue, "the file is within its limit");

        // A reader with a snapshot that every later commit leaves behind.
        let old = rusqlite::Connection::open(&file).expect("reader");
        old.execute_batch("BEGIN").expect("begin");
        let seen: i64 = old.query_row("SELECT COUNT(*) FROM applied_batches", [], |r| r.get(0)).expect("read");
        assert_eq!(seen, 1_000);
        let mut written = 1_000;
        // Past the limit by 16 frames: the file holds a header per frame that the log's count
        // of frames (what the limit is checked against) does not.
        let past = limit.bytes + 16 * (limit.page + 24);
        while wal_len(&limit) <= past {
            write(&db, written / 200, 5).await;
            written += 1_000;
            assert!(written < 1_000_000, "the WAL never outgrew {past} bytes");
        }
        let mut watch = WalWatch::new(limit.clone(), db::SQLITE_BUSY_TIMEOUT);
        let held = watch.after_batch(&db).await;
        assert!(
            matches!(held, Outcome::Held { log_bytes, copied_bytes } if log_bytes > limit.bytes && copied_bytes < log_bytes),
            "the old reader's frames cannot be copied back: {held:?}"
        );
        assert_eq!(watch.file_bytes(), wal_len(&limit), "the size it reports");
        assert_eq!(watch.after_batch(&db).await, Outcome::NotDue, "looked again at once");
        assert!(wal_len(&limit) > limit.bytes);

        // The old reader ends: everything is copied back and the file truncated.
        old.execute_batch("COMMIT").expect("end the old read");
        let outcome = look(&limit).await;
        assert!(matches!(outcome, Outcome::Truncated { from_bytes } if from_bytes > limit.bytes), "{outcome:?}");
        assert_eq!(wal_len(&limit), 0, "truncated");

        let mut watch = WalWatch::new(limit.clone(), db::SQLITE_BUSY_TIMEOUT);
        assert_eq!(watch.after_batch(&db).await, Outcome::NotDue);
        assert_eq!(watch.file_bytes(), 0, "the size it reports after the truncation");
        let stats = crate::stats::SinkStats::default();
        assert!(!stats.status("c").counters.contains_key("wal_bytes"), "unknown until the writer looks");
        stats.set_wal_bytes(watch.file_bytes());
        assert_eq!(stats.status("c").counters.get("wal_bytes"), Some(&0));

        // A reader on the newest snapshot: every frame is copied back, but it still uses the
        // log, which cannot start over under it.
        while wal_len(&limit) <= past {
            write(&db, written / 200, 5).await;
            written += 1_000;
            assert!(written < 2_000_000, "the WAL never outgrew {past} bytes");
        }
        let new = rusqlite::Connection::open(&file).expect("reader");
        new.execute_batch("BEGIN").expect("begin");
        let seen: i64 = new.query_row("SELECT COUNT(*) FROM applied_batches", [], |r| r.get(0)).expect("read");
        assert_eq!(seen, written);
        let held = look(&limit).await;
        assert!(matches!(held, Outcome::Held { log_bytes, copied_bytes } if copied_bytes == log_bytes), "{held:?}");
        new.execute_batch("COMMIT").expect("end");

        // The next commit starts the log over in the same file: past the limit, nothing to do.
        write(&db, 1_000_000, 1).await;
        written += 200;
        let mut watch = WalWatch::new(limit.clone(), db::SQLITE_BUSY_TIMEOUT);
        let within = watch.after_batch(&db).await;
        assert!(matches!(within, Outcome::LogWithin { log_bytes } if log_bytes < limit.bytes), "{within:?}");
        assert!(wal_len(&limit) > limit.bytes, "the file keeps its size");
        // Not looked at again while the log is reused inside the file, however long that lasts.
        watch.last_look = clock::monotonic().checked_sub(EVERY);
        assert_eq!(watch.after_batch(&db).await, Outcome::NotDue);

        // The writer carries on with its own busy timeout, and every row is in the file.
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
        assert_eq!(count, written);
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

    /// Waits until no sync is running (the blocking pool runs them).
    async fn settled(wb: &LogWriteback) {
        let deadline = clock::monotonic() + Duration::from_secs(10);
        while wb.busy() {
            assert!(clock::monotonic() < deadline, "a sync of a few bytes took 10 s");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn held_inode(wb: &LogWriteback) -> Option<u64> {
        wb.file.lock().expect("lock").as_ref().map(|(_, inode)| *inode)
    }

    /// The sync behind the writer: nothing to do before the log exists, one sync at a time
    /// (a call while one runs starts none), and a log made anew under the same path (SQLite
    /// deletes it with its last connection) is opened again rather than the old one synced.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_log_is_synced_behind_the_writer_and_followed_to_a_new_file() {
        use std::os::unix::fs::MetadataExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ntp.db-wal");
        let wb = LogWriteback::new(path.clone());
        wb.start();
        settled(&wb).await;
        assert_eq!((wb.syncs(), held_inode(&wb)), (0, None), "no log yet");

        std::fs::write(&path, b"frames").expect("log");
        wb.start();
        settled(&wb).await;
        let first = std::fs::metadata(&path).expect("log").ino();
        assert_eq!((wb.syncs(), held_inode(&wb)), (1, Some(first)));

        wb.busy.store(true, Ordering::Release);
        wb.start();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(wb.syncs(), 1, "no second sync beside a running one");
        wb.busy.store(false, Ordering::Release);

        // A new file under the path; the old one is kept so that its inode cannot be reused.
        std::fs::rename(&path, dir.path().join("old-wal")).expect("rename");
        std::fs::write(&path, b"new frames").expect("new log");
        wb.start();
        settled(&wb).await;
        let second = std::fs::metadata(&path).expect("log").ino();
        assert_ne!(first, second);
        assert_eq!((wb.syncs(), held_inode(&wb)), (2, Some(second)), "the new log is synced");
    }

    /// The writer's watch starts the sync after each batch, on the database's real log.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_batch_starts_a_sync_of_the_real_log() {
        use std::os::unix::fs::MetadataExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("ntp.db").display());
        let db = db::connect_and_migrate(&url).await.expect("sqlite");
        let limit = WalLimit::of(&db, &url).await.expect("pragmas").expect("an SQLite file");
        let mut watch = WalWatch::new(limit.clone(), db::SQLITE_BUSY_TIMEOUT);
        write(&db, 0, 1).await;
        assert_eq!(watch.after_batch(&db).await, Outcome::NotDue);
        settled(&watch.writeback).await;
        assert_eq!(watch.writeback.syncs(), 1);
        assert_eq!(held_inode(&watch.writeback), Some(std::fs::metadata(&limit.path).expect("the log").ino()));
    }
}
