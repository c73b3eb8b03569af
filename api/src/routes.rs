//! The operations: the seed's paths and parameters, extended. Handlers are thin: validate, call
//! `query`/`agents`, map to DTOs.

use poem::web::Data;
use poem_openapi::{
    ApiResponse, OpenApi, Tags,
    param::{Path, Query},
    payload::{Json, PlainText},
};
use sea_orm::EntityTrait;

use crate::{
    agents,
    auth::{ReadAuth, TokenAuth, check_header},
    body::OptionalJson,
    clock,
    dto::{
        AgentInterfaceCounters, AgentStatistics, CaptureChange, CleanupRequest, CleanupResult, ClientDetail, ClientPage, ClientRecord,
        ExportFormat, ExportRequest, Filters, Health, InterfaceList, InterfaceState, InterfaceStatistics, InterfaceStatisticsList,
        MetricStats, SearchRequest, ServiceStatistics, SinkStatistics, SortKey, SortOrder, StartCapture, StopCapture, StreamStatistics,
    },
    error::ApiError,
    export,
    json::{ClientDetailJson, ClientPageJson, ClientPageWriter, JsonBody},
    query,
    state::{AppState, CACHE_TTL},
};

/// Operation groups.
#[derive(Debug, Tags)]
pub enum ApiTags {
    /// Per-client history and statistics.
    History,
    /// Capture control on the agents.
    Interfaces,
}

/// History endpoints.
#[derive(Debug)]
pub struct HistoryApi;

/// Capture-control endpoints.
#[derive(Debug)]
pub struct InterfacesApi;

fn one() -> u32 {
    1
}

fn fifty() -> u32 {
    50
}

/// Export download: one 200 response whose content type follows the requested format, the body
/// streamed, with `Content-Disposition: attachment`. Written by hand because the derive would
/// document three separate 200 responses instead of one with three media types.
pub struct ExportResponse {
    body: poem::Body,
    content_type: &'static str,
    disposition: String,
}

impl std::fmt::Debug for ExportResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExportResponse").field("content_type", &self.content_type).finish_non_exhaustive()
    }
}

impl poem_openapi::ApiResponse for ExportResponse {
    fn meta() -> poem_openapi::registry::MetaResponses {
        use poem_openapi::{
            registry::{MetaHeader, MetaMediaType, MetaResponse, MetaResponses},
            types::Type,
        };
        MetaResponses {
            responses: vec![MetaResponse {
                description: "The export, streamed as a download.",
                status: Some(200),
                status_range: None,
                content: vec![
                    MetaMediaType { content_type: "text/csv; charset=utf-8", schema: String::schema_ref() },
                    MetaMediaType { content_type: "application/x-ndjson", schema: String::schema_ref() },
                    MetaMediaType { content_type: "application/json", schema: <Vec<ClientRecord>>::schema_ref() },
                ],
                headers: vec![MetaHeader {
                    name: "Content-Disposition".into(),
                    description: Some("attachment; filename=\"ntp_clients_<time>.<format>\"".into()),
                    required: true,
                    deprecated: false,
                    schema: String::schema_ref(),
                }],
            }],
        }
    }

    fn register(registry: &mut poem_openapi::registry::Registry) {
        <Vec<ClientRecord> as poem_openapi::types::Type>::register(registry);
    }
}

impl poem::IntoResponse for ExportResponse {
    fn into_response(self) -> poem::Response {
        poem::Response::builder()
            .content_type(self.content_type)
            .header(poem::http::header::CONTENT_DISPOSITION, self.disposition)
            .body(self.body)
    }
}

/// Health: 200 when healthy (or degraded: some agents offline while others run, or every agent
/// stopped cleanly), 503 with the reasons otherwise.
#[derive(Debug, ApiResponse)]
pub enum HealthResponse {
    /// Healthy or degraded.
    #[oai(status = 200)]
    Ok(Json<Health>),
    /// Unhealthy.
    #[oai(status = 503)]
    Unhealthy(Json<Health>),
}

