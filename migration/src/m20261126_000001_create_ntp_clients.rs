//! `ntp_clients`: one row per (host, interface, client address), the seed's table extended for
//! a fleet. Counters are additive; latest-value columns follow the newest session; latency
//! metrics keep count, sum, min and max so averages are exact.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// Additive counters, all `BIGINT NOT NULL DEFAULT 0`.
const COUNTERS: &[&str] = &[
    "session_count",
    "answered_count",
    "unanswered_count",
    "kod_count",
    "retransmit_count",
    "interleaved_count",
    "t1_randomized_count",
    "nts_count",
    "extension_count",
    "mac_count",
    "observation_count",
    "symmetric_count",
    "broadcast_count",
    "control_count",
    "private_count",
    "monlist_count",
];

/// Latency metrics: `<m>_count`, `<m>_sum`, `<m>_min`, `<m>_max`.
const METRICS: &[&str] = &["latency", "processing", "turnaround"];

/// Whether the columns the sink's upsert changes are `NOT NULL` ([`Strict`](Nulls::Strict), as
/// this migration creates them) or not ([`Relaxed`](Nulls::Relaxed), what
/// `m20261204_000004_relax_upserted_columns` makes of them on SQLite). The key, `id` and
/// `created_at` are `NOT NULL` either way.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Nulls {
    Strict,
    Relaxed,
}

/// The table as this migration creates it, under `name`, with the changed columns' nullability.
pub(crate) fn table(name: &str, nulls: Nulls) -> TableCreateStatement {
    let changed = |c: &mut ColumnDef| -> ColumnDef {
        if nulls == Nulls::Strict {
            c.not_null();
        }
        c.to_owned()
    };
    let mut t = Table::create();
    t.table(Alias::new(name))
        .if_not_exists()
        .col(ColumnDef::new("id").big_integer().not_null().auto_increment().primary_key())
        .col(ColumnDef::new("host").string().not_null())
        .col(ColumnDef::new("interface_name").string().not_null())
        .col(ColumnDef::new("client_ip").string().not_null())
        // The address as 16 bytes (IPv4 mapped into IPv6), so CIDR filters are ranges and
        // addresses sort numerically.
        .col(ColumnDef::new("client_ip_bin").binary())
        .col(ColumnDef::new("client_port").integer())
        .col(ColumnDef::new("server_ip").string())
        .col(ColumnDef::new("server_port").integer())
        .col(ColumnDef::new("vlan_id").integer())
        .col(ColumnDef::new("ntp_version").integer())
        .col(ColumnDef::new("stratum").integer())
        .col(ColumnDef::new("precision").integer())
        .col(ColumnDef::new("root_delay").double())
        .col(ColumnDef::new("root_dispersion").double())
        .col(ColumnDef::new("reference_id").string())
        .col(ColumnDef::new("leap_indicator").integer())
        .col(ColumnDef::new("poll_interval").integer())
        .col(ColumnDef::new("reference_timestamp").big_integer())
        .col(ColumnDef::new("originate_timestamp").big_integer())
        .col(ColumnDef::new("receive_timestamp").big_integer())
        .col(ColumnDef::new("transmit_timestamp").big_integer())
        .col(ColumnDef::new("client_to_server_latency").double())
        .col(ColumnDef::new("server_processing_time").double())
        .col(ColumnDef::new("total_process_time").double())
        .col(ColumnDef::new("packet_length").integer())
        .col(ColumnDef::new("session_timestamp").big_integer())
        .col(changed(ColumnDef::new("first_seen").big_integer()))
        .col(changed(ColumnDef::new("last_seen").big_integer()))
        .col(ColumnDef::new("last_kiss_code").string())
        .col(ColumnDef::new("last_mode").integer())
        .col(changed(ColumnDef::new("t1_randomized").boolean().default(false)));
    for c in COUNTERS {
        t.col(changed(ColumnDef::new(*c).big_integer().default(0)));
    }
    for m in METRICS {
        t.col(changed(ColumnDef::new(format!("{m}_count")).big_integer().default(0)));
        t.col(changed(ColumnDef::new(format!("{m}_sum")).double().default(0.0)));
        t.col(ColumnDef::new(format!("{m}_min")).double());
        t.col(ColumnDef::new(format!("{m}_max")).double());
    }
    t.col(ColumnDef::new("created_at").big_integer().not_null()).col(changed(ColumnDef::new("updated_at").big_integer()));
    t
}

/// Creates the table's indexes (if missing).
///
/// Every index on a column the upsert changes costs write throughput (an index on
/// (host, interface_name, last_seen) cost a quarter of it); filters on host and interface use
/// the unique key's prefix instead. See docs/performance.md.
pub(crate) async fn create_indexes(manager: &SchemaManager<'_>) -> Result<(), DbErr> {
    let indexes: [(&str, &[&str], bool); 4] = [
        ("ux_ntp_clients_key", &["host", "interface_name", "client_ip"], true),
        ("ix_ntp_clients_last_seen", &["last_seen", "id"], false),
        ("ix_ntp_clients_client_ip", &["client_ip"], false),
        ("ix_ntp_clients_client_ip_bin", &["client_ip_bin"], false),
    ];
    for (name, cols, unique) in indexes {
        let mut i = Index::create();
        i.name(name).table("ntp_clients").if_not_exists();
        for c in cols {
            i.col(*c);
        }
        if unique {
            i.unique();
        }
        manager.create_index(i).await?;
    }
    Ok(())
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.create_table(table("ntp_clients", Nulls::Strict)).await?;
        create_indexes(manager).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table("ntp_clients").to_owned()).await
    }

    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }
}
