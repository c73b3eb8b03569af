//! Command line, environment and validated configuration of the sink.
//!
//! The seed's settings keep their meaning: `NTP_DB_PATH` (an SQLite file; `DATABASE_URL` takes
//! any URL, PostgreSQL included), `NTP_BATCH_SIZE` (records per database transaction, default
//! 100), `NTP_BATCH_INTERVAL_SECONDS` (the longest a batch waits, default 5.0).

use std::time::Duration;

use clap::Parser;

/// Command line of `ntpscope-sink`.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "ntpscope-sink",
    version,
    about = "Consume ntpscope records from NATS JetStream and keep per-client history in SQLite or PostgreSQL"
)]
pub struct Cli {
    /// Database URL (`sqlite://path?mode=rwc` or `postgres://user@host/db`); overrides --db-path.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    /// SQLite database file (the seed's NTP_DB_PATH).
    #[arg(long, env = "NTP_DB_PATH", default_value = "data/ntp_clients.db")]
    pub db_path: String,
    /// Records per database transaction (the seed's NTP_BATCH_SIZE).
    #[arg(long, env = "NTP_BATCH_SIZE", default_value_t = 100)]
    pub batch_size: usize,
    /// Longest a partial batch waits, seconds (the seed's NTP_BATCH_INTERVAL_SECONDS).
    #[arg(long, env = "NTP_BATCH_INTERVAL_SECONDS", default_value_t = 5.0)]
    pub batch_interval: f64,
    /// Durable consumer name (one per sink; its state lives in the database).
    #[arg(long, env = "NTPSCOPE_CONSUMER", default_value = ntp_wire::subject::DEFAULT_CONSUMER)]
    pub consumer: String,
    /// Seconds JetStream waits for an ack before redelivering (a running sink acks right after
    /// each commit, and extends it for the batches in hand while a write waits or is retried).
    /// At least twice the batch interval; by default 30, or three batch intervals when that is
    /// longer, so that any seed batch interval works without it.
    #[arg(long)]
    pub ack_wait: Option<f64>,
    /// Messages delivered and not yet acknowledged, at most.
    #[arg(long, default_value_t = 20_000)]
    pub max_ack_pending: i64,
    /// Hours to remember applied message ids (must exceed any agent's retry horizon).
    #[arg(long, default_value_t = 48.0)]
    pub applied_retention_hours: f64,
    /// Seconds between status updates on the bus (KV bucket).
    #[arg(long, default_value_t = 2.0)]
    pub status_interval: f64,
    /// Longest the sink's database row goes without a write, seconds: an idle sink writes its
    /// heartbeat there this often (a sink that commits batches needs none). Keep it well below
    /// the API's `--stale-after` (30 s), which reads the row when the bus is down.
    #[arg(long, default_value_t = 10.0)]
    pub db_heartbeat_interval: f64,
    #[command(flatten)]
    pub nats: ntpscope_bus::ConnectArgs,
    #[command(flatten)]
    pub stream: ntpscope_bus::StreamArgs,
    #[command(flatten)]
    pub settings: ntpscope_bus::settings::SettingsArgs,
}

/// The ack wait when `--ack-wait` is not given: 30 s, or three batch intervals when that is
/// longer (a batch waits up to one interval before its commit and acks).
fn default_ack_wait(batch_interval: f64) -> f64 {
    (3.0 * batch_interval).max(30.0)
}

/// A configuration error, reported with exit code 78.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Database URL.
    pub database_url: String,
    /// Records per transaction.
    pub batch_size: usize,
    /// Longest a batch waits.
    pub batch_interval: Duration,
    /// Durable consumer name.
    pub consumer: String,
    /// Ack wait.
    pub ack_wait: Duration,
    /// Max ack pending.
    pub max_ack_pending: i64,
    /// How long applied message ids are kept.
    pub applied_retention: Duration,
    /// Status cadence on the bus.
    pub status_interval: Duration,
    /// Longest the database row goes without a write.
    pub db_heartbeat: Duration,
    /// NATS connection.
    pub nats: ntpscope_bus::NatsConfig,
    /// Limits of the `NTP` stream (the sink creates it when it starts first).
    pub stream: ntpscope_bus::StreamSettings,
}

