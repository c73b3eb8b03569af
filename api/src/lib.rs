//! `ntpscope-api`: the REST API over ntpscope's per-client history, with generated OpenAPI and
//! Swagger UI. `openapi.yaml` at the repository root is the committed contract.
//!
//! # Layout
//! - [`config`]: flags and environment → [`Config`].
//! - [`routes`]: the operations (thin); [`dto`]: their types; [`error`]: the one error shape;
//!   [`body`]: an optional JSON request body; [`body_fields`]: the field a refused body names.
//! - [`query`]: read queries, keyset paging, counts, aggregates, cleanup; [`reader`]: where
//!   rows are read (rusqlite on an SQLite file, sea-orm otherwise); [`json`]: client pages and
//!   lookups written straight to bytes.
//! - [`export`]: streaming CSV/NDJSON/JSON.
//! - [`agents`]: status documents and capture control over NATS; [`health`]: the health report.
//! - [`auth`]: bearer tokens; [`state`]: shared state and caches; [`clock`]: clock reads.
//!
//! The API never migrates: it waits (`--schema-wait`) while the database cannot be reached yet,
//! has no schema or one older than `migration::LATEST` — the sink creates and migrates it — and
//! refuses a schema it does not know. Its only write is cleanup, in short chunks.
#![deny(clippy::unwrap_used)]

pub mod agents;
pub mod aggregates;
pub mod auth;
pub mod body;
pub mod body_fields;
pub mod clock;
pub mod config;
pub mod dto;
pub mod epoch;
pub mod error;
pub mod export;
pub mod health;
pub mod json;
pub mod metrics;
pub mod query;
pub mod reader;
pub mod routes;
pub mod row;
pub mod state;
pub mod total;

use std::{future::Future, sync::Arc, time::Duration};

use poem::{
    Endpoint, EndpointExt, IntoResponse, Route,
    listener::{Listener, TcpListener},
    middleware::Tracing,
};
use poem_openapi::OpenApiService;
use sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbErr, Statement};

pub use ntpscope_bus::shutdown_signal;

pub use crate::config::{Cli, Config};
use crate::{
    auth::{BodyLimit, ProtectReads, Tokens},
    routes::{HistoryApi, InterfacesApi},
    state::AppState,
};

/// The OpenAPI service (also used to generate `openapi.yaml` without a socket).
pub fn openapi() -> OpenApiService<(HistoryApi, InterfacesApi), ()> {
    OpenApiService::new((HistoryApi, InterfacesApi), "ntpscope", env!("CARGO_PKG_VERSION")).description(
        "Per-client NTP history, statistics, search, export, cleanup, health and capture control for ntpscope. \
         Errors are JSON: {\"error\": {\"status\", \"code\", \"message\", \"field\"}}. Mutating operations need a \
         bearer token; read operations need one too when the server runs with --protect-reads.",
    )
}

/// The committed contract's text.
pub fn spec_yaml() -> String {
    openapi().spec_yaml()
}

/// The whole HTTP application.
pub fn app(state: AppState) -> impl Endpoint {
    let svc = match &state.public_url {
        Some(url) => openapi().server(url.clone()),
        None => openapi(),
    };
    let ui = svc.swagger_ui();
    let json = svc.spec_endpoint();
    let yaml = svc.spec_endpoint_yaml();
    let fields = body_fields::BodyFields::new(&svc.spec());
    let tokens = state.tokens.clone();
    let limit = state.request_timeout;
    Route::new()
        .nest("/", svc)
        .nest("/docs", ui)
        .at("/openapi.json", json)
        .at("/openapi.yaml", yaml)
        .with(fields)
        .with(ProtectReads(tokens.clone()))
        .data(tokens)
        .data(state)
        .with(BodyLimit(1 << 20))
        .catch_all_error(error::json_errors)
        .around(move |ep, req| async move {
            let path = req.uri().path().to_string();
            // A slow database must not pile requests up: past the limit the client gets a 504
            // (an export's body streams after its response has started, so it is not cut). A
            // cleanup is exempt: it deletes in chunks for as long as the cut-off asks, and its
            // answer is the count, which a 504 half-way would lose.
            let mut resp = if path == CLEANUP_PATH { ep.call(req).await?.into_response() } else { within(limit, ep.call(req)).await? };
            if resp.status() == poem::http::StatusCode::METHOD_NOT_ALLOWED {
                resp.headers_mut().insert(poem::http::header::ALLOW, poem::http::HeaderValue::from_static(error::allowed_methods(&path)));
            }
            Ok(resp)
        })
        .with(Tracing)
}