/// Prometheus metrics, with the content type of the text format they follow.
#[derive(Debug, ApiResponse)]
pub enum MetricsResponse {
    /// The metrics, in Prometheus' text exposition format 0.0.4.
    #[oai(status = 200, content_type = "text/plain; version=0.0.4; charset=utf-8")]
    Ok(PlainText<String>),
}

async fn list(
    state: &AppState,
    filters: &Filters,
    sort: SortKey,
    order: SortOrder,
    page: u32,
    page_size: u32,
    cursor: Option<&str>,
) -> Result<JsonBody<ClientPage>, ApiError> {
    let parsed = query::parse(filters)?;
    let offset = if cursor.is_some() { 0 } else { u64::from(page.saturating_sub(1)) * u64::from(page_size) };
    // Room for up to 100 rows at first: a bigger page grows its buffer when its rows arrive.
    let writer = ClientPageWriter::new(usize::try_from(page_size.min(100)).unwrap_or(0));
    let (writer, _, next) = query::page(state, &parsed, sort, order, cursor, offset, u64::from(page_size), writer).await?;
    let (total, exact) = if parsed.is_empty() {
        (state.total_clients().await?, true)
    } else {
        let n = query::capped_count(state, &parsed).await?;
        if n > query::COUNT_CAP { (query::COUNT_CAP, false) } else { (n, true) }
    };
    Ok(writer.finish(&ClientPageJson {
        page: if cursor.is_some() { 0 } else { page },
        page_size,
        total,
        total_exact: exact,
        pages: total.div_ceil(u64::from(page_size)),
        next_cursor: next.as_deref(),
        sort,
        order,
    }))
}

#[OpenApi(prefix_path = "/api/ntp", tag = "ApiTags::History")]
impl HistoryApi {
    /// List clients
    ///
    /// One row per host, interface and client address, newest first by default. Page with
    /// `page`/`page_size` (shallow pages) or with `cursor` (the `next_cursor` of the previous
    /// page: depth adds no cost). The default sort (`last_seen`) and `client_ip` page on an
    /// index, at constant cost at any depth; the other sorts sort the matching rows for every
    /// page, so narrow them with filters on large tables. `total` is exact without filters; with
    /// filters it counts up to 10000 and says when it stopped.
    #[oai(path = "/history/clients", method = "get", operation_id = "list_clients")]
    #[allow(clippy::too_many_arguments)]
    async fn list_clients(
        &self,
        state: Data<&AppState>,
        _auth: ReadAuth,
        /// Page number, 1-based.
        #[oai(default = "one", validator(minimum(value = "1"), maximum(value = "1000000")))]
        page: Query<u32>,
        /// Rows per page.
        #[oai(default = "fifty", validator(minimum(value = "1"), maximum(value = "1000")))]
        page_size: Query<u32>,
        /// Address prefix (the seed's `search_ip`), e.g. `198.18.`.
        #[oai(validator(max_length = 64))]
        search_ip: Query<Option<String>>,
        /// Interface (the seed's `interface_name`).
        #[oai(validator(max_length = 253))]
        interface_name: Query<Option<String>>,
        /// Capture host (agent id).
        #[oai(validator(max_length = 253))]
        host: Query<Option<String>>,
        /// CIDR block, e.g. `198.18.0.0/16` or `2001:db8::/32`.
        #[oai(validator(max_length = 64))]
        cidr: Query<Option<String>>,
        /// Last seen at or after (RFC 3339).
        #[oai(validator(max_length = 40))]
        since: Query<Option<String>>,
        /// Last seen before (RFC 3339).
        #[oai(validator(max_length = 40))]
        until: Query<Option<String>>,
        /// NTP version.
        #[oai(validator(minimum(value = "1"), maximum(value = "4")))]
        ntp_version: Query<Option<i32>>,
        /// At least this many sessions.
        #[oai(validator(minimum(value = "0")))]
        min_sessions: Query<Option<i64>>,
        /// Clients sent (or never sent) a kiss-o'-death.
        has_kod: Query<Option<bool>>,
        /// Clients with (or without) unanswered requests.
        has_unanswered: Query<Option<bool>>,
        /// Sort key.
        #[oai(default)]
        sort: Query<SortKey>,
        /// Sort order.
        #[oai(default)]
        order: Query<SortOrder>,
        /// Cursor from `next_cursor`.
        #[oai(validator(max_length = 512))]
        cursor: Query<Option<String>>,
    ) -> Result<JsonBody<ClientPage>, ApiError> {
        let filters = Filters {
            search_ip: search_ip.0,
            interface_names: interface_name.0.into_iter().collect(),
            hosts: host.0.into_iter().collect(),
            cidr: cidr.0,
            since: since.0,
            until: until.0,
            ntp_version: ntp_version.0,
            min_sessions: min_sessions.0,
            has_kod: has_kod.0,
            has_unanswered: has_unanswered.0,
            ..Filters::default()
        };
        list(&state, &filters, sort.0, order.0, page.0, page_size.0, cursor.0.as_deref()).await
    }

