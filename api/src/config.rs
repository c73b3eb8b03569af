//! Command line, environment and validated configuration of the API.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::Parser;

/// Command line of `ntpscope-api`.
#[derive(Debug, Clone, Parser)]
#[command(name = "ntpscope-api", version, about = "REST API over ntpscope's per-client NTP history, statistics and capture control")]
pub struct Cli {
    /// Address to listen on (the seed's port 8000).
    #[arg(long, env = "NTPSCOPE_API_LISTEN", default_value = "127.0.0.1:8000")]
    pub listen: SocketAddr,
    /// Database URL (`sqlite://…` or `postgres://…`); overrides --db-path.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    /// SQLite database file (the seed's NTP_DB_PATH).
    #[arg(long, env = "NTP_DB_PATH", default_value = "data/ntp_clients.db")]
    pub db_path: String,
    /// File with one API bearer token per line (or set NTPSCOPE_API_TOKENS, comma-separated).
    #[arg(long, env = "NTPSCOPE_API_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Require a token on read endpoints too (mutating ones always need one).
    #[arg(long, env = "NTPSCOPE_API_PROTECT_READS")]
    pub protect_reads: bool,
    /// Require a token for export.
    #[arg(long, env = "NTPSCOPE_API_PROTECT_EXPORT")]
    pub protect_export: bool,
    /// Most rows one export may return.
    #[arg(long, default_value_t = 5_000_000)]
    pub max_export_rows: u64,
    /// Seconds before a control request to an agent gives up (504).
    #[arg(long, default_value_t = 5.0)]
    pub control_timeout: f64,
    /// Seconds a request may take until its response starts; 504 after.
    #[arg(long, default_value_t = 30.0)]
    pub request_timeout: f64,
    /// Seconds without a status update after which an agent counts as offline and the sink as
    /// stopped (health and statistics).
    #[arg(long, default_value_t = 30.0)]
    pub stale_after: f64,
    /// Seconds to wait at start-up while the database is missing, unreachable or not migrated yet
    /// (the sink creates and migrates it); 0 fails at once.
    #[arg(long, env = "NTPSCOPE_API_SCHEMA_WAIT", default_value_t = 60.0)]
    pub schema_wait: f64,
    /// Public base URL shown in the OpenAPI document (servers).
    #[arg(long, env = "NTPSCOPE_API_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Durable consumer of the sink whose state the API reports.
    #[arg(long, env = "NTPSCOPE_CONSUMER", default_value = ntp_wire::subject::DEFAULT_CONSUMER)]
    pub consumer: String,
    #[command(flatten)]
    pub nats: ntpscope_bus::ConnectArgs,
    #[command(flatten)]
    pub settings: ntpscope_bus::settings::SettingsArgs,
}

/// A configuration error (exit code 78).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Listen address.
    pub listen: SocketAddr,
    /// Database URL.
    pub database_url: String,
    /// Accepted bearer tokens.
    pub tokens: Vec<String>,
    /// Protect read endpoints.
    pub protect_reads: bool,
    /// Protect export.
    pub protect_export: bool,
    /// Export row cap.
    pub max_export_rows: u64,
    /// Control request timeout.
    pub control_timeout: Duration,
    /// Longest a request may take until its response starts.
    pub request_timeout: Duration,
    /// Status age after which an agent is offline and the sink stopped.
    pub stale_after: Duration,
    /// Longest wait at start-up for the sink to create or migrate the database.
    pub schema_wait: Duration,
    /// Public URL for the spec.
    pub public_url: Option<String>,
    /// Sink consumer name.
    pub consumer: String,
    /// NATS connection.
    pub nats: ntpscope_bus::NatsConfig,
}

impl Cli {
    /// Validates into a [`Config`], reading the token file.
    pub fn into_config(self) -> Result<Config, ConfigError> {
        let mut tokens: Vec<String> = Vec::new();
        if let Some(path) = &self.token_file {
            let text =
                std::fs::read_to_string(path).map_err(|e| ConfigError(format!("cannot read --token-file {}: {e}", path.display())))?;
            tokens.extend(text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(str::to_string));
        }
        if let Ok(env) = std::env::var("NTPSCOPE_API_TOKENS") {
            tokens.extend(env.split(',').map(str::trim).filter(|t| !t.is_empty()).map(str::to_string));
        }
        if let Some(short) = tokens.iter().find(|t| t.len() < 16) {
            return Err(ConfigError(format!("API tokens must be at least 16 characters (one has {})", short.len())));
        }
        if (self.protect_reads || self.protect_export) && tokens.is_empty() {
            return Err(ConfigError("--protect-reads/--protect-export need at least one token".into()));
        }
        if !self.control_timeout.is_finite() || self.control_timeout <= 0.0 || self.control_timeout > 120.0 {
            return Err(ConfigError("--control-timeout must be between 0 and 120 seconds".into()));
        }
        if !self.request_timeout.is_finite() || self.request_timeout < 0.1 || self.request_timeout > 3600.0 {
            return Err(ConfigError("--request-timeout must be between 0.1 and 3600 seconds".into()));
        }
        if !self.stale_after.is_finite() || self.stale_after < 1.0 || self.stale_after > 3600.0 {
            return Err(ConfigError("--stale-after must be between 1 and 3600 seconds".into()));
        }
        if !self.schema_wait.is_finite() || self.schema_wait < 0.0 || self.schema_wait > 86_400.0 {
            return Err(ConfigError("--schema-wait must be between 0 and 86400 seconds".into()));
        }
        let database_url = self.database_url.unwrap_or_else(|| format!("sqlite://{}?mode=rw", self.db_path));
        let nats = self.nats.into_config("ntpscope-api").map_err(|e| ConfigError(e.to_string()))?;
        Ok(Config {
            listen: self.listen,
            database_url,
            tokens,
            protect_reads: self.protect_reads,
            protect_export: self.protect_export,
            max_export_rows: self.max_export_rows,
            control_timeout: Duration::from_secs_f64(self.control_timeout),
            stale_after: Duration::from_secs_f64(self.stale_after),
            request_timeout: Duration::from_secs_f64(self.request_timeout),
            schema_wait: Duration::from_secs_f64(self.schema_wait),
            public_url: self.public_url,
            consumer: self.consumer,
            nats,
        })
    }
}
