//! Opening the database: SQLite with WAL and a busy timeout (the API reads while the sink
//! writes), or PostgreSQL; then migrating (the sink is the only writer, so it owns migrations).

use std::time::Duration;

use migration::{Migrator, MigratorTrait};
use sea_orm::{ConnectOptions, Database, DatabaseConnection};

/// Opens `url` for writing and applies pending migrations.
pub async fn connect_and_migrate(url: &str) -> anyhow::Result<DatabaseConnection> {
    let db = connect_writer(url).await?;
    Migrator::up(&db, None).await.map_err(|e| anyhow::anyhow!("migrating {}: {e}", redact(url)))?;
    Ok(db)
}

/// Pragmas of the SQLite writer beyond WAL, `synchronous=NORMAL`, the busy timeout and the page
/// size of a new file (`migration::SQLITE_PAGE_SIZE`).
///
/// - `temp_store=memory`: temporary files (statement journals, which the upsert no longer
///   needs, see `store::upsert_sql_with`; sorts) stay off the disk.
/// - `cache_size`: room for the hot table and its indexes (negative = KiB).
/// - `wal_autocheckpoint`: random-key upserts dirty most pages of the table at every commit;
///   checkpointing every 64 Ki pages instead of every 1 Ki lets successive commits of the same
///   page collapse into one write-back (see docs/performance.md).
pub const SQLITE_WRITER_PRAGMAS: [(&str, &str); 3] = [("temp_store", "memory"), ("cache_size", "-131072"), ("wal_autocheckpoint", "65536")];

/// How long the SQLite writer waits for a lock another process holds.
pub const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// Opens `url` for the sink: one connection for SQLite (one writer), a few for PostgreSQL.
pub async fn connect_writer(url: &str) -> anyhow::Result<DatabaseConnection> {
    if let Some(path) = sqlite_path(url)
        && let Some(dir) = std::path::Path::new(path).parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("cannot create the database directory {}: {e}", dir.display()))?;
    }
    let mut opts = ConnectOptions::new(url.to_string());
    opts.sqlx_logging(false).acquire_timeout(Duration::from_secs(30));
    if url.starts_with("sqlite:") {
        opts.max_connections(1).min_connections(1).map_sqlx_sqlite_opts(|o| {
            let o = o
                .journal_mode(sea_orm::sqlx::sqlite::SqliteJournalMode::Wal)
                .synchronous(sea_orm::sqlx::sqlite::SqliteSynchronous::Normal)
                .busy_timeout(SQLITE_BUSY_TIMEOUT)
                .create_if_missing(true)
                .page_size(migration::SQLITE_PAGE_SIZE);
            SQLITE_WRITER_PRAGMAS.iter().fold(o, |o, (k, v)| o.pragma(*k, *v))
        });
    } else {
        opts.max_connections(4);
    }
    Database::connect(opts).await.map_err(|e| anyhow::anyhow!("cannot open the database {}: {e}", redact(url)))
}

/// Throws away the writer's SQLite connection after a failed batch; the pool opens a fresh one.
///
/// A statement or COMMIT that fails with SQLITE_FULL (or I/O errors) can make SQLite roll the
/// transaction back by itself, and sqlx's count of open transactions then disagrees with
/// SQLite's: the next "transaction" runs as a savepoint whose commit is not what it seems. The
/// fault drill caught batches acknowledged but never stored that way; a new connection has no
/// such state. PostgreSQL's driver resets its connections itself.
pub async fn discard_sqlite_connection(db: &DatabaseConnection) {
    if db.get_database_backend() != sea_orm::DatabaseBackend::Sqlite {
        return;
    }
    match db.get_sqlite_connection_pool().acquire().await {
        Ok(conn) => {
            if let Err(e) = conn.close().await {
                tracing::debug!(message = "Closing the failed connection reported an error.", error = %e);
            }
        }
        Err(e) => tracing::warn!(message = "Could not take the failed connection out of the pool.", error = %e),
    }
}

/// The file of an SQLite URL.
pub fn sqlite_path(url: &str) -> Option<&str> {
    let rest = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or(rest);
    (!path.is_empty() && path != ":memory:").then_some(path)
}

/// A URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &url[scheme + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(redact("postgres://ntp:secret@db:5432/ntp"), "postgres://ntp:***@db:5432/ntp");
        assert_eq!(redact("postgres://ntp@db/ntp"), "postgres://ntp@db/ntp");
        assert_eq!(redact("sqlite://data/x.db?mode=rwc"), "sqlite://data/x.db?mode=rwc");
        assert_eq!(sqlite_path("sqlite://data/x.db?mode=rwc"), Some("data/x.db"));
        assert_eq!(sqlite_path("sqlite::memory:"), None);
    }

    /// The options `.cargo/config.toml` gives the bundled SQLite are in the library the sink runs.
    #[tokio::test]
    async fn sqlite_has_the_workspace_compile_options() {
        use sea_orm::{ConnectionTrait, DbBackend, Statement};
        let db = connect_writer("sqlite::memory:").await.expect("in-memory SQLite");
        let rows = db.query_all_raw(Statement::from_string(DbBackend::Sqlite, "PRAGMA compile_options")).await.expect("compile_options");
        let options: Vec<String> = rows.iter().map(|r| r.try_get_by_index(0).expect("text")).collect();
        assert!(options.iter().any(|o| o == "DEFAULT_MEMSTATUS=0"), "{options:?}");
        assert!(options.iter().any(|o| o == "USE_ALLOCA"), "{options:?}");
        assert!(!options.iter().any(|o| o == "ENABLE_MEMORY_MANAGEMENT"), "{options:?}");
        // libsqlite3-sys's own options are still there.
        assert!(options.iter().any(|o| o == "THREADSAFE=1"), "{options:?}");
    }
}