    /// One client
    ///
    /// Every row of an address across hosts and interfaces. Any valid textual form of an IPv4
    /// or IPv6 address is accepted.
    #[oai(path = "/history/clients/:client_ip", method = "get", operation_id = "get_client")]
    async fn get_client(
        &self,
        state: Data<&AppState>,
        _auth: ReadAuth,
        /// Client address.
        #[oai(validator(max_length = 64))]
        client_ip: Path<String>,
    ) -> Result<JsonBody<ClientDetail>, ApiError> {
        let ip = query::canonical_ip("client_ip", &client_ip.0)?.to_string();
        let rows = query::by_ip(&state, &ip).await?;
        if rows.is_empty() {
            return Err(ApiError::not_found(format!("no history for {ip}")));
        }
        Ok(ClientDetailJson { client_ip: &ip, rows: &rows }.to_body())
    }

    /// Search clients
    ///
    /// The seed's body (`filters.client_ips`, `filters.interface_names`, `pagination`) plus
    /// every filter of the list endpoint, the sort and a cursor.
    #[oai(path = "/history/search", method = "post", operation_id = "search_clients")]
    async fn search(&self, state: Data<&AppState>, _auth: ReadAuth, body: Json<SearchRequest>) -> Result<JsonBody<ClientPage>, ApiError> {
        let b = body.0;
        list(&state, &b.filters, b.sort, b.order, b.pagination.page, b.pagination.page_size, b.pagination.cursor.as_deref()).await
    }

    /// Export clients
    ///
    /// Streams matching rows as `json`, `csv` or `ndjson` in constant memory, with a download
    /// file name. Needs a token when the server runs with `--protect-export`.
    #[oai(path = "/history/export", method = "post", operation_id = "export_clients")]
    #[allow(clippy::unused_async)] // poem-openapi operations are async
    async fn export(
        &self,
        state: Data<&AppState>,
        _auth: ReadAuth,
        req: &poem::Request,
        body: Json<ExportRequest>,
    ) -> Result<ExportResponse, ApiError> {
        if state.tokens.protect_export
            && let Err(status) = check_header(req, &state.tokens)
        {
            return Err(ApiError::auth(status, "export"));
        }
        let b = body.0;
        let parsed = query::parse(&b.filters)?;
        let limit = b.limit.unwrap_or(state.max_export_rows).min(state.max_export_rows);
        let ext = export::extension(b.format);
        let stamp = ntp_wire::time::format_rfc3339(clock::wall_ns()).replace([':', '-'], "");
        let stamp = stamp.split('.').next().unwrap_or_default().to_string();
        let disposition = format!("attachment; filename=\"ntp_clients_{stamp}Z.{ext}\"");
        let content_type = match b.format {
            ExportFormat::Csv => "text/csv; charset=utf-8",
            ExportFormat::Ndjson => "application/x-ndjson",
            ExportFormat::Json => "application/json",
        };
        Ok(ExportResponse { body: export::stream(state.clone(), parsed, b.sort, b.order, b.format, limit), content_type, disposition })
    }