/// The one path the request timeout does not cover.
const CLEANUP_PATH: &str = "/api/ntp/history/cleanup";

/// `response`, or a JSON 504 once `limit` has passed without it.
async fn within<F, R>(limit: Duration, response: F) -> poem::Result<poem::Response>
where
    F: Future<Output = poem::Result<R>>,
    R: IntoResponse,
{
    match tokio::time::timeout(limit, response).await {
        Ok(resp) => resp.map(IntoResponse::into_response),
        Err(_) => Ok(error::ApiError::timeout(format!("no response within {limit:?}")).into_response()),
    }
}

/// Why the API cannot serve a database (yet).
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// The database cannot be opened for now (an SQLite file not created yet, a server not up).
    #[error("cannot open the database: {0}")]
    Unreachable(String),
    /// The database refuses this API for good: a malformed URL, a failed sign-in, a database
    /// that does not exist on the server, a file that is not an SQLite database.
    #[error("cannot open the database: {0}")]
    Refused(String),
    /// The database holds no ntpscope schema yet (no migrations table, or an empty one).
    #[error("the database has no ntpscope schema (start the sink or run ntpscope-migrate up){}", detail(.0))]
    Missing(String),
    /// The migrations table exists but cannot be read (permissions, say).
    #[error("cannot read the database's migrations table: {0}")]
    Unreadable(String),
    /// An older schema: a sink has not migrated it yet, or is migrating it now.
    #[error(
        "the database schema is {found:?}, older than this API's {latest:?}: start the matching sink or run ntpscope-migrate up",
        latest = migration::LATEST
    )]
    Older {
        /// The newest migration applied.
        found: String,
    },
    /// A schema this API does not know, newer than it: waiting cannot help.
    #[error("the database schema is {found:?}, which this API does not know (it knows up to {latest:?}): upgrade the API", latest = migration::LATEST)]
    Unknown {
        /// The newest migration applied.
        found: String,
    },
}

fn detail(reason: &str) -> String {
    if reason.is_empty() { String::new() } else { format!(": {reason}") }
}

impl SchemaError {
    /// Whether a sink starting or migrating beside the API can still put it right.
    #[must_use]
    pub fn may_come_right(&self) -> bool {
        matches!(self, Self::Unreachable(_) | Self::Missing(_) | Self::Older { .. })
    }

    /// Sorts a failure to connect: configuration and sign-in errors are for good; the rest
    /// (refused connections, a server starting up, an SQLite file not there yet) may pass.
    fn connecting(e: &DbErr) -> Self {
        use sea_orm::sqlx;
        let permanent = match sqlx_error(e) {
            Some(sqlx::Error::Configuration(_) | sqlx::Error::Tls(_)) => true,
            // PostgreSQL: invalid authorisation (class 28), no such database (3D000);
            // SQLite: SQLITE_NOTADB (26).
            Some(sqlx::Error::Database(d)) => d.code().is_some_and(|c| c.starts_with("28") || c == "3D000" || c == "26"),
            _ => false,
        };
        if permanent { Self::Refused(e.to_string()) } else { Self::Unreachable(e.to_string()) }
    }

    /// Sorts a failure to read the migrations table: only a table that is not there yet may pass.
    fn reading(e: &DbErr) -> Self {
        // PostgreSQL: undefined table (42P01); SQLite has no code of its own for it (1, SQLITE_ERROR).
        let missing = match sqlx_error(e) {
            Some(sea_orm::sqlx::Error::Database(d)) => d.code().as_deref() == Some("42P01") || d.message().starts_with("no such table"),
            _ => false,
        };
        if missing { Self::Missing(String::new()) } else { Self::Unreadable(e.to_string()) }
    }
}

/// The sqlx error inside a sea-orm error, if there is one.
fn sqlx_error(e: &DbErr) -> Option<&sea_orm::sqlx::Error> {
    use sea_orm::RuntimeErr;
    match e {
        DbErr::Conn(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e)) | DbErr::Exec(RuntimeErr::SqlxError(e)) => Some(e),
        _ => None,
    }
}

/// Where `found` (the newest applied migration) stands against this API's migrations.
fn check_schema(found: Option<&str>) -> Result<(), SchemaError> {
    use migration::MigratorTrait as _;
    match found {
        // The migrator creates its table and commits before the first migration runs.
        None | Some("") => Err(SchemaError::Missing("no migration applied yet".into())),
        Some(found) if found == migration::LATEST => Ok(()),
        Some(found) if migration::Migrator::migrations().iter().any(|m| m.name() == found) => {
            Err(SchemaError::Older { found: found.to_string() })
        }
        Some(found) => Err(SchemaError::Unknown { found: found.to_string() }),
    }
}

