//! A client row as the writers read it: every column of [`Model`], its text borrowed.
//!
//! The page and export writers (`json`, `export`) take a [`ClientRow`], so the SQLite reader can
//! hand them each row straight from the statement, its text still in SQLite's buffers
//! ([`crate::reader::SqliteReader::write_rows`]), instead of copying every row into an owned
//! [`Model`] first: of the quarter of a page's CPU spent reading its rows, the copies and
//! their frees were about a fifth (docs/performance.md). Rows that arrive as models (PostgreSQL, lookups) are borrowed with
//! `From<&Model>`; a borrowed row becomes an owned one with `From<ClientRow>` (the reader's one
//! position-by-position decoding serves both).

use entity::ntp_clients::Model;

/// Where the rows of a read go, one at a time as they are read (a page's JSON, an export's
/// chunk): handed to the reader and given back with the rows in it.
pub trait WriteRow: Send + 'static {
    /// Takes the next row.
    fn row(&mut self, r: &ClientRow<'_>);
}

/// One `ntp_clients` row with its text and bytes borrowed: the fields and types of [`Model`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ClientRow<'a> {
    /// Surrogate key.
    pub id: i64,
    /// Agent id of the capture host.
    pub host: &'a str,
    /// Capture interface.
    pub interface_name: &'a str,
    /// Client address (canonical text).
    pub client_ip: &'a str,
    /// Client address as 16 bytes, IPv4 mapped into IPv6 (for CIDR ranges and numeric order).
    pub client_ip_bin: Option<&'a [u8]>,
    /// Client port of the newest session.
    pub client_port: Option<i32>,
    /// Server address of the newest session.
    pub server_ip: Option<&'a str>,
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
    /// Reference id as text.
    pub reference_id: Option<&'a str>,
    /// Leap indicator.
    pub leap_indicator: Option<i32>,
    /// Poll exponent.
    pub poll_interval: Option<i32>,
    /// Reference timestamp, Unix ns.
    pub reference_timestamp: Option<i64>,
    /// Origin timestamp (T1 echoed), Unix ns.
    pub originate_timestamp: Option<i64>,
    /// Receive timestamp (T2), Unix ns.
    pub receive_timestamp: Option<i64>,
    /// Transmit timestamp (T3), Unix ns.
    pub transmit_timestamp: Option<i64>,
    /// T2 − T1 of the newest session, seconds.
    pub client_to_server_latency: Option<f64>,
    /// T3 − T2 of the newest session, seconds.
    pub server_processing_time: Option<f64>,
    /// Wire turnaround of the newest session, seconds.
    pub total_process_time: Option<f64>,
    /// NTP payload length of the newest packet.
    pub packet_length: Option<i32>,
    /// Request capture time of the newest session, Unix ns.
    pub session_timestamp: Option<i64>,
    /// First capture time, Unix ns.
    pub first_seen: i64,
    /// Last capture time, Unix ns.
    pub last_seen: i64,
    /// Newest kiss code sent to this client.
    pub last_kiss_code: Option<&'a str>,
    /// Request capture time of the session answered with `last_kiss_code`, Unix ns (`NULL` on
    /// rows written before migration m20261204_000003, and on rows never kissed).
    pub last_kiss_at: Option<i64>,
    /// Mode of the newest packet.
    pub last_mode: Option<i32>,
    /// The newest request had a randomised T1.
    pub t1_randomized: bool,
    /// Additive counter.
    pub session_count: i64,
    /// Additive counter.
    pub answered_count: i64,
    /// Additive counter.
    pub unanswered_count: i64,
    /// Additive counter.
    pub kod_count: i64,
    /// Additive counter.
    pub retransmit_count: i64,
    /// Additive counter.
    pub interleaved_count: i64,
    /// Additive counter.
    pub t1_randomized_count: i64,
    /// Additive counter.
    pub nts_count: i64,
    /// Additive counter.
    pub extension_count: i64,
    /// Additive counter.
    pub mac_count: i64,
    /// Additive counter.
    pub observation_count: i64,
    /// Additive counter.
    pub symmetric_count: i64,
    /// Additive counter.
    pub broadcast_count: i64,
    /// Additive counter.
    pub control_count: i64,
    /// Additive counter.
    pub private_count: i64,
    /// Additive counter.
    pub monlist_count: i64,
    /// Sessions with a latency value.
    pub latency_count: i64,
    /// Sum of latency values, seconds.
    pub latency_sum: f64,
    /// Smallest latency, seconds.
    pub latency_min: Option<f64>,
    /// Largest latency, seconds.
    pub latency_max: Option<f64>,
    /// Sessions with a processing value.
    pub processing_count: i64,
    /// Sum of processing values, seconds.
    pub processing_sum: f64,
    /// Smallest processing, seconds.
    pub processing_min: Option<f64>,
    /// Largest processing, seconds.
    pub processing_max: Option<f64>,
    /// Sessions with a turnaround value.
    pub turnaround_count: i64,
    /// Sum of turnaround values, seconds.
    pub turnaround_sum: f64,
    /// Smallest turnaround, seconds.
    pub turnaround_min: Option<f64>,
    /// Largest turnaround, seconds.
    pub turnaround_max: Option<f64>,
    /// Row creation, Unix ns.
    pub created_at: i64,
    /// Last update, Unix ns.
    pub updated_at: i64,
}