    /// Delete old clients
    ///
    /// Deletes rows last seen before the cut-off (`older_than_days`, or `before` as RFC 3339)
    /// and returns how many. Needs a token.
    #[oai(path = "/history/cleanup", method = "post", operation_id = "cleanup")]
    async fn cleanup(&self, state: Data<&AppState>, _auth: TokenAuth, body: Json<CleanupRequest>) -> Result<Json<CleanupResult>, ApiError> {
        let cutoff = match (body.0.older_than_days, body.0.before) {
            (Some(days), None) => clock::wall_ns() - (days * 86_400.0 * 1e9) as i64,
            (None, Some(t)) => ntp_wire::time::parse_rfc3339(&t)
                .ok_or_else(|| ApiError::bad_request("before", format!("{t:?} is not an RFC 3339 date-time")))?,
            (Some(_), Some(_)) => return Err(ApiError::bad_request("older_than_days", "give older_than_days or before, not both")),
            (None, None) => return Err(ApiError::bad_request("older_than_days", "give older_than_days or before")),
        };
        // A task of its own: a client that gives up does not stop the cleanup half-way (its
        // count is logged), and no request timeout applies to this route (`app`). Whether it
        // ends or fails, the next request counts the table and computes the interface
        // aggregates again.
        let (db, total, aggregates) = (state.db.clone(), state.total.clone(), state.aggregates.clone());
        let deleted = tokio::spawn(async move {
            let (_recount, _recompute) = (total.forget_around(), aggregates.forget_around());
            let deleted = query::delete_older_than(&db, cutoff).await;
            match &deleted {
                Ok(n) => tracing::info!(message = "Cleanup.", deleted = n, cutoff = %ntp_wire::time::format_rfc3339(cutoff)),
                Err(e) => tracing::warn!(message = "Cleanup failed.", error = %e, cutoff = %ntp_wire::time::format_rfc3339(cutoff)),
            }
            deleted
        })
        .await
        .map_err(|e| ApiError::internal(&e))??;
        Ok(Json(CleanupResult { deleted, cutoff: ntp_wire::time::format_rfc3339(cutoff) }))
    }

    /// Interface statistics
    ///
    /// Per host and interface: clients, sessions, unanswered, kiss-o'-death, latency metrics,
    /// first and last activity, and the agent's live capture state and pcap drops. Cached for a
    /// few seconds. The per-interface figures read the whole table, so they are recomputed in the
    /// background once they are older than a few seconds or ten times what their last computation
    /// took (about two minutes at 5 M rows), and served as last computed meanwhile.
    #[oai(path = "/history/interfaces/statistics", method = "get", operation_id = "interface_statistics")]
    async fn interface_statistics(&self, state: Data<&AppState>, _auth: ReadAuth) -> Result<Json<InterfaceStatisticsList>, ApiError> {
        interface_statistics(&state).await.map(Json)
    }

    /// Service statistics
    ///
    /// The sink's counters (the seed's names: `total_received`, `total_processed`, `queue_size`,
    /// `processing_errors`, `total_inserted`, `total_updated`), consumer lag, stream state, and
    /// every agent's counters and buffer use.
    #[oai(path = "/history/service/statistics", method = "get", operation_id = "service_statistics")]
    async fn service_statistics(&self, state: Data<&AppState>, _auth: ReadAuth) -> Result<Json<ServiceStatistics>, ApiError> {
        service_statistics(&state).await.map(Json)
    }