/// Opens the database read-mostly and checks the schema, once.
pub async fn open_database(url: &str) -> Result<DatabaseConnection, SchemaError> {
    let mut opts = ConnectOptions::new(url.to_string());
    opts.sqlx_logging(false).max_connections(8).acquire_timeout(Duration::from_secs(10));
    if url.starts_with("sqlite:") {
        opts.map_sqlx_sqlite_opts(|o| {
            o.busy_timeout(Duration::from_secs(10)).pragma("cache_size", "-65536").pragma("mmap_size", "268435456")
        });
    }
    let db = Database::connect(opts).await.map_err(|e| SchemaError::connecting(&e))?;
    let backend = db.get_database_backend();
    let checked =
        match db.query_one_raw(Statement::from_string(backend, "SELECT version FROM seaql_migrations ORDER BY version DESC LIMIT 1")).await
        {
            Ok(row) => {
                let version: Option<String> = row.and_then(|r| r.try_get_by_index(0).ok());
                check_schema(version.as_deref())
            }
            Err(e) => Err(SchemaError::reading(&e)),
        };
    match checked {
        Ok(()) => Ok(db),
        Err(e) => {
            db.close().await.ok();
            Err(e)
        }
    }
}

/// Opens the database, trying again every 250 ms for up to `wait` while it is unreachable,
/// without a schema or older than this API: the sink creates and migrates it, and the API may
/// start first or while it migrates (each migration commits on its own, so an API can see the
/// first without the second). Any other error, or the last one once `wait` has passed, is
/// returned (a try in flight may overrun `wait` by its own timeout).
pub async fn open_database_waiting(url: &str, wait: Duration) -> Result<DatabaseConnection, SchemaError> {
    let deadline = clock::monotonic() + wait;
    let mut waited: Option<SchemaError> = None;
    loop {
        match open_database(url).await {
            Ok(db) => {
                if waited.is_some() {
                    tracing::info!(message = "The database is ready.");
                }
                return Ok(db);
            }
            Err(e) => {
                let now = clock::monotonic();
                if !e.may_come_right() || now >= deadline {
                    return Err(e);
                }
                if waited.as_ref().is_none_or(|w| std::mem::discriminant(w) != std::mem::discriminant(&e)) {
                    tracing::warn!(message = "Waiting for the sink to create or migrate the database.", reason = %e, wait = ?wait);
                }
                waited = Some(e);
                tokio::time::sleep(Duration::from_millis(250).min(deadline - now)).await;
            }
        }
    }
}

/// Builds an [`AppState`] (for `run`, tests and embedding).
#[derive(Debug)]
pub struct AppStateBuilder {
    state: AppState,
}

impl AppStateBuilder {
    /// Defaults: no tokens, 5 M export rows, 5 s control timeout, the default consumer, no NATS.
    pub fn new(db: DatabaseConnection) -> Self {
        Self {
            state: AppState {
                reader: reader::SqliteReader::for_database(&db).map(Arc::new),
                db,
                bus: Arc::default(),
                tokens: Arc::new(Tokens::new(&[], false, false)),
                max_export_rows: 5_000_000,
                control_timeout: Duration::from_secs(5),
                consumer: ntp_wire::subject::DEFAULT_CONSUMER.to_string(),
                public_url: None,
                request_timeout: Duration::from_secs(30),
                total: Arc::default(),
                interface_stats: Arc::default(),
                aggregates: Arc::default(),
                health: Arc::default(),
            },
        }
    }

    /// Accepted tokens and what they protect.
    #[must_use]
    pub fn tokens(self, tokens: &[String], protect_reads: bool, protect_export: bool) -> Self {
        self.tokens_from(Arc::new(Tokens::new(tokens, protect_reads, protect_export)))
    }

    /// Accepted tokens, already built.
    #[must_use]
    pub fn tokens_from(mut self, tokens: Arc<Tokens>) -> Self {
        self.state.tokens = tokens;
        self
    }

    /// Export row cap.
    #[must_use]
    pub fn max_export_rows(mut self, n: u64) -> Self {
        self.state.max_export_rows = n;
        self
    }

    /// Control request timeout.
    #[must_use]
    pub fn control_timeout(mut self, t: Duration) -> Self {
        self.state.control_timeout = t;
        self
    }

    /// Sink consumer whose state is reported.
    #[must_use]
    pub fn consumer(mut self, name: &str) -> Self {
        self.state.consumer = name.to_string();
        self
    }

