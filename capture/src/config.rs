//! Command line and validated configuration of the capture agent.
//!
//! [`Cli`] is what the operator types; [`Config`] is the checked, typed form that [`crate::run`]
//! takes. Validation happens once, here, so the rest of the agent never sees a bad value.

use std::{num::NonZeroUsize, path::PathBuf, time::Duration};

use capture_proto::{AnalyzerConfig, pairing::PairingConfig};
use clap::{Parser, ValueEnum};

/// Command line of `ntpscope-capture`.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "ntpscope-capture",
    version,
    about = "Capture NTP traffic, pair client requests with server responses, and report sessions",
    long_about = "Capture NTP traffic live (libpcap, needs CAP_NET_RAW) or from pcap/pcapng files, \
                  pair each client request with the server's response, and write one JSON line per \
                  session or observation on stdout. A counter summary goes to stderr on exit."
)]
pub struct Cli {
    /// Capture live on this interface (repeat for several; `any` captures on all).
    #[arg(short = 'i', long = "interface", value_name = "IFACE")]
    pub interfaces: Vec<String>,

    /// Read packets from a pcap or pcapng file instead (repeatable).
    #[arg(short = 'r', long = "read", value_name = "FILE")]
    pub read: Vec<PathBuf>,

    /// Interface name recorded for sessions read from a file (default: the file name).
    #[arg(long, value_name = "NAME")]
    pub interface_name: Option<String>,

    /// NTP server port: a UDP datagram is NTP when either port equals it.
    #[arg(long, default_value_t = 123, env = "NTPSCOPE_PORT")]
    pub port: u16,

    /// Seconds after which an unanswered request is reported as unanswered (the seed's `timeout`).
    #[arg(long, default_value_t = 2.0, env = "NTPSCOPE_TIMEOUT")]
    pub timeout: f64,

    /// BPF filter for live capture (default: the NTP port, plus IP fragments so they are counted).
    #[arg(long, value_name = "EXPR")]
    pub bpf: Option<String>,

    /// Maximum pending requests kept for pairing; the oldest is evicted (and counted) beyond it.
    #[arg(long, default_value_t = 1_000_000)]
    pub max_outstanding: usize,

    /// Maximum pending requests per client flow.
    #[arg(long, default_value_t = 16)]
    pub max_per_flow: usize,

    /// A request whose transmit timestamp is further than this many seconds from its capture
    /// time is flagged `t1_randomized` and gets no latency.
    #[arg(long, default_value_t = 10.0)]
    pub max_t1_skew: f64,

    /// Snap length for live capture. NTP with NTS extension fields fits in an Ethernet frame;
    /// larger ones arrive as IP fragments (counted, not parsed). In libpcap's immediate mode each
    /// ring slot is snap-length sized, so 65535 would leave a 32 MiB buffer ~500 slots; 2048 gives
    /// it ~16 000. Frames cut short are counted (`snaplen_truncated`).
    #[arg(long, default_value_t = 2048)]
    pub snaplen: i32,

    /// Kernel capture buffer per interface, in MiB.
    #[arg(long, default_value_t = 32)]
    pub buffer_mib: i32,

    /// Put interfaces into promiscuous mode (not needed on the NTP server itself).
    #[arg(long)]
    pub promisc: bool,

    /// Where records go.
    #[arg(long, value_enum, default_value_t = OutputKind::Jsonl)]
    pub output: OutputKind,

    /// Leave observations (modes 1, 2, 5, 6, 7) out of the JSON lines.
    #[arg(long)]
    pub no_observations: bool,

    /// Format of the counter summary printed to stderr on exit.
    #[arg(long, value_enum, default_value_t = SummaryFormat::Text)]
    pub summary: SummaryFormat,

    /// On exit (signal or end of file), report requests still pending as unanswered.
    #[arg(long)]
    pub flush_pending: bool,

    /// Keep running when the sources end (or with none), serving start/stop requests from the API
    /// over NATS (with --output nats), until SIGINT or SIGTERM.
    #[arg(long)]
    pub daemon: bool,

