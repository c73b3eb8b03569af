//! `sink_state.failed_attempts`: batch writes that failed and were retried, carried into the
//! row by the next batch that commits, so that the API shows them when the sink's status on the
//! bus is gone (the sink stopped, NATS down). Rows written before count from zero.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.has_column("sink_state", "failed_attempts").await? {
            return Ok(());
        }
        manager
            .alter_table(
                Table::alter()
                    .table("sink_state")
                    .add_column(ColumnDef::new("failed_attempts").big_integer().not_null().default(0))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.alter_table(Table::alter().table("sink_state").drop_column("failed_attempts").to_owned()).await
    }

    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }
}

#[cfg(test)]
mod tests {
    use sea_orm_migration::{
        MigratorTrait,
        sea_orm::{Database, DbBackend, Statement},
    };

    use super::*;
    use crate::Migrator;

    /// A sink's row from before the column counts from zero; down takes the column away and up
    /// brings it back, both without touching the other counters.
    #[tokio::test]
    async fn an_older_row_counts_from_zero() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Database::connect(format!("sqlite://{}?mode=rwc", dir.path().join("a.db").display())).await.expect("open");
        Migrator::up(&db, None).await.expect("up");
        Migrator::down(&db, Some(1)).await.expect("down");
        let manager = SchemaManager::new(&db);
        assert!(!manager.has_column("sink_state", "failed_attempts").await.expect("columns"));
        db.execute_unprepared("INSERT INTO sink_state (consumer, stream, total_received, updated_at) VALUES ('old', 'NTP', 7, 1)")
            .await
            .expect("a row of the older schema");
        Migrator::up(&db, None).await.expect("up again");
        let row = db
            .query_one_raw(Statement::from_string(DbBackend::Sqlite, "SELECT failed_attempts, total_received FROM sink_state"))
            .await
            .expect("read")
            .expect("the row");
        let (failed, received): (i64, i64) = (row.try_get_by_index(0).expect("failed"), row.try_get_by_index(1).expect("received"));
        assert_eq!((failed, received), (0, 7));
    }
}