    /// Prometheus metrics
    ///
    /// The interface and service statistics in Prometheus' text format (version 0.0.4), for a
    /// scrape job with `metrics_path: /api/ntp/metrics`: per host and interface what the
    /// database holds (`ntpscope_interface_*`), the sink's counters, queue and lag
    /// (`ntpscope_sink_*`), the stream and consumer, and each agent's live status, libpcap drops,
    /// capture and publisher counters (`ntpscope_agent_*`). Every family has its `# HELP`.
    #[oai(path = "/metrics", method = "get", operation_id = "metrics")]
    async fn metrics(&self, state: Data<&AppState>, _auth: ReadAuth) -> Result<MetricsResponse, ApiError> {
        let interfaces = interface_statistics(&state).await?;
        let service = service_statistics(&state).await?;
        Ok(MetricsResponse::Ok(PlainText(crate::metrics::render(&interfaces, &service))))
    }

    /// Health
    ///
    /// Database, NATS, stream, consumer, sink liveness and agents. 200 when healthy (or
    /// degraded: some agents offline while others run, or every agent stopped cleanly), 503
    /// with the reasons otherwise, also when no agent runs and some went silent. The checks run
    /// at most once a second; faster polls get the last report.
    #[oai(path = "/history/health", method = "get", operation_id = "health")]
    async fn health(&self, state: Data<&AppState>) -> HealthResponse {
        let h = state.health().await;
        if h.status == "unhealthy" { HealthResponse::Unhealthy(Json(h)) } else { HealthResponse::Ok(Json(h)) }
    }
}

/// The interface statistics, cached for [`CACHE_TTL`] (and until a cleanup); their aggregates,
/// which read the whole table, come from [`crate::aggregates`].
async fn interface_statistics(state: &AppState) -> Result<InterfaceStatisticsList, ApiError> {
    let now = clock::monotonic();
    let epoch = state.aggregates.epoch();
    let mut cache = state.interface_stats.lock().await;
    if let Some((at, built_from, v)) = &*cache
        && *built_from == epoch
        && now.saturating_duration_since(*at) < CACHE_TTL
    {
        return Ok(v.clone());
    }
    let db = state.db.clone();
    let aggregates = state.aggregates.get(now, async move { query::interface_aggregates(&db).await }).await?;
    let agents = match state.bus().await {
        Some(bus) => agents::agent_statuses(&bus).await,
        None => Vec::new(),
    };
    let interfaces = aggregates
        .rows
        .iter()
        .map(|a| {
            let live = agents
                .iter()
                .find(|s| s.agent == a.host)
                .and_then(|s| s.interfaces.iter().find(|i| i.name == a.interface_name).map(|i| (s, i)));
            let metric = |i: usize| {
                let (count, sum, min, max) = a.metrics[i];
                MetricStats::new(count, sum, min, max)
            };
            InterfaceStatistics {
                host: a.host.clone(),
                interface_name: a.interface_name.clone(),
                clients: a.counts[0],
                sessions: a.counts[1],
                answered: a.counts[2],
                unanswered: a.counts[3],
                kod: a.counts[4],
                observations: a.counts[5],
                client_to_server_latency: metric(0),
                server_processing_time: metric(1),
                total_process_time: metric(2),
                first_seen: a.first_seen.map(ntp_wire::time::format_rfc3339),
                last_seen: a.last_seen.map(ntp_wire::time::format_rfc3339),
                capture_state: match live {
                    Some((s, i)) if agents::is_running(s) => i.state.clone(),
                    Some(_) => "agent offline".into(),
                    None => "unknown".into(),
                },
                pcap_dropped: live.map(|(_, i)| i.pcap_dropped),
                pcap_if_dropped: live.map(|(_, i)| i.pcap_if_dropped),
            }
        })
        .collect();
    let v = InterfaceStatisticsList { interfaces, computed_at: ntp_wire::time::format_rfc3339(aggregates.computed_at_ns) };
    *cache = Some((now, epoch, v.clone()));
    Ok(v)
}

