//! `migration`: the on-disk contract of ntpscope, for SQLite and PostgreSQL alike.
//!
//! The sink runs [`Migrator::up`] at start-up (it is the only writer); `ntpscope-migrate` runs
//! the same migrations by hand; the API never migrates and refuses a schema whose newest
//! migration it does not know ([`LATEST`]).
//!
//! **Architecture invariant:** migrations name tables and columns with strings and never import
//! the `entity` crate, so an old migration keeps compiling and meaning the same thing when the
//! entities change.
//!
//! Times are `BIGINT` Unix nanoseconds: integers compare, sort and MIN/MAX correctly on both
//! backends, which text timestamps do not.

pub use sea_orm_migration::prelude::*;

mod m20261126_000001_create_ntp_clients;
mod m20261126_000002_create_sink_state;
mod m20261204_000003_add_last_kiss_at;
mod m20261204_000004_relax_upserted_columns;
mod m20261206_000005_add_failed_attempts;

/// The newest migration; a database whose newest applied migration differs is not this schema.
pub const LATEST: &str = "m20261206_000005_add_failed_attempts";

/// The page size of a new SQLite database, in bytes (SQLite's default is 4 096).
///
/// The sink's random-key upserts touch a table leaf and three index paths per client; with
/// 8 KiB pages the trees are a level shallower and a commit writes half as many WAL frames for
/// the same bytes, and the sink's store bench writes 12–18 % more records per second at
/// B = 50 000 (docs/performance.md, fourteenth session). SQLite fixes the page size when it
/// writes the first page, and a WAL database cannot change it later (`VACUUM` neither), so every
/// connection that may create the file sets it (sqlx issues `page_size` before `journal_mode`):
/// the sink's writer and [`creating_options`] (`ntpscope-migrate`). On an existing database it
/// changes nothing; README says how to convert one.
pub const SQLITE_PAGE_SIZE: u32 = 8_192;

/// Options for a connection to `url` that may create the database: on SQLite with
/// [`SQLITE_PAGE_SIZE`]. (The sink's writer sets the page size among its own SQLite options,
/// since sea-orm keeps only one function for them.)
pub fn creating_options(url: &str) -> sea_orm_migration::sea_orm::ConnectOptions {
    let mut opts = sea_orm_migration::sea_orm::ConnectOptions::new(url);
    if url.starts_with("sqlite:") {
        opts.map_sqlx_sqlite_opts(|o| o.page_size(SQLITE_PAGE_SIZE));
    }
    opts
}

/// All migrations, oldest first.
#[derive(Debug)]
pub struct Migrator;

/// How many of the newest migrations `Migrator::down` undoes to undo `name` too (for tests
/// that step back to the schema before one migration); `None` for a name not among them.
pub fn steps_to_undo(name: &str) -> Option<u32> {
    let all = Migrator::migrations();
    let at = all.iter().position(|m| m.name() == name)?;
    <u32 as std::convert::TryFrom<usize>>::try_from(all.len() - at).ok()
}

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261126_000001_create_ntp_clients::Migration),
            Box::new(m20261126_000002_create_sink_state::Migration),
            Box::new(m20261204_000003_add_last_kiss_at::Migration),
            Box::new(m20261204_000004_relax_upserted_columns::Migration),
            Box::new(m20261206_000005_add_failed_attempts::Migration),
        ]
    }
}