    /// Agent id recorded as `host` (default: the hostname).
    #[arg(long, env = "NTPSCOPE_AGENT_ID")]
    pub agent_id: Option<String>,

    /// Never draw a progress bar, even on a terminal.
    #[arg(long)]
    pub no_progress: bool,

    /// Read files at their capture pace times FACTOR (1 = as captured, 10 = ten times faster),
    /// like tcpreplay's --multiplier, instead of as fast as possible. Live sources ignore it.
    #[arg(long, value_name = "FACTOR")]
    pub replay_speed: Option<f64>,

    /// Records a capture thread hands over at once (and so, at most, per NATS message).
    #[arg(long, default_value_t = 1000)]
    pub batch_records: usize,

    /// When started as root, switch to this user once the capture handles are open and NATS is
    /// connected (default: `ntpscope` if it exists, else `nobody`; `root` stays root). A daemon
    /// keeps CAP_NET_RAW in one thread to open interfaces the API asks for. Ignored when not root.
    #[arg(long, env = "NTPSCOPE_USER", value_name = "USER")]
    pub user: Option<String>,

    #[command(flatten)]
    pub nats: NatsArgs,

    #[command(flatten)]
    pub settings: ntpscope_bus::settings::SettingsArgs,
}

/// NATS settings (used with `--output nats`). Secrets come from files or the environment,
/// never from the command line, where every local user could read them.
#[derive(Debug, Clone, clap::Args)]
pub struct NatsArgs {
    #[command(flatten)]
    pub connect: ntpscope_bus::ConnectArgs,
    #[command(flatten)]
    pub stream: ntpscope_bus::StreamArgs,
    /// Memory for messages not yet acknowledged, in MiB; beyond it live records are dropped and counted.
    #[arg(long, default_value_t = 256)]
    pub publish_buffer_mib: usize,
    /// Messages awaiting their ack at once.
    #[arg(long, default_value_t = 256)]
    pub publish_inflight: usize,
    /// Seconds between status updates in the KV bucket.
    #[arg(long, default_value_t = 5.0)]
    pub status_interval: f64,
}

/// Where records go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputKind {
    /// One JSON object per line on stdout.
    Jsonl,
    /// NATS JetStream, stream `NTP`, subject `ntp.v1.sessions.<agent>.<interface>`.
    Nats,
    /// Nowhere: only the counter summary (for benchmarks and dry runs).
    None,
}

/// Format of the exit summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SummaryFormat {
    /// Human-readable lines.
    Text,
    /// One JSON document.
    Json,
    /// No summary.
    None,
}

/// A place packets come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceSpec {
    /// A live interface.
    Live {
        /// Interface name.
        interface: String,
    },
    /// A capture file, recorded under `interface`.
    File {
        /// File path.
        path: PathBuf,
        /// Interface name to record.
        interface: String,
    },
}

impl SourceSpec {
    /// The interface name recorded for this source.
    pub fn interface(&self) -> &str {
        match self {
            Self::Live { interface } | Self::File { interface, .. } => interface,
        }
    }
}

/// Live capture settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveConfig {
    /// BPF filter expression.
    pub bpf: String,
    /// Snap length.
    pub snaplen: i32,
    /// Kernel buffer in bytes.
    pub buffer_bytes: i32,
    /// Promiscuous mode.
    pub promisc: bool,
}

/// Validated configuration of the agent.
#[derive(Debug, Clone)]
pub struct Config {
    /// Agent id (recorded as `host`).
    pub agent_id: String,
    /// Packet sources.
    pub sources: Vec<SourceSpec>,
    /// Core settings.
    pub analyzer: AnalyzerConfig,
    /// Live capture settings.
    pub live: LiveConfig,
    /// Output kind.
    pub output: OutputKind,
    /// Include observations in the output.
    pub observations: bool,
    /// Summary format.
    pub summary: SummaryFormat,
    /// Report pending requests as unanswered on exit.
    pub flush_pending: bool,
    /// Keep running and serve control requests.
    pub daemon: bool,
    /// Draw a progress bar for large files when stderr is a terminal.
    pub progress: bool,
    /// Pace files at their capture timing times this factor (`None`: as fast as possible).
    pub replay_speed: Option<f64>,
    /// Records per batch handed from a capture thread to the output.
    pub batch_records: NonZeroUsize,
    /// How long a capture thread holds a partial batch.
    pub batch_interval: Duration,
    /// Bus settings (for `--output nats`).
    pub bus: BusConfig,
    /// Whom to run as after start-up, when started as root.
    pub run_as: crate::privileges::RunAs,
}

