//! The API's request and response types: the HTTP contract (`openapi.yaml`).
//!
//! These are separate from the database entities and the wire records, and converted explicitly:
//! changing the store or the bus never changes the contract by accident. Times are RFC 3339 with
//! nanoseconds; durations are seconds.

use entity::ntp_clients;
use ntp_wire::time::format_rfc3339;
use poem_openapi::{Enum, Object};

/// One client as seen by one capture interface of one host (a row of the seed's `ntp_clients`).
#[derive(Debug, Clone, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct ClientRecord {
    /// Row id.
    pub id: i64,
    /// Capture host (agent id).
    pub host: String,
    /// Capture interface.
    pub interface_name: String,
    /// Client address.
    pub client_ip: String,
    /// Client port of the newest session.
    pub client_port: Option<i32>,
    /// Server address of the newest session.
    pub server_ip: Option<String>,
    /// Server port of the newest session.
    pub server_port: Option<i32>,
    /// VLAN id of the newest session.
    pub vlan_id: Option<i32>,
    /// NTP version of the newest response (or request).
    pub ntp_version: Option<i32>,
    /// Stratum the server answered with.
    pub stratum: Option<i32>,
    /// Precision exponent.
    pub precision: Option<i32>,
    /// Root delay, seconds.
    pub root_delay: Option<f64>,
    /// Root dispersion, seconds.
    pub root_dispersion: Option<f64>,
    /// Reference id.
    pub reference_id: Option<String>,
    /// Leap indicator.
    pub leap_indicator: Option<i32>,
    /// Poll exponent.
    pub poll_interval: Option<i32>,
    /// Reference timestamp.
    pub reference_timestamp: Option<String>,
    /// Origin timestamp (T1 echoed).
    pub originate_timestamp: Option<String>,
    /// Receive timestamp (T2).
    pub receive_timestamp: Option<String>,
    /// Transmit timestamp (T3).
    pub transmit_timestamp: Option<String>,
    /// T2 − T1 of the newest session, seconds.
    pub client_to_server_latency: Option<f64>,
    /// T3 − T2 of the newest session, seconds.
    pub server_processing_time: Option<f64>,
    /// Wire turnaround of the newest session, seconds.
    pub total_process_time: Option<f64>,
    /// NTP payload length of the newest packet.
    pub packet_length: Option<i32>,
    /// Request capture time of the newest session.
    pub session_timestamp: Option<String>,
    /// First capture time.
    pub first_seen: String,
    /// Last capture time.
    pub last_seen: String,
    /// Sessions (answered + unanswered).
    pub session_count: i64,
    /// Answered sessions.
    pub answered_count: i64,
    /// Unanswered sessions.
    pub unanswered_count: i64,
    /// Kiss-o'-death responses.
    pub kod_count: i64,
    /// Newest kiss code sent to the client.
    pub last_kiss_code: Option<String>,
    /// Request capture time of the session answered with `last_kiss_code` (absent on rows stored
    /// before ntpscope kept it).
    pub last_kiss_at: Option<String>,
    /// Retransmitted requests.
    pub retransmit_count: i64,
    /// Interleaved replies.
    pub interleaved_count: i64,
    /// Requests with a randomised T1.
    pub t1_randomized_count: i64,
    /// The newest request had a randomised T1.
    pub t1_randomized: bool,
    /// Sessions using NTS.
    pub nts_count: i64,
    /// Sessions with extension fields.
    pub extension_count: i64,
    /// Sessions with a legacy MAC.
    pub mac_count: i64,
    /// Non-session packets (symmetric, broadcast, control, private).
    pub observation_count: i64,
    /// Control (mode 6) packets.
    pub control_count: i64,
    /// Private (mode 7) packets.
    pub private_count: i64,
    /// Monlist queries or replies.
    pub monlist_count: i64,
    /// Mode of the newest packet.
    pub last_mode: Option<i32>,
    /// Client-to-server latency over all sessions.
    pub client_to_server_latency_stats: MetricStats,
    /// Server processing time over all sessions.
    pub server_processing_time_stats: MetricStats,
    /// Wire turnaround over all sessions.
    pub total_process_time_stats: MetricStats,
    /// Row creation.
    pub created_at: String,
    /// Last update.
    pub updated_at: String,
}

