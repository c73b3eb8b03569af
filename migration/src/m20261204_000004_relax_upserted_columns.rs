//! SQLite only: the columns the sink's upsert changes lose their `NOT NULL` constraints, so a
//! multi-row upsert runs without a statement journal.
//!
//! SQLite gives a statement a statement journal (a copy of every page it changes, kept so the
//! statement alone can be undone) when it may write several rows *and* may abort half-way. A
//! multi-row `INSERT … ON CONFLICT DO UPDATE` always may write several rows; it may abort when a
//! `NOT NULL` column it changes could turn out `NULL` (the `DO UPDATE` branch checks those with
//! `ABORT`, whatever the statement says), when the insert's own checks abort, or when it calls
//! an SQL function (`MIN`, `MAX`). The sink writes `INSERT OR FAIL` (the key columns keep their
//! `NOT NULL`, checked with `FAIL`) and `CASE` instead of `MIN`/`MAX`, and this migration removes
//! the rest: the sink wrote 91–93 k instead of 84–86 k upserts/s (docs/performance.md). Every
//! value the sink writes to these columns is non-`NULL` by type, and the defaults stay.
//!
//! SQLite cannot drop a constraint in place, so the table is rebuilt in the migration's
//! transaction: a new table, the rows copied with their ids, the old table dropped, the new one
//! renamed, the `AUTOINCREMENT` high-water mark kept, the indexes made again. A view or trigger
//! of the operator's on the table stops the migration with a message (dropping the table would
//! lose them). On a database of 5 M clients (1.6 GB) it took 24 s with `ntpscope-migrate`; the
//! copy passes through the WAL, so it needs free disk of about twice the table, and the file
//! keeps the old table's pages as free pages for later inserts (`VACUUM` returns them).
//! PostgreSQL keeps its constraints: it has no statement journal to avoid, and there the
//! constraints cost nothing.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend, Statement};

use crate::m20261126_000001_create_ntp_clients::{Nulls, create_indexes, table};

#[derive(DeriveMigrationName)]
pub struct Migration;

/// The table the rows are copied into before it takes the old one's name.
const NEW: &str = "ntp_clients_rebuilt";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        rebuild(manager, Nulls::Relaxed).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        rebuild(manager, Nulls::Strict).await
    }

    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }
}

