//! `ntp_clients`: per-client history, one row per (host, interface_name, client_ip).

use sea_orm::entity::prelude::*;

/// One client as seen by one capture interface of one host.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "ntp_clients")]
pub struct Model {
    /// Surrogate key.
    #[sea_orm(primary_key)]
    pub id: i64,
    /// Agent id of the capture host.
    pub host: String,
    /// Capture interface.
    pub interface_name: String,
    /// Client address (canonical text).
    pub client_ip: String,
    /// Client address as 16 bytes, IPv4 mapped into IPv6 (for CIDR ranges and numeric order).
    pub client_ip_bin: Option<Vec<u8>>,
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
    /// Reference id as text.
    pub reference_id: Option<String>,
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
    pub last_kiss_code: Option<String>,
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

/// No relations.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