/// Count, average, minimum and maximum of a metric, seconds.
#[derive(Debug, Clone, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct MetricStats {
    /// Values.
    pub count: i64,
    /// Average (exact: sum / count).
    pub avg: Option<f64>,
    /// Minimum.
    pub min: Option<f64>,
    /// Maximum.
    pub max: Option<f64>,
}

impl MetricStats {
    /// From stored count, sum, min, max.
    pub fn new(count: i64, sum: f64, min: Option<f64>, max: Option<f64>) -> Self {
        Self { count, avg: Self::average(count, sum), min, max }
    }

    /// The exact average of a stored count and sum (none of no values).
    pub fn average(count: i64, sum: f64) -> Option<f64> {
        (count > 0).then(|| sum / count as f64)
    }
}

fn ts(v: Option<i64>) -> Option<String> {
    v.map(format_rfc3339)
}

impl From<ntp_clients::Model> for ClientRecord {
    fn from(m: ntp_clients::Model) -> Self {
        Self {
            id: m.id,
            host: m.host,
            interface_name: m.interface_name,
            client_ip: m.client_ip,
            client_port: m.client_port,
            server_ip: m.server_ip,
            server_port: m.server_port,
            vlan_id: m.vlan_id,
            ntp_version: m.ntp_version,
            stratum: m.stratum,
            precision: m.precision,
            root_delay: m.root_delay,
            root_dispersion: m.root_dispersion,
            reference_id: m.reference_id,
            leap_indicator: m.leap_indicator,
            poll_interval: m.poll_interval,
            reference_timestamp: ts(m.reference_timestamp),
            originate_timestamp: ts(m.originate_timestamp),
            receive_timestamp: ts(m.receive_timestamp),
            transmit_timestamp: ts(m.transmit_timestamp),
            client_to_server_latency: m.client_to_server_latency,
            server_processing_time: m.server_processing_time,
            total_process_time: m.total_process_time,
            packet_length: m.packet_length,
            session_timestamp: ts(m.session_timestamp),
            first_seen: format_rfc3339(m.first_seen),
            last_seen: format_rfc3339(m.last_seen),
            session_count: m.session_count,
            answered_count: m.answered_count,
            unanswered_count: m.unanswered_count,
            kod_count: m.kod_count,
            last_kiss_code: m.last_kiss_code,
            last_kiss_at: ts(m.last_kiss_at),
            retransmit_count: m.retransmit_count,
            interleaved_count: m.interleaved_count,
            t1_randomized_count: m.t1_randomized_count,
            t1_randomized: m.t1_randomized,
            nts_count: m.nts_count,
            extension_count: m.extension_count,
            mac_count: m.mac_count,
            observation_count: m.observation_count,
            control_count: m.control_count,
            private_count: m.private_count,
            monlist_count: m.monlist_count,
            last_mode: m.last_mode,
            client_to_server_latency_stats: MetricStats::new(m.latency_count, m.latency_sum, m.latency_min, m.latency_max),
            server_processing_time_stats: MetricStats::new(m.processing_count, m.processing_sum, m.processing_min, m.processing_max),
            total_process_time_stats: MetricStats::new(m.turnaround_count, m.turnaround_sum, m.turnaround_min, m.turnaround_max),
            created_at: format_rfc3339(m.created_at),
            updated_at: format_rfc3339(m.updated_at),
        }
    }
}