/// Rebuilds `ntp_clients` on SQLite with `nulls`, unless it already has them.
async fn rebuild(manager: &SchemaManager<'_>, nulls: Nulls) -> Result<(), DbErr> {
    let db = manager.get_connection();
    if db.get_database_backend() != DbBackend::Sqlite {
        return Ok(());
    }
    let old = columns(db, "ntp_clients").await?;
    // `session_count` stands for every changed column: they always move together.
    let strict = old.iter().find(|(name, _)| name == "session_count").is_some_and(|(_, not_null)| *not_null);
    if strict == (nulls == Nulls::Strict) {
        return Ok(());
    }
    // Dropping the table would drop triggers on it, and renaming the new one fails on views
    // naming it: stop and say so rather than lose or break them.
    let dependents = db
        .query_all_raw(Statement::from_string(
            DbBackend::Sqlite,
            "SELECT type || ' ' || name FROM sqlite_schema WHERE type IN ('trigger', 'view') AND (tbl_name = 'ntp_clients' OR sql LIKE '%ntp_clients%')",
        ))
        .await?
        .iter()
        .map(|r| r.try_get_by_index::<String>(0))
        .collect::<Result<Vec<_>, _>>()?;
    if !dependents.is_empty() {
        return Err(DbErr::Migration(format!(
            "ntp_clients is rebuilt by this migration, and {} depend on it: drop them, migrate, and create them again",
            dependents.join(", ")
        )));
    }
    let mut new = table(NEW, nulls);
    new.col(ColumnDef::new("last_kiss_at").big_integer()); // m20261204_000003
    manager.create_table(new).await?;
    let names: Vec<String> = columns(db, NEW).await?.into_iter().map(|(name, _)| name).collect();
    let mut old_names: Vec<&str> = old.iter().map(|(name, _)| name.as_str()).collect();
    let mut sorted: Vec<&str> = names.iter().map(String::as_str).collect();
    old_names.sort_unstable();
    sorted.sort_unstable();
    if old_names != sorted {
        return Err(DbErr::Migration(format!(
            "ntp_clients has the columns {old_names:?}, not those this migration rebuilds it with ({sorted:?})"
        )));
    }
    let list = names.iter().map(|n| format!("\"{n}\"")).collect::<Vec<_>>().join(", ");
    db.execute_unprepared(&format!("INSERT INTO {NEW} ({list}) SELECT {list} FROM ntp_clients")).await?;
    let seq = db
        .query_one_raw(Statement::from_string(DbBackend::Sqlite, "SELECT seq FROM sqlite_sequence WHERE name = 'ntp_clients'"))
        .await?
        .map(|row| row.try_get_by_index::<i64>(0))
        .transpose()?
        .unwrap_or(0);
    manager.drop_table(Table::drop().table("ntp_clients").to_owned()).await?;
    manager.rename_table(Table::rename().table(NEW, "ntp_clients").to_owned()).await?;
    // Ids are never used twice, even those of rows deleted before the rebuild.
    db.execute_raw(Statement::from_sql_and_values(
        DbBackend::Sqlite,
        "UPDATE sqlite_sequence SET seq = MAX(seq, ?) WHERE name = 'ntp_clients'",
        [seq.into()],
    ))
    .await?;
    db.execute_raw(Statement::from_sql_and_values(
        DbBackend::Sqlite,
        "INSERT INTO sqlite_sequence (name, seq) SELECT 'ntp_clients', ? WHERE ? > 0 AND NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'ntp_clients')",
        [seq.into(), seq.into()],
    ))
    .await?;
    create_indexes(manager).await
}

/// `(name, NOT NULL)` of every column of `table`, in order.
async fn columns(db: &SchemaManagerConnection<'_>, table: &str) -> Result<Vec<(String, bool)>, DbErr> {
    let rows = db
        .query_all_raw(Statement::from_sql_and_values(
            DbBackend::Sqlite,
            "SELECT name, \"notnull\" FROM pragma_table_info(?) ORDER BY cid",
            [table.into()],
        ))
        .await?;
    rows.iter().map(|r| Ok((r.try_get_by_index::<String>(0)?, r.try_get_by_index::<i64>(1)? != 0))).collect()
}

#[cfg(test)]
mod tests {
    use sea_orm_migration::sea_orm::{Database, DatabaseConnection};

    use super::*;
    use crate::{Migrator, MigratorTrait};

    async fn query(db: &DatabaseConnection, sql: &str) -> Vec<Vec<String>> {
        let rows = db.query_all_raw(Statement::from_string(DbBackend::Sqlite, sql)).await.expect(sql);
        // Every query here selects text; a value of another type ends the row and fails the test.
        rows.iter()
            .map(|r| {
                (0..).map_while(|i| r.try_get_by_index::<Option<String>>(i).ok()).map(|v| v.unwrap_or_else(|| "NULL".into())).collect()
            })
            .collect()
    }

    async fn not_null(db: &DatabaseConnection) -> Vec<String> {
        let rows = query(db, "SELECT name FROM pragma_table_info('ntp_clients') WHERE \"notnull\" ORDER BY name").await;
        rows.into_iter().map(|mut r| r.remove(0)).collect()
    }

