//! `sink_state` (the sink's counters and last applied stream sequence, per durable consumer,
//! readable by the API even when the sink is down) and `applied_batches` (the message ids
//! already applied, so a redelivered or re-published batch changes nothing).

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const COUNTERS: &[&str] = &[
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
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let mut t = Table::create();
        t.table("sink_state")
            .if_not_exists()
            .col(ColumnDef::new("consumer").string().not_null().primary_key())
            .col(ColumnDef::new("stream").string().not_null());
        for c in COUNTERS {
            t.col(ColumnDef::new(*c).big_integer().not_null().default(0));
        }
        t.col(ColumnDef::new("last_commit_at").big_integer())
            .col(ColumnDef::new("lag_seconds").double())
            .col(ColumnDef::new("last_batch_records").big_integer())
            .col(ColumnDef::new("last_batch_seconds").double())
            .col(ColumnDef::new("updated_at").big_integer().not_null());
        manager.create_table(t).await?;

        manager
            .create_table(
                Table::create()
                    .table("applied_batches")
                    .if_not_exists()
                    .col(ColumnDef::new("message_id").string().not_null().primary_key())
                    .col(ColumnDef::new("stream_sequence").big_integer().not_null())
                    .col(ColumnDef::new("applied_at").big_integer().not_null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create().name("ix_applied_batches_applied_at").table("applied_batches").col("applied_at").if_not_exists().to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table("applied_batches").to_owned()).await?;
        manager.drop_table(Table::drop().table("sink_state").to_owned()).await
    }

    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }
}