/// Sort keys of client lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum, Default)]
#[oai(rename_all = "snake_case")]
pub enum SortKey {
    /// Last capture time (default).
    #[default]
    LastSeen,
    /// First capture time.
    FirstSeen,
    /// Sessions.
    SessionCount,
    /// Unanswered sessions.
    UnansweredCount,
    /// Kiss-o'-death responses.
    KodCount,
    /// Address (numeric order).
    ClientIp,
    /// Average client-to-server latency.
    AvgLatency,
    /// Average server processing time.
    AvgProcessingTime,
}

impl SortKey {
    /// The name in the contract (and in cursors).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::LastSeen => "last_seen",
            Self::FirstSeen => "first_seen",
            Self::SessionCount => "session_count",
            Self::UnansweredCount => "unanswered_count",
            Self::KodCount => "kod_count",
            Self::ClientIp => "client_ip",
            Self::AvgLatency => "avg_latency",
            Self::AvgProcessingTime => "avg_processing_time",
        }
    }
}

/// Sort direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum, Default)]
#[oai(rename_all = "lowercase")]
pub enum SortOrder {
    /// Ascending.
    Asc,
    /// Descending (default).
    #[default]
    Desc,
}

impl SortOrder {
    /// The name in the contract (and in cursors).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Asc => "asc",
            Self::Desc => "desc",
        }
    }
}

/// A page of clients.
#[derive(Debug, Clone, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct ClientPage {
    /// The clients.
    pub clients: Vec<ClientRecord>,
    /// Page number (1-based; with a cursor, the page reached by following cursors is unknown: 0).
    pub page: u32,
    /// Page size.
    pub page_size: u32,
    /// Matching clients; exact when `total_exact`, otherwise a lower bound.
    pub total: u64,
    /// Whether `total` is exact (large filtered counts are capped rather than scanned).
    pub total_exact: bool,
    /// Pages of `page_size` for `total`.
    pub pages: u64,
    /// Pass as `cursor` for the next page (keyset paging: constant cost at any depth).
    pub next_cursor: Option<String>,
    /// Sort key used.
    pub sort: SortKey,
    /// Order used.
    pub order: SortOrder,
}

/// Every client row of one address, across hosts and interfaces.
#[derive(Debug, Clone, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct ClientDetail {
    /// The address as given, canonicalised.
    pub client_ip: String,
    /// One row per host and interface that saw it.
    pub records: Vec<ClientRecord>,
    /// Sessions over all rows.
    pub total_sessions: i64,
    /// First capture time over all rows.
    pub first_seen: String,
    /// Last capture time over all rows.
    pub last_seen: String,
}

/// Filters shared by list, search and export.
#[derive(Debug, Clone, Default, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct Filters {
    /// Exact client addresses (any textual form).
    #[oai(default, validator(max_items = 1000))]
    pub client_ips: Vec<String>,
    /// Interfaces.
    #[oai(default, validator(max_items = 1000))]
    pub interface_names: Vec<String>,
    /// Hosts (agent ids).
    #[oai(default, validator(max_items = 1000))]
    pub hosts: Vec<String>,
    /// Address prefix, e.g. `198.18.` (the seed's `search_ip`).
    #[oai(validator(max_length = 64))]
    pub search_ip: Option<String>,
    /// CIDR block, e.g. `198.18.0.0/16` or `2001:db8::/32`.
    #[oai(validator(max_length = 64))]
    pub cidr: Option<String>,
    /// Last seen at or after (RFC 3339).
    #[oai(validator(max_length = 40))]
    pub since: Option<String>,
    /// Last seen before (RFC 3339).
    #[oai(validator(max_length = 40))]
    pub until: Option<String>,
    /// NTP version of the newest session.
    #[oai(validator(minimum(value = "1"), maximum(value = "4")))]
    pub ntp_version: Option<i32>,
    /// At least this many sessions.
    #[oai(validator(minimum(value = "0")))]
    pub min_sessions: Option<i64>,
    /// Only clients that were (true) or were never (false) sent a kiss-o'-death.
    pub has_kod: Option<bool>,
    /// Only clients with (true) or without (false) unanswered requests.
    pub has_unanswered: Option<bool>,
}