/// Validated NATS settings.
#[derive(Debug, Clone)]
pub struct BusConfig {
    /// Connection.
    pub nats: ntpscope_bus::NatsConfig,
    /// Stream limits.
    pub stream: ntpscope_bus::StreamSettings,
    /// Publisher buffer, bytes.
    pub buffer_bytes: usize,
    /// Messages in flight.
    pub inflight: usize,
    /// Status cadence.
    pub status_interval: Duration,
}

impl NatsArgs {
    fn into_config(self, agent_id: &str) -> Result<BusConfig, ConfigError> {
        if self.publish_buffer_mib == 0 || self.publish_inflight == 0 {
            return Err(ConfigError("--publish-buffer-mib and --publish-inflight must be positive".into()));
        }
        if !self.status_interval.is_finite() || self.status_interval < 0.1 {
            return Err(ConfigError("--status-interval must be at least 0.1 s".into()));
        }
        let nats = self.connect.into_config(&format!("ntpscope-capture@{agent_id}")).map_err(|e| ConfigError(e.to_string()))?;
        Ok(BusConfig {
            nats,
            stream: self.stream.into_settings().map_err(ConfigError)?,
            buffer_bytes: self.publish_buffer_mib << 20,
            inflight: self.publish_inflight,
            status_interval: Duration::from_secs_f64(self.status_interval),
        })
    }
}

/// A configuration error, reported with exit code 78 (`EX_CONFIG`).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// The default BPF filter: the NTP port (also inside one or two VLAN tags), plus IPv4 and IPv6
/// fragments so that they are counted rather than silently missed.
pub fn default_bpf(port: u16) -> String {
    format!(
        "udp port {port} or (ip[6:2] & 0x3fff != 0) or (ip6 and ip6[6] == 44) \
         or (vlan and (udp port {port} or (vlan and udp port {port})))"
    )
}