/// The sink's counters, the stream and every agent's status.
async fn service_statistics(state: &AppState) -> Result<ServiceStatistics, ApiError> {
    let row = entity::sink_state::Entity::find_by_id(state.consumer.clone()).one(&state.db).await?;
    let bus = state.bus().await;
    let live = match &bus {
        Some(b) => agents::sink_status(b, &state.consumer).await,
        None => None,
    };
    let sink = row.map(|r| sink_statistics(r, live.as_ref()));
    let (stream, agents) = match &bus {
        Some(b) => (stream_statistics(b, &state.consumer).await, agents::agent_statuses(b).await),
        None => (None, Vec::new()),
    };
    let agents = agents
        .into_iter()
        .map(|s| AgentStatistics {
            online: agents::is_running(&s),
            updated_at: ntp_wire::time::format_rfc3339(s.updated_ns),
            agent: s.agent,
            version: s.version,
            publisher: s.publisher,
            interfaces: s
                .interfaces
                .into_iter()
                .map(|i| AgentInterfaceCounters {
                    name: i.name,
                    state: i.state,
                    pcap_dropped: i.pcap_dropped,
                    pcap_if_dropped: i.pcap_if_dropped,
                    records_dropped: i.records_dropped,
                    counters: i.counters,
                })
                .collect(),
        })
        .collect();
    Ok(ServiceStatistics { sink, stream, agents, total_clients: state.total_clients().await? })
}

/// The sink's persisted counters, with what only its status on the bus knows (failed attempts,
/// a failing database) when that status is fresh.
fn sink_statistics(r: entity::sink_state::Model, live: Option<&ntp_wire::status::SinkStatus>) -> SinkStatistics {
    let live = live.filter(|s| agents::is_fresh(s.updated_ns));
    SinkStatistics {
        // The bus counts a failure at once, the row once a later batch commits.
        failed_attempts: Some(
            live.and_then(|s| s.counters.get("failed_attempts")).map_or(r.failed_attempts, |n| i64::try_from(*n).unwrap_or(i64::MAX)),
        ),
        failing: live.and_then(|s| s.failing.clone()),
        wal_bytes: live.and_then(|s| s.counters.get("wal_bytes")).map(|b| i64::try_from(*b).unwrap_or(i64::MAX)),
        failing_since: live.filter(|s| s.failing.is_some()).map(|s| ntp_wire::time::format_rfc3339(s.failing_since_ns)),
        alive: agents::is_fresh(r.updated_at) || live.is_some(),
        // The bus has the count of this tick; the row's is as old as its last write.
        queue_size: live.and_then(|s| s.counters.get("queue_size")).map_or(r.queue_size, |q| i64::try_from(*q).unwrap_or(i64::MAX)),
        consumer: r.consumer,
        total_received: r.total_received,
        total_processed: r.total_processed,
        processing_errors: r.processing_errors,
        total_inserted: r.total_inserted,
        total_updated: r.total_updated,
        batches: r.batches,
        duplicates_skipped: r.duplicates_skipped,
        dead_lettered: r.dead_lettered,
        last_sequence: r.last_sequence,
        last_commit_at: r.last_commit_at.map(ntp_wire::time::format_rfc3339),
        lag_seconds: r.lag_seconds,
    }
}

async fn stream_statistics(bus: &crate::state::Bus, consumer: &str) -> Option<StreamStatistics> {
    let mut stream = bus.js.get_stream(ntp_wire::subject::STREAM).await.ok()?;
    let info = stream.info().await.ok()?.clone();
    let c = stream.consumer_info(consumer).await.ok();
    Some(StreamStatistics {
        stream: info.config.name,
        messages: info.state.messages,
        bytes: info.state.bytes,
        first_sequence: info.state.first_sequence,
        last_sequence: info.state.last_sequence,
        consumer_pending: c.as_ref().map(|c| c.num_pending),
        consumer_ack_pending: c.as_ref().map(|c| c.num_ack_pending as u64),
        consumer_redelivered: c.as_ref().map(|c| c.num_redelivered as u64),
    })
}