/// Paging of a search.
#[derive(Debug, Clone, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct Pagination {
    /// Page number, 1-based.
    #[oai(default = "one", validator(minimum(value = "1"), maximum(value = "1000000")))]
    pub page: u32,
    /// Page size.
    #[oai(default = "fifty", validator(minimum(value = "1"), maximum(value = "1000")))]
    pub page_size: u32,
    /// Cursor from a previous page (wins over `page`).
    #[oai(validator(max_length = 512))]
    pub cursor: Option<String>,
}

fn one() -> u32 {
    1
}

fn fifty() -> u32 {
    50
}

impl Default for Pagination {
    fn default() -> Self {
        Self { page: 1, page_size: 50, cursor: None }
    }
}

/// Body of `POST /api/ntp/history/search` (the seed's body, extended).
#[derive(Debug, Clone, Default, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct SearchRequest {
    /// Filters.
    #[oai(default)]
    pub filters: Filters,
    /// Paging.
    #[oai(default)]
    pub pagination: Pagination,
    /// Sort key.
    #[oai(default)]
    pub sort: SortKey,
    /// Sort order.
    #[oai(default)]
    pub order: SortOrder,
}

/// Export formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum, Default)]
#[oai(rename_all = "lowercase")]
pub enum ExportFormat {
    /// One JSON array.
    #[default]
    Json,
    /// Comma-separated values (RFC 4180, UTF-8 with BOM, formulas neutralised).
    Csv,
    /// One JSON object per line.
    Ndjson,
}

/// Body of `POST /api/ntp/history/export`.
#[derive(Debug, Clone, Default, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct ExportRequest {
    /// Format.
    #[oai(default)]
    pub format: ExportFormat,
    /// Most rows (capped by the server's `--max-export-rows`).
    #[oai(validator(minimum(value = "1")))]
    pub limit: Option<u64>,
    /// Filters.
    #[oai(default)]
    pub filters: Filters,
    /// Sort key.
    #[oai(default)]
    pub sort: SortKey,
    /// Sort order.
    #[oai(default)]
    pub order: SortOrder,
}

/// Body of `POST /api/ntp/history/cleanup`: one of the two cut-offs.
#[derive(Debug, Clone, Default, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct CleanupRequest {
    /// Delete clients last seen more than this many days ago.
    #[oai(validator(minimum(value = "0"), maximum(value = "36500")))]
    pub older_than_days: Option<f64>,
    /// Delete clients last seen before this time (RFC 3339).
    #[oai(validator(max_length = 40))]
    pub before: Option<String>,
}

/// Result of a cleanup.
#[derive(Debug, Clone, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct CleanupResult {
    /// Rows deleted.
    pub deleted: u64,
    /// The cut-off used.
    pub cutoff: String,
}

/// Per host and interface statistics.
#[derive(Debug, Clone, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct InterfaceStatistics {
    /// Host (agent id).
    pub host: String,
    /// Interface.
    pub interface_name: String,
    /// Distinct clients.
    pub clients: i64,
    /// Sessions.
    pub sessions: i64,
    /// Answered sessions.
    pub answered: i64,
    /// Unanswered sessions.
    pub unanswered: i64,
    /// Kiss-o'-death responses.
    pub kod: i64,
    /// Observations (non-session packets).
    pub observations: i64,
    /// Client-to-server latency.
    pub client_to_server_latency: MetricStats,
    /// Server processing time.
    pub server_processing_time: MetricStats,
    /// Wire turnaround.
    pub total_process_time: MetricStats,
    /// First activity.
    pub first_seen: Option<String>,
    /// Last activity.
    pub last_seen: Option<String>,
    /// Live capture state reported by the agent (`running`, `stopped`, `unknown`, …).
    pub capture_state: String,
    /// Packets the kernel dropped (libpcap `ps_drop`).
    pub pcap_dropped: Option<u64>,
    /// Packets the interface dropped (libpcap `ps_ifdrop`).
    pub pcap_if_dropped: Option<u64>,
}