impl Cli {
    /// Validates the command line into a [`Config`].
    pub fn into_config(self, hostname: &str) -> Result<Config, ConfigError> {
        if self.interfaces.is_empty() && self.read.is_empty() && !self.daemon {
            return Err(ConfigError("nothing to capture: give --interface IFACE or --read FILE (or --daemon)".into()));
        }
        if !self.timeout.is_finite() || self.timeout <= 0.0 || self.timeout > 3600.0 {
            return Err(ConfigError(format!("--timeout must be between 0 and 3600 seconds, got {}", self.timeout)));
        }
        if !self.max_t1_skew.is_finite() || self.max_t1_skew <= 0.0 {
            return Err(ConfigError(format!("--max-t1-skew must be positive, got {}", self.max_t1_skew)));
        }
        if self.max_outstanding == 0 || self.max_outstanding > u32::MAX as usize - 1 {
            return Err(ConfigError("--max-outstanding must be between 1 and 4294967294".into()));
        }
        if self.max_per_flow == 0 {
            return Err(ConfigError("--max-per-flow must be at least 1".into()));
        }
        if !(64..=262_144).contains(&self.snaplen) {
            return Err(ConfigError(format!("--snaplen must be between 64 and 262144, got {}", self.snaplen)));
        }
        if !(1..=2047).contains(&self.buffer_mib) {
            return Err(ConfigError(format!("--buffer-mib must be between 1 and 2047, got {}", self.buffer_mib)));
        }
        if self.interface_name.is_some() && self.read.len() > 1 {
            return Err(ConfigError("--interface-name applies to a single --read file".into()));
        }
        let agent_id = self.agent_id.unwrap_or_else(|| hostname.to_string());
        if agent_id.is_empty() || agent_id.len() > 253 || agent_id.chars().any(char::is_control) {
            return Err(ConfigError(format!("invalid agent id {agent_id:?}")));
        }
        let mut sources: Vec<SourceSpec> = self.interfaces.iter().map(|i| SourceSpec::Live { interface: i.clone() }).collect();
        for path in &self.read {
            let interface = self
                .interface_name
                .clone()
                .unwrap_or_else(|| path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned()));
            sources.push(SourceSpec::File { path: path.clone(), interface });
        }
        let bus = self.nats.into_config(&agent_id)?;
        let mut seen = std::collections::HashSet::new();
        for s in &sources {
            if let SourceSpec::Live { interface } = s
                && !seen.insert(interface.clone())
            {
                return Err(ConfigError(format!("interface {interface} given twice")));
            }
        }
        Ok(Config {
            agent_id,
            sources,
            analyzer: AnalyzerConfig {
                server_port: self.port,
                pairing: PairingConfig {
                    timeout_ns: (self.timeout * 1e9) as i64,
                    max_outstanding: self.max_outstanding,
                    max_per_flow: self.max_per_flow,
                    max_t1_skew_ns: (self.max_t1_skew * 1e9) as i64,
                    ..PairingConfig::default()
                },
            },
            live: LiveConfig {
                bpf: self.bpf.unwrap_or_else(|| default_bpf(self.port)),
                snaplen: self.snaplen,
                buffer_bytes: self.buffer_mib * 1024 * 1024,
                promisc: self.promisc,
            },
            output: self.output,
            observations: !self.no_observations,
            summary: self.summary,
            flush_pending: self.flush_pending,
            daemon: self.daemon,
            progress: !self.no_progress,
            replay_speed: match self.replay_speed {
                Some(f) if !(f.is_finite() && (1e-3..=1e6).contains(&f)) => {
                    return Err(ConfigError(format!("--replay-speed must be between 0.001 and 1000000, got {f}")));
                }
                other => other,
            },
            batch_records: NonZeroUsize::new(self.batch_records)
                .filter(|n| n.get() <= 100_000)
                .ok_or_else(|| ConfigError("--batch-records must be between 1 and 100000".into()))?,
            batch_interval: Duration::from_millis(100),
            bus,
            run_as: match self.user {
                Some(u) if u.trim().is_empty() => return Err(ConfigError("--user must name a user".into())),
                Some(u) => crate::privileges::RunAs::User(u),
                None => crate::privileges::RunAs::Default,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Result<Config, ConfigError> {
        let mut v = vec!["ntpscope-capture"];
        v.extend_from_slice(args);
        Cli::try_parse_from(v).expect("parses").into_config("host1")
    }

    #[test]
    fn defaults_follow_the_seed() {
        let c = cli(&["-i", "eth0"]).unwrap();
        assert_eq!(c.analyzer.server_port, 123);
        assert_eq!(c.analyzer.pairing.timeout_ns, 2_000_000_000);
        assert_eq!(c.agent_id, "host1");
        assert!(c.live.bpf.starts_with("udp port 123 "));
    }

    #[test]
    fn rejects_bad_values_with_the_flag_named() {
        for (args, needle) in [
            (vec![], "nothing to capture"),
            (vec!["-i", "eth0", "--timeout", "0"], "--timeout"),
            (vec!["-i", "eth0", "--timeout", "NaN"], "--timeout"),
            (vec!["-i", "eth0", "--max-outstanding", "0"], "--max-outstanding"),
            (vec!["-i", "eth0", "-i", "eth0"], "given twice"),
            (vec!["-r", "a", "-r", "b", "--interface-name", "x"], "--interface-name"),
        ] {
            let err = cli(&args).unwrap_err().to_string();
            assert!(err.contains(needle), "{args:?}: {err}");
        }
    }

    #[test]
    fn files_are_named_after_themselves() {
        let c = cli(&["-r", "/tmp/x/trace.pcap"]).unwrap();
        assert_eq!(c.sources[0].interface(), "trace.pcap");
        let c = cli(&["-r", "/tmp/x/trace.pcap", "--interface-name", "eth0"]).unwrap();
        assert_eq!(c.sources[0].interface(), "eth0");
    }
}
