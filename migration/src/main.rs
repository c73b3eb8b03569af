//! `ntpscope-migrate`: apply, inspect or roll back the schema by hand.

use clap::{Parser, Subcommand};
use migration::{Migrator, MigratorTrait};
use sea_orm_migration::sea_orm::Database;

/// Apply, inspect or roll back ntpscope's database schema.
#[derive(Debug, Parser)]
#[command(name = "ntpscope-migrate", version)]
struct Cli {
    /// Database URL (`sqlite://data/ntp_clients.db?mode=rwc`, `postgres://…`).
    #[arg(long, env = "DATABASE_URL", default_value = "sqlite://data/ntp_clients.db?mode=rwc")]
    database_url: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Apply pending migrations.
    Up,
    /// Roll back the newest migration (or N).
    Down {
        /// How many to roll back.
        #[arg(default_value_t = 1)]
        steps: u32,
    },
    /// Show applied and pending migrations.
    Status,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // A database this creates gets the sink's page size.
    let db = Database::connect(migration::creating_options(&cli.database_url)).await?;
    match cli.command {
        Command::Up => Migrator::up(&db, None).await?,
        Command::Down { steps } => Migrator::down(&db, Some(steps)).await?,
        Command::Status => {
            for m in Migrator::get_migration_with_status(&db).await? {
                println!("{} {:?}", m.name(), m.status());
            }
        }
    }
    Ok(())
}
