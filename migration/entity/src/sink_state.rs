//! `sink_state`: the sink's counters and last applied stream sequence, per durable consumer.

use sea_orm::entity::prelude::*;

/// One sink (durable consumer).
#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "sink_state")]
pub struct Model {
    /// Durable consumer name.
    #[sea_orm(primary_key, auto_increment = false)]
    pub consumer: String,
    /// Stream name.
    pub stream: String,
    /// Counter (see the sink docs).
    pub last_sequence: i64,
    /// Counter (see the sink docs).
    pub total_received: i64,
    /// Counter (see the sink docs).
    pub total_processed: i64,
    /// Counter (see the sink docs).
    pub processing_errors: i64,
    /// Counter (see the sink docs).
    pub total_inserted: i64,
    /// Counter (see the sink docs).
    pub total_updated: i64,
    /// Counter (see the sink docs).
    pub batches: i64,
    /// Counter (see the sink docs).
    pub messages_applied: i64,
    /// Counter (see the sink docs).
    pub duplicates_skipped: i64,
    /// Counter (see the sink docs).
    pub dead_lettered: i64,
    /// Counter (see the sink docs).
    pub queue_size: i64,
    /// Batch writes that failed and were retried (added by the next batch that commits).
    pub failed_attempts: i64,
    /// Last commit, Unix ns.
    pub last_commit_at: Option<i64>,
    /// Capture-to-commit lag of the newest record at the last commit, seconds.
    pub lag_seconds: Option<f64>,
    /// Records in the last batch.
    pub last_batch_records: Option<i64>,
    /// Duration of the last batch transaction, seconds.
    pub last_batch_seconds: Option<f64>,
    /// Last update, Unix ns.
    pub updated_at: i64,
}

/// No relations.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