impl<'a> From<&'a Model> for ClientRow<'a> {
    fn from(m: &'a Model) -> Self {
        Self {
            id: m.id,
            host: m.host.as_str(),
            interface_name: m.interface_name.as_str(),
            client_ip: m.client_ip.as_str(),
            client_ip_bin: m.client_ip_bin.as_deref(),
            client_port: m.client_port,
            server_ip: m.server_ip.as_deref(),
            server_port: m.server_port,
            vlan_id: m.vlan_id,
            ntp_version: m.ntp_version,
            stratum: m.stratum,
            precision: m.precision,
            root_delay: m.root_delay,
            root_dispersion: m.root_dispersion,
            reference_id: m.reference_id.as_deref(),
            leap_indicator: m.leap_indicator,
            poll_interval: m.poll_interval,
            reference_timestamp: m.reference_timestamp,
            originate_timestamp: m.originate_timestamp,
            receive_timestamp: m.receive_timestamp,
            transmit_timestamp: m.transmit_timestamp,
            client_to_server_latency: m.client_to_server_latency,
            server_processing_time: m.server_processing_time,
            total_process_time: m.total_process_time,
            packet_length: m.packet_length,
            session_timestamp: m.session_timestamp,
            first_seen: m.first_seen,
            last_seen: m.last_seen,
            last_kiss_code: m.last_kiss_code.as_deref(),
            last_kiss_at: m.last_kiss_at,
            last_mode: m.last_mode,
            t1_randomized: m.t1_randomized,
            session_count: m.session_count,
            answered_count: m.answered_count,
            unanswered_count: m.unanswered_count,
            kod_count: m.kod_count,
            retransmit_count: m.retransmit_count,
            interleaved_count: m.interleaved_count,
            t1_randomized_count: m.t1_randomized_count,
            nts_count: m.nts_count,
            extension_count: m.extension_count,
            mac_count: m.mac_count,
            observation_count: m.observation_count,
            symmetric_count: m.symmetric_count,
            broadcast_count: m.broadcast_count,
            control_count: m.control_count,
            private_count: m.private_count,
            monlist_count: m.monlist_count,
            latency_count: m.latency_count,
            latency_sum: m.latency_sum,
            latency_min: m.latency_min,
            latency_max: m.latency_max,
            processing_count: m.processing_count,
            processing_sum: m.processing_sum,
            processing_min: m.processing_min,
            processing_max: m.processing_max,
            turnaround_count: m.turnaround_count,
            turnaround_sum: m.turnaround_sum,
            turnaround_min: m.turnaround_min,
            turnaround_max: m.turnaround_max,
            created_at: m.created_at,
            updated_at: m.updated_at,
        }
    }
}

/// The owned row (a lookup's answer, a page's cursor row).
impl From<ClientRow<'_>> for Model {
    fn from(r: ClientRow<'_>) -> Self {
        Self {
            id: r.id,
            host: r.host.to_owned(),
            interface_name: r.interface_name.to_owned(),
            client_ip: r.client_ip.to_owned(),
            client_ip_bin: r.client_ip_bin.map(<[u8]>::to_vec),
            client_port: r.client_port,
            server_ip: r.server_ip.map(str::to_owned),
            server_port: r.server_port,
            vlan_id: r.vlan_id,
            ntp_version: r.ntp_version,
            stratum: r.stratum,
            precision: r.precision,
            root_delay: r.root_delay,
            root_dispersion: r.root_dispersion,
            reference_id: r.reference_id.map(str::to_owned),
            leap_indicator: r.leap_indicator,
            poll_interval: r.poll_interval,
            reference_timestamp: r.reference_timestamp,
            originate_timestamp: r.originate_timestamp,
            receive_timestamp: r.receive_timestamp,
            transmit_timestamp: r.transmit_timestamp,
            client_to_server_latency: r.client_to_server_latency,
            server_processing_time: r.server_processing_time,
            total_process_time: r.total_process_time,
            packet_length: r.packet_length,
            session_timestamp: r.session_timestamp,
            first_seen: r.first_seen,
            last_seen: r.last_seen,
            last_kiss_code: r.last_kiss_code.map(str::to_owned),
            last_kiss_at: r.last_kiss_at,
            last_mode: r.last_mode,
            t1_randomized: r.t1_randomized,
            session_count: r.session_count,
            answered_count: r.answered_count,
            unanswered_count: r.unanswered_count,
            kod_count: r.kod_count,
            retransmit_count: r.retransmit_count,
            interleaved_count: r.interleaved_count,
            t1_randomized_count: r.t1_randomized_count,
            nts_count: r.nts_count,
            extension_count: r.extension_count,
            mac_count: r.mac_count,
            observation_count: r.observation_count,
            symmetric_count: r.symmetric_count,
            broadcast_count: r.broadcast_count,
            control_count: r.control_count,
            private_count: r.private_count,
            monlist_count: r.monlist_count,
            latency_count: r.latency_count,
            latency_sum: r.latency_sum,
            latency_min: r.latency_min,
            latency_max: r.latency_max,
            processing_count: r.processing_count,
            processing_sum: r.processing_sum,
            processing_min: r.processing_min,
            processing_max: r.processing_max,
            turnaround_count: r.turnaround_count,
            turnaround_sum: r.turnaround_sum,
            turnaround_min: r.turnaround_min,
            turnaround_max: r.turnaround_max,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}