    /// Connects to NATS in the background.
    #[must_use]
    pub fn nats(self, cfg: ntpscope_bus::NatsConfig) -> Self {
        state::connect_bus_in_background(cfg, self.state.bus.clone());
        self
    }

    /// Longest a request may take until its response starts.
    #[must_use]
    pub fn request_timeout(mut self, t: Duration) -> Self {
        self.state.request_timeout = t;
        self
    }

    /// The public base URL listed in the OpenAPI document (behind a proxy, say).
    #[must_use]
    pub fn public_url(mut self, url: Option<String>) -> Self {
        self.state.public_url = url;
        self
    }

    /// The state.
    pub fn build(self) -> AppState {
        self.state
    }
}

/// Runs the API until `shutdown` resolves.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    tokio::pin!(shutdown);
    let db = tokio::select! {
        db = open_database_waiting(&config.database_url, config.schema_wait) => db?,
        () = &mut shutdown => return Ok(()),
    };
    let tokens = Arc::new(Tokens::new(&config.tokens, config.protect_reads, config.protect_export));
    if !tokens.configured() {
        tracing::warn!(message = "No API token configured: cleanup and capture control are refused (401).");
    }
    agents::set_stale_after(config.stale_after);
    let state = AppStateBuilder::new(db)
        .tokens_from(tokens)
        .max_export_rows(config.max_export_rows)
        .control_timeout(config.control_timeout)
        .consumer(&config.consumer)
        .public_url(config.public_url.clone())
        .request_timeout(config.request_timeout)
        .nats(config.nats.clone())
        .build();
    let acceptor = TcpListener::bind(config.listen).into_acceptor().await?;
    tracing::info!(message = "API listening.", address = %config.listen, docs = %format!("http://{}/docs", config.listen));
    poem::Server::new_with_acceptor(acceptor).run_with_graceful_shutdown(app(state), shutdown, Some(Duration::from_secs(10))).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The SQLite URL of the database file in `dir`, created when `create`.
    fn sqlite_url(dir: &tempfile::TempDir, create: bool) -> String {
        format!("sqlite://{}?mode={}", dir.path().join("ntp_clients.db").display(), if create { "rwc" } else { "rw" })
    }

    #[tokio::test]
    async fn the_api_waits_while_the_sink_creates_and_migrates_the_database() {
        use migration::MigratorTrait as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let url = sqlite_url(&dir, false);
        // No file yet, and no wait: the error says so at once.
        let err = open_database_waiting(&url, Duration::ZERO).await.expect_err("no file");
        assert!(matches!(&err, SchemaError::Unreachable(m) if m.contains("unable to open")), "{err}");
        // The sink has created the file, then the migrator's table, but applied nothing yet.
        let sink = Database::connect(sqlite_url(&dir, true)).await.expect("create");
        let err = open_database(&url).await.expect_err("no tables");
        assert!(matches!(err, SchemaError::Missing(_)), "{err}");
        sink.execute_unprepared("CREATE TABLE seaql_migrations (version TEXT PRIMARY KEY, applied_at BIGINT NOT NULL)")
            .await
            .expect("migrations table");
        let err = open_database(&url).await.expect_err("no migration applied");
        assert!(matches!(err, SchemaError::Missing(_)), "{err}");
        // The sink has applied the first migration only (each commits on its own).
        migration::Migrator::up(&sink, Some(1)).await.expect("first migration");
        let err = open_database(&url).await.expect_err("older schema");
        assert!(matches!(&err, SchemaError::Older { found } if found == "m20261126_000001_create_ntp_clients"), "{err}");
        assert!(err.may_come_right());
        // An API waiting meanwhile opens the database once the sink has finished migrating.
        let waiting = tokio::spawn({
            let url = url.clone();
            async move { open_database_waiting(&url, Duration::from_secs(30)).await }
        });
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(!waiting.is_finished(), "the API did not wait for the migration");
        migration::Migrator::up(&sink, None).await.expect("remaining migrations");
        let db = tokio::time::timeout(Duration::from_secs(10), waiting).await.expect("in time").expect("task");
        assert!(db.is_ok(), "{:?}", db.err());
        // Once migrated, no wait is needed.
        let db = open_database_waiting(&url, Duration::ZERO).await;
        assert!(db.is_ok(), "{:?}", db.err());
    }

    /// The error of opening `url` with a wait of 60 s, which must come within 5 s: waiting cannot help.
    async fn error_without_waiting(url: &str) -> SchemaError {
        tokio::time::timeout(Duration::from_secs(5), open_database_waiting(url, Duration::from_secs(60)))
            .await
            .expect("it waited for a database that cannot come right")
            .expect_err("the open succeeded")
    }

    #[tokio::test]
    async fn a_postgres_database_that_does_not_exist_fails_without_waiting() {
        let base = std::env::var("NTPSCOPE_TEST_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        let url = format!("{}/ntpscope_no_such_database", base.rsplit_once('/').map_or(base.as_str(), |(server, _)| server));
        let err = error_without_waiting(&url).await;
        assert!(matches!(&err, SchemaError::Refused(m) if m.contains("does not exist")), "{err}");
    }

    #[tokio::test]
    async fn a_file_that_is_not_a_database_fails_without_waiting() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("ntp_clients.db"), vec![b'x'; 8192]).expect("garbage file");
        let err = error_without_waiting(&sqlite_url(&dir, false)).await;
        assert!(matches!(&err, SchemaError::Refused(m) if m.contains("not a database")), "{err}");
    }

    #[tokio::test]
    async fn a_schema_the_api_does_not_know_fails_without_waiting() {
        use migration::MigratorTrait as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let sink = Database::connect(sqlite_url(&dir, true)).await.expect("create");
        migration::Migrator::up(&sink, None).await.expect("migrations");
        sink.execute_unprepared("INSERT INTO seaql_migrations (version, applied_at) VALUES ('m20991231_000001_from_the_future', 0)")
            .await
            .expect("a newer migration");
        let err = error_without_waiting(&sqlite_url(&dir, false)).await;
        assert!(matches!(&err, SchemaError::Unknown { found } if found == "m20991231_000001_from_the_future"), "{err}");
        assert!(err.to_string().contains("upgrade the API"), "{err}");
    }

    #[tokio::test]
    async fn a_migrations_table_the_api_cannot_read_fails_without_waiting() {
        // SQLite: a table of that name but of another shape.
        let dir = tempfile::tempdir().expect("tempdir");
        let other = Database::connect(sqlite_url(&dir, true)).await.expect("create");
        other.execute_unprepared("CREATE TABLE seaql_migrations (name TEXT)").await.expect("a table of another shape");
        let err = error_without_waiting(&sqlite_url(&dir, false)).await;
        assert!(matches!(&err, SchemaError::Unreadable(m) if m.contains("no such column")), "{err}");

        // PostgreSQL: a role without the right to read the table.
        let base = std::env::var("NTPSCOPE_TEST_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        let admin = Database::connect(&base).await.expect("PostgreSQL");
        let name = format!("ntpscope_noread_{}", std::process::id());
        admin
            .execute_unprepared(&format!(
                "DROP SCHEMA IF EXISTS {name} CASCADE; CREATE SCHEMA {name}; \
                 CREATE TABLE {name}.seaql_migrations (version TEXT PRIMARY KEY, applied_at BIGINT NOT NULL); \
                 DO $$ BEGIN CREATE ROLE {name} LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$; \
                 GRANT USAGE ON SCHEMA {name} TO {name};"
            ))
            .await
            .expect("schema and role");
        let (scheme_user, server) = base.split_once('@').expect("user@server in the URL");
        let scheme = scheme_user.split_once("//").map_or("postgres:", |(s, _)| s);
        let sep = if server.contains('?') { '&' } else { '?' };
        let url = format!("{scheme}//{name}@{server}{sep}options=-c%20search_path%3D{name}");
        let err = error_without_waiting(&url).await;
        admin.execute_unprepared(&format!("DROP SCHEMA {name} CASCADE; DROP OWNED BY {name}; DROP ROLE {name}")).await.expect("clean up");
        assert!(matches!(&err, SchemaError::Unreadable(m) if m.contains("permission denied")), "{err}");
        assert!(err.to_string().starts_with("cannot read the database's migrations table"), "{err}");
    }

    #[tokio::test]
    async fn a_slow_response_becomes_a_json_504() {
        let slow = async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok::<_, poem::Error>("late")
        };
        let resp = within(Duration::from_millis(20), slow).await.expect("response");
        assert_eq!(resp.status(), poem::http::StatusCode::GATEWAY_TIMEOUT);
        let body: serde_json::Value = serde_json::from_str(&resp.into_body().into_string().await.expect("body")).expect("JSON");
        assert_eq!(body["error"]["status"], 504, "{body}");
        let fast = within(Duration::from_secs(5), async { Ok::<_, poem::Error>("on time") }).await.expect("response");
        assert_eq!(fast.status(), poem::http::StatusCode::OK);
    }
}