fn interface_state(agent: &str, i: ntp_wire::control::InterfaceInfo) -> InterfaceState {
    InterfaceState {
        agent: agent.to_string(),
        name: i.name,
        description: i.description,
        addresses: i.addresses,
        capturing: i.capturing,
        state: i.state,
        port: i.port,
        timeout: i.timeout,
        bpf: i.bpf,
    }
}

/// The agent a start/stop goes to: the one named, or the only one online.
/// The agent a control request goes to: the one named, else the only running agent, else the
/// only running agent that has the interface (the one capturing on it, or, failing that, the
/// one whose host has it, asked over NATS).
async fn pick_agent(state: &AppState, bus: &crate::state::Bus, named: Option<String>, interface: &str) -> Result<String, ApiError> {
    if let Some(a) = named {
        if a.is_empty() || a.chars().any(char::is_control) {
            return Err(ApiError::bad_request("agent", "invalid agent id"));
        }
        return Ok(a);
    }
    let running: Vec<ntp_wire::status::AgentStatus> = agents::agent_statuses(bus).await.into_iter().filter(agents::is_running).collect();
    let all: Vec<&ntp_wire::status::AgentStatus> = running.iter().collect();
    if all.len() <= 1 {
        return all.first().map(|s| s.agent.clone()).ok_or_else(|| ApiError::not_found("no agent is connected"));
    }
    let capturing: Vec<&ntp_wire::status::AgentStatus> =
        all.iter().copied().filter(|s| s.interfaces.iter().any(|i| i.name == interface)).collect();
    if let [one] = capturing.as_slice() {
        return Ok(one.agent.clone());
    }
    let mut having = Vec::new();
    for s in &all {
        let listed = agents::request(bus, &s.agent, &ntp_wire::control::ControlRequest::List, state.control_timeout).await;
        if let Ok(ntp_wire::control::ControlResponse::Ok { interfaces, .. }) = listed
            && interfaces.iter().any(|i| i.name == interface)
        {
            having.push(s.agent.clone());
        }
    }
    if let [one] = having.as_slice() {
        return Ok(one.clone());
    }
    let all_names: Vec<&str> = all.iter().map(|s| s.agent.as_str()).collect();
    Err(ApiError::bad_request(
        "agent",
        format!(
            "{} agents are connected ({}) and {interface} does not single one out; choose one with `agent`",
            all_names.len(),
            all_names.join(", ")
        ),
    ))
}

async fn bus_or_unavailable(state: &AppState) -> Result<crate::state::Bus, ApiError> {
    state.bus().await.ok_or_else(|| ApiError::unavailable("NATS is not reachable; agents cannot be controlled"))
}

async fn change(state: &AppState, agent: String, name: &str, req: ntp_wire::control::ControlRequest) -> Result<CaptureChange, ApiError> {
    let bus = bus_or_unavailable(state).await?;
    match agents::request(&bus, &agent, &req, state.control_timeout).await? {
        ntp_wire::control::ControlResponse::Ok { agent, interfaces } => {
            let i = interfaces
                .into_iter()
                .find(|i| i.name == name)
                .ok_or_else(|| ApiError::not_found(format!("agent {agent} has no interface {name}")))?;
            Ok(CaptureChange { interface: interface_state(&agent, i), agent })
        }
        ntp_wire::control::ControlResponse::Error { message, .. } => Err(ApiError::bad_gateway(message)),
    }
}

fn validate_interface(name: &str) -> Result<(), ApiError> {
    if name.is_empty() || name.len() > 64 || name.chars().any(|c| c.is_control() || c == '/') {
        return Err(ApiError::bad_request("name", format!("invalid interface name {name:?}")));
    }
    Ok(())
}

