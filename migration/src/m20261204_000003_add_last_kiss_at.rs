//! `ntp_clients.last_kiss_at`: the request time (Unix ns) of the session whose kiss code is in
//! `last_kiss_code`, so that the code follows the newest kiss even when older traffic is
//! replayed later. Rows written before this migration keep `NULL` here; the sink then falls back
//! to comparing the batch with the row's `last_seen` (see `sink/src/store.rs`).

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.has_column("ntp_clients", "last_kiss_at").await? {
            return Ok(());
        }
        manager.alter_table(Table::alter().table("ntp_clients").add_column(ColumnDef::new("last_kiss_at").big_integer()).to_owned()).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.alter_table(Table::alter().table("ntp_clients").drop_column("last_kiss_at").to_owned()).await
    }

    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }
}