/// Response of the interface statistics endpoint.
#[derive(Debug, Clone, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct InterfaceStatisticsList {
    /// One entry per host and interface.
    pub interfaces: Vec<InterfaceStatistics>,
    /// When the per-interface figures were computed (they are served as computed for a few
    /// seconds, and while they are recomputed; longer on large tables). The agents' live state
    /// is at most a few seconds old.
    pub computed_at: String,
}

/// The sink's counters (seed names) and state.
#[derive(Debug, Clone, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct SinkStatistics {
    /// Durable consumer name.
    pub consumer: String,
    /// Records received from the bus.
    pub total_received: i64,
    /// Records applied to the database.
    pub total_processed: i64,
    /// Consumer pending + acknowledgement-pending messages (last known).
    pub queue_size: i64,
    /// Messages set aside as undecodable or invalid (dead-lettered); failed write attempts are
    /// counted apart, as `failed_attempts`.
    pub processing_errors: i64,
    /// Rows inserted.
    pub total_inserted: i64,
    /// Rows updated.
    pub total_updated: i64,
    /// Batches committed.
    pub batches: i64,
    /// Messages skipped as already applied.
    pub duplicates_skipped: i64,
    /// Messages dead-lettered.
    pub dead_lettered: i64,
    /// Highest stream sequence applied.
    pub last_sequence: i64,
    /// Last commit.
    pub last_commit_at: Option<String>,
    /// Seconds between the newest record's hand-over to NATS and its commit, at the last commit.
    pub lag_seconds: Option<f64>,
    /// Whether the sink reported recently: its database row (written by every batch, and every
    /// `--db-heartbeat-interval` by an idle sink) or its status on the bus.
    pub alive: bool,
    /// Failed batch attempts (each was retried): from the sink's status on the bus when it is
    /// fresh, else from its database row, which counts a failure once a later batch commits.
    pub failed_attempts: Option<i64>,
    /// While database writes fail: the last error (from the sink's status on the bus).
    pub failing: Option<String>,
    /// When the current run of write failures began.
    pub failing_since: Option<String>,
    /// Size of the SQLite database's write-ahead log file, bytes, as the sink last found it
    /// (from its status on the bus; absent on PostgreSQL). It stays under twice the checkpoint
    /// size (1 GiB at 8 KiB pages) unless readers keep the checkpoints from finishing.
    pub wal_bytes: Option<i64>,
}

/// One agent's publisher and capture counters.
#[derive(Debug, Clone, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct AgentStatistics {
    /// Agent id.
    pub agent: String,
    /// Agent version.
    pub version: String,
    /// Whether its status is fresh.
    pub online: bool,
    /// Last status update.
    pub updated_at: String,
    /// Publisher counters (messages/records acknowledged, retries, buffer use, drops).
    pub publisher: std::collections::BTreeMap<String, u64>,
    /// Capture sources.
    pub interfaces: Vec<AgentInterfaceCounters>,
}

/// One capture source of an agent.
#[derive(Debug, Clone, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct AgentInterfaceCounters {
    /// Interface.
    pub name: String,
    /// `running`, `finished`, `failed: …`.
    pub state: String,
    /// libpcap drops.
    pub pcap_dropped: u64,
    /// Interface drops.
    pub pcap_if_dropped: u64,
    /// Records dropped because the output could not keep up.
    pub records_dropped: u64,
    /// Core counters.
    pub counters: std::collections::BTreeMap<String, u64>,
}