#[OpenApi(prefix_path = "/api/ntp", tag = "ApiTags::Interfaces")]
impl InterfacesApi {
    /// Interfaces of every agent
    ///
    /// Asks each agent (request/reply over NATS) for its interfaces and their capture state;
    /// agents that do not answer are listed as offline with their last reported interfaces.
    #[oai(path = "/interfaces", method = "get", operation_id = "list_interfaces")]
    async fn list_interfaces(&self, state: Data<&AppState>, _auth: ReadAuth) -> Result<Json<InterfaceList>, ApiError> {
        let bus = bus_or_unavailable(&state).await?;
        let statuses = agents::agent_statuses(&bus).await;
        let mut out = InterfaceList { interfaces: Vec::new(), agents_online: Vec::new(), agents_offline: Vec::new() };
        for s in statuses {
            let timeout = state.control_timeout.min(std::time::Duration::from_secs(2));
            if let Ok(ntp_wire::control::ControlResponse::Ok { agent, interfaces }) =
                agents::request(&bus, &s.agent, &ntp_wire::control::ControlRequest::List, timeout).await
            {
                out.interfaces.extend(interfaces.into_iter().map(|i| interface_state(&agent, i)));
                out.agents_online.push(agent);
            } else {
                {
                    out.interfaces.extend(s.interfaces.iter().map(|i| InterfaceState {
                        agent: s.agent.clone(),
                        name: i.name.clone(),
                        description: None,
                        addresses: Vec::new(),
                        capturing: false,
                        state: "unknown".into(),
                        port: None,
                        timeout: None,
                        bpf: None,
                    }));
                    out.agents_offline.push(s.agent.clone());
                }
            }
        }
        Ok(Json(out))
    }

    /// Start capture
    ///
    /// Starts capturing on an agent's interface (the seed's `{"port": 123, "timeout": 2.0}`,
    /// plus an optional BPF filter and agent). 404: no such agent or interface; 409: already
    /// capturing; 504: the agent did not answer. Needs a token.
    #[oai(path = "/interfaces/:name/start", method = "post", operation_id = "start_capture")]
    async fn start(
        &self,
        state: Data<&AppState>,
        _auth: TokenAuth,
        /// Interface.
        #[oai(validator(max_length = 64))]
        name: Path<String>,
        body: Json<StartCapture>,
    ) -> Result<Json<CaptureChange>, ApiError> {
        validate_interface(&name.0)?;
        let bus = bus_or_unavailable(&state).await?;
        let b = body.0;
        let agent = pick_agent(&state, &bus, b.agent, &name.0).await?;
        let req = ntp_wire::control::ControlRequest::Start {
            interface: name.0.clone(),
            port: u16::try_from(b.port).map_err(|_| ApiError::bad_request("port", "port must be between 1 and 65535"))?,
            timeout: b.timeout,
            bpf: b.bpf,
        };
        change(&state, agent, &name.0, req).await.map(Json)
    }

    /// Stop capture
    ///
    /// Stops capturing on an agent's interface. The body is optional (the seed's clients send
    /// none): `{"agent": …}` picks the agent when several are connected. 404: no such agent, or
    /// no such interface on it; 409: not capturing; 503: NATS is unreachable; 504: the agent did not answer. Needs a
    /// token.
    #[oai(path = "/interfaces/:name/stop", method = "post", operation_id = "stop_capture")]
    async fn stop(
        &self,
        state: Data<&AppState>,
        _auth: TokenAuth,
        /// Interface.
        #[oai(validator(max_length = 64))]
        name: Path<String>,
        body: OptionalJson<StopCapture>,
    ) -> Result<Json<CaptureChange>, ApiError> {
        validate_interface(&name.0)?;
        let bus = bus_or_unavailable(&state).await?;
        let agent = pick_agent(&state, &bus, body.0.and_then(|b| b.agent), &name.0).await?;
        change(&state, agent, &name.0, ntp_wire::control::ControlRequest::Stop { interface: name.0.clone() }).await.map(Json)
    }
}