impl Cli {
    /// Validates into a [`Config`].
    pub fn into_config(self) -> Result<Config, ConfigError> {
        let secs = |v: f64, name: &str, min: f64, max: f64| {
            if v.is_finite() && v >= min && v <= max {
                Ok(Duration::from_secs_f64(v))
            } else {
                Err(ConfigError(format!("{name} must be between {min} and {max} seconds, got {v}")))
            }
        };
        if self.batch_size == 0 || self.batch_size > 1_000_000 {
            return Err(ConfigError(format!("NTP_BATCH_SIZE must be between 1 and 1000000, got {}", self.batch_size)));
        }
        let batch_interval = secs(self.batch_interval, "NTP_BATCH_INTERVAL_SECONDS", 0.01, 3600.0)?;
        let ack_wait = secs(self.ack_wait.unwrap_or_else(|| default_ack_wait(self.batch_interval)), "--ack-wait", 1.0, 86_400.0)?;
        if ack_wait < batch_interval * 2 {
            return Err(ConfigError(format!(
                "--ack-wait ({ack_wait:?}) must be at least twice NTP_BATCH_INTERVAL_SECONDS ({batch_interval:?}), \
                 or messages are redelivered while their batch is still open"
            )));
        }
        if self.max_ack_pending < 1 {
            return Err(ConfigError("--max-ack-pending must be positive".into()));
        }
        if self.consumer.is_empty() || self.consumer.contains(['.', '*', '>', ' ']) {
            return Err(ConfigError(format!("invalid consumer name {:?}", self.consumer)));
        }
        let applied_retention = secs(self.applied_retention_hours * 3600.0, "--applied-retention-hours", 60.0, 365.0 * 86_400.0)?;
        let status_interval = secs(self.status_interval, "--status-interval", 0.1, 3600.0)?;
        let db_heartbeat = secs(self.db_heartbeat_interval, "--db-heartbeat-interval", 0.1, 3600.0)?;
        let database_url = match self.database_url {
            Some(url) => url,
            None => format!("sqlite://{}?mode=rwc", self.db_path),
        };
        let nats = self.nats.into_config(&format!("ntpscope-sink/{}", self.consumer)).map_err(|e| ConfigError(e.to_string()))?;
        let stream = self.stream.into_settings().map_err(ConfigError)?;
        Ok(Config {
            stream,
            database_url,
            batch_size: self.batch_size,
            batch_interval,
            consumer: self.consumer,
            ack_wait,
            max_ack_pending: self.max_ack_pending,
            applied_retention,
            status_interval,
            db_heartbeat,
            nats,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, ConfigError> {
        let mut v = vec!["ntpscope-sink"];
        v.extend_from_slice(args);
        Cli::try_parse_from(v).expect("parses").into_config()
    }

    #[test]
    fn seed_defaults() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.batch_size, 100);
        assert_eq!(c.batch_interval, Duration::from_secs(5));
        assert_eq!(c.database_url, "sqlite://data/ntp_clients.db?mode=rwc");
        assert_eq!(c.ack_wait, Duration::from_secs(30));
    }

    /// Any batch interval the seed accepts works without `--ack-wait`; a given ack wait is kept,
    /// and refused when a batch could outlive it.
    #[test]
    fn the_ack_wait_follows_a_long_batch_interval() {
        assert_eq!(parse(&["--batch-interval", "10"]).unwrap().ack_wait, Duration::from_secs(30));
        assert_eq!(parse(&["--batch-interval", "60"]).unwrap().ack_wait, Duration::from_secs(180));
        assert_eq!(parse(&["--batch-interval", "3600"]).unwrap().ack_wait, Duration::from_secs(10_800));
        assert_eq!(parse(&["--batch-interval", "60", "--ack-wait", "120"]).unwrap().ack_wait, Duration::from_secs(120));
        assert!(parse(&["--batch-interval", "60", "--ack-wait", "30"]).is_err());
    }

    #[test]
    fn bad_values_name_the_setting() {
        for (args, needle) in [
            (vec!["--batch-size", "0"], "NTP_BATCH_SIZE"),
            (vec!["--batch-interval", "0"], "NTP_BATCH_INTERVAL_SECONDS"),
            (vec!["--ack-wait", "5", "--batch-interval", "5"], "--ack-wait"),
            (vec!["--consumer", "a.b"], "consumer"),
            (vec!["--stream-duplicate-window", "700", "--stream-max-age", "600"], "--stream-duplicate-window"),
            (vec!["--nats-inbox-prefix", "a.*"], "--nats-inbox-prefix"),
        ] {
            let err = parse(&args).unwrap_err().to_string();
            assert!(err.contains(needle), "{args:?}: {err}");
        }
    }
}