/// Stream and consumer state from JetStream.
#[derive(Debug, Clone, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct StreamStatistics {
    /// Stream name.
    pub stream: String,
    /// Messages stored.
    pub messages: u64,
    /// Bytes stored.
    pub bytes: u64,
    /// First sequence.
    pub first_sequence: u64,
    /// Last sequence.
    pub last_sequence: u64,
    /// Consumer messages not yet delivered.
    pub consumer_pending: Option<u64>,
    /// Consumer messages delivered, not acknowledged.
    pub consumer_ack_pending: Option<u64>,
    /// Consumer redeliveries.
    pub consumer_redelivered: Option<u64>,
}

/// Response of the service statistics endpoint.
#[derive(Debug, Clone, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct ServiceStatistics {
    /// The sink (from its database row, readable even when it is down).
    pub sink: Option<SinkStatistics>,
    /// JetStream (absent when NATS is unreachable).
    pub stream: Option<StreamStatistics>,
    /// Agents that published a status.
    pub agents: Vec<AgentStatistics>,
    /// Clients stored.
    pub total_clients: u64,
}

/// One component's health.
#[derive(Debug, Clone, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct ComponentHealth {
    /// Component (`database`, `nats`, `stream`, `consumer`, `sink`, `agents`).
    pub name: String,
    /// Whether it is healthy.
    pub ok: bool,
    /// Details or the reason it is not.
    pub detail: String,
}

/// Health report.
#[derive(Debug, Clone, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct Health {
    /// `healthy`, `degraded` (some agents offline while others run, or none running and none
    /// gone silent) or `unhealthy`.
    pub status: String,
    /// Per component.
    pub components: Vec<ComponentHealth>,
    /// Reasons for anything not healthy.
    pub reasons: Vec<String>,
}

/// An interface of an agent's host.
#[derive(Debug, Clone, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct InterfaceState {
    /// Agent id.
    pub agent: String,
    /// Interface.
    pub name: String,
    /// Description.
    pub description: Option<String>,
    /// Addresses.
    pub addresses: Vec<String>,
    /// Capturing now.
    pub capturing: bool,
    /// `running`, `stopped`, `idle`, `failed: …`, or `unknown` (agent offline).
    pub state: String,
    /// Port of the running capture.
    pub port: Option<u16>,
    /// Timeout of the running capture, seconds.
    pub timeout: Option<f64>,
    /// Filter of the running capture.
    pub bpf: Option<String>,
}

/// Every agent's interfaces.
#[derive(Debug, Clone, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct InterfaceList {
    /// Interfaces, by agent.
    pub interfaces: Vec<InterfaceState>,
    /// Agents that answered.
    pub agents_online: Vec<String>,
    /// Agents known from their status but not answering.
    pub agents_offline: Vec<String>,
}

/// Body of the capture start endpoint (the seed's body, extended).
#[derive(Debug, Clone, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct StartCapture {
    /// NTP server port.
    #[oai(default = "default_port", validator(minimum(value = "1"), maximum(value = "65535")))]
    pub port: u32,
    /// Seconds before a request counts as unanswered.
    #[oai(default = "default_timeout", validator(minimum(value = "0", exclusive = true), maximum(value = "3600")))]
    pub timeout: f64,
    /// BPF filter (default: the port, VLAN-tagged traffic and IP fragments).
    #[oai(validator(max_length = 1024))]
    pub bpf: Option<String>,
    /// Agent (optional when only one is connected).
    #[oai(validator(max_length = 253))]
    pub agent: Option<String>,
}

fn default_port() -> u32 {
    123
}

fn default_timeout() -> f64 {
    2.0
}

/// Body of the capture stop endpoint.
#[derive(Debug, Clone, Default, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct StopCapture {
    /// Agent (optional when only one is connected).
    #[oai(validator(max_length = 253))]
    pub agent: Option<String>,
}

/// Result of a start or stop.
#[derive(Debug, Clone, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct CaptureChange {
    /// Agent that carried it out.
    pub agent: String,
    /// The interface's new state.
    pub interface: InterfaceState,
}