    /// Every row (as text, every column), the index definitions and the id high-water mark.
    async fn snapshot(db: &DatabaseConnection) -> (Vec<Vec<String>>, Vec<Vec<String>>, Vec<Vec<String>>) {
        let names = query(db, "SELECT name FROM pragma_table_info('ntp_clients') ORDER BY name").await;
        let list = names.iter().map(|r| format!("quote(\"{}\")", r[0])).collect::<Vec<_>>().join(", ");
        (
            query(db, &format!("SELECT {list} FROM ntp_clients ORDER BY id")).await,
            query(db, "SELECT name, sql FROM sqlite_schema WHERE type = 'index' AND tbl_name = 'ntp_clients' ORDER BY name").await,
            query(db, "SELECT CAST(seq AS TEXT) FROM sqlite_sequence WHERE name = 'ntp_clients'").await,
        )
    }

    #[tokio::test]
    async fn the_rebuilt_table_keeps_every_row_id_index_and_key_constraint() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("m4.db").display());
        let db = Database::connect(&url).await.expect("open");
        Migrator::up(&db, Some(3)).await.expect("up to m3");
        db.execute_unprepared(
            "INSERT INTO ntp_clients (host, interface_name, client_ip, client_ip_bin, client_port, root_delay, \
             first_seen, last_seen, last_kiss_code, last_kiss_at, session_count, latency_count, latency_sum, latency_min, \
             created_at, updated_at) VALUES \
             ('a', 'eth0', '198.18.0.1', x'00000000000000000000ffffc6120001', 40000, 0.25, 10, 20, 'RATE', 15, 3, 2, 0.5, 0.125, 1, 2), \
             ('a', 'eth0', '198.18.0.2', NULL, NULL, NULL, 11, 21, NULL, NULL, 1, 0, 0, NULL, 1, 2), \
             ('b', 'eth1.100', '2001:db8::1', NULL, 123, NULL, 12, 22, 'DENY', NULL, 7, 0, 0, NULL, 3, 4); \
             DELETE FROM ntp_clients WHERE client_ip = '2001:db8::1';",
        )
        .await
        .expect("rows");
        db.execute_unprepared("CREATE VIEW recent AS SELECT client_ip FROM ntp_clients WHERE last_seen > 0").await.expect("view");
        let refused = Migrator::up(&db, None).await.expect_err("a view on the table stops the rebuild");
        assert!(refused.to_string().contains("view recent"), "{refused}");
        db.execute_unprepared("DROP VIEW recent").await.expect("drop view");
        let before = snapshot(&db).await;
        assert_eq!(before.2, vec![vec!["3".to_string()]], "the deleted row's id is the high-water mark");
        let strict = not_null(&db).await;
        assert!(strict.contains(&"session_count".to_string()) && strict.contains(&"updated_at".to_string()), "{strict:?}");

        Migrator::up(&db, None).await.expect("up");
        assert_eq!(snapshot(&db).await, before, "rows, indexes and the id high-water mark survive the rebuild");
        assert_eq!(not_null(&db).await, ["client_ip", "created_at", "host", "id", "interface_name"]);
        let dup = db
            .execute_unprepared(
                "INSERT INTO ntp_clients (host, interface_name, client_ip, created_at) VALUES ('a', 'eth0', '198.18.0.1', 5)",
            )
            .await;
        assert!(dup.is_err(), "the key stays unique");
        db.execute_unprepared(
            "INSERT INTO ntp_clients (host, interface_name, client_ip, first_seen, last_seen, created_at, updated_at) \
             VALUES ('c', 'lo', '127.0.0.1', 5, 5, 5, 5)",
        )
        .await
        .expect("defaults fill the counters");
        let new = query(
            &db,
            "SELECT CAST(id AS TEXT), CAST(session_count AS TEXT), CAST(t1_randomized AS TEXT) FROM ntp_clients WHERE host = 'c'",
        )
        .await;
        assert_eq!(new, [["4", "0", "0"]], "a new row takes an id above every id ever used, and the defaults");

        Migrator::down(&db, crate::steps_to_undo("m20261204_000004_relax_upserted_columns")).await.expect("down");
        assert_eq!(not_null(&db).await, strict, "down restores the constraints");
        let mut restored = snapshot(&db).await;
        restored.0.pop();
        assert_eq!((restored.0, restored.1), (before.0, before.1));
    }
}
