//! Prometheus metrics: the interface and service statistics in Prometheus' text exposition
//! format (version 0.0.4, served as `text/plain; version=0.0.4`), for a scrape job
//! (`metrics_path: /api/ntp/metrics`).
//!
//! Pure: [`render`] takes the two statistics documents the JSON endpoints serve and returns the
//! text, so a scrape costs what those endpoints cost (the per-interface aggregates are cached
//! for a few seconds) and the figures agree with them.
//!
//! Three groups, each from one source:
//! - `ntpscope_interface_*`, labelled `host` and `interface`: what the database holds per capture
//!   interface (clients, sessions by outcome, kiss-o'-death, observations, latency, first and
//!   last activity). These are gauges: a cleanup deletes old clients and their counts with them.
//! - `ntpscope_sink_*`, `ntpscope_stream_*`, `ntpscope_consumer_*`: the sink's cumulative
//!   counters (counters in Prometheus' sense), its queue and lag, and the stream's state.
//! - `ntpscope_agent_*`, labelled `agent` (and `interface`): each agent's live status from the
//!   bus: up, version, capture state, libpcap drops, capture counters, publisher counters and
//!   buffer use. An agent's counters start again at zero when it restarts, as Prometheus expects.

use std::fmt::Write as _;

use crate::dto::{InterfaceStatistics, InterfaceStatisticsList, MetricStats, ServiceStatistics};

/// Label names and values of one sample.
type Labels = Vec<(&'static str, String)>;

/// The exposition being written: each family once, its samples together.
#[derive(Default)]
struct Exposition(String);

impl Exposition {
    /// Writes a family (`kind` is `gauge` or `counter`) with its samples; nothing without samples.
    fn family(&mut self, name: &str, kind: &str, help: &str, samples: impl IntoIterator<Item = (Labels, f64)>) {
        let mut samples = samples.into_iter().filter(|(_, v)| v.is_finite()).peekable();
        if samples.peek().is_none() {
            return;
        }
        let out = &mut self.0;
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, value) in samples {
            out.push_str(name);
            if !labels.is_empty() {
                out.push('{');
                for (i, (k, v)) in labels.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    let _ = write!(out, "{k}=\"{}\"", escape(v));
                }
                out.push('}');
            }
            // f64's Display is the shortest text that reads back as the same number, never in
            // exponent form, and integers print without a fraction.
            let _ = writeln!(out, " {value}");
        }
    }
}

/// A label value as the text format wants it: backslash, double quote and line feed escaped.
fn escape(v: &str) -> String {
    v.replace('\\', r"\\").replace('"', "\\\"").replace('\n', r"\n")
}

/// An RFC 3339 time of the statistics as Unix seconds.
fn seconds(rfc3339: Option<&str>) -> Option<f64> {
    rfc3339.and_then(ntp_wire::time::parse_rfc3339).map(|ns| ns as f64 / 1e9)
}

fn interface_labels(i: &InterfaceStatistics) -> Labels {
    vec![("host", i.host.clone()), ("interface", i.interface_name.clone())]
}

/// One figure of a latency metric (average, minimum or maximum).
type Pick = fn(&MetricStats) -> Option<f64>;

/// The three latency metrics of an interface, with their label values.
fn latency(i: &InterfaceStatistics) -> [(&'static str, &MetricStats); 3] {
    [
        ("client_to_server", &i.client_to_server_latency),
        ("server_processing", &i.server_processing_time),
        ("total_process", &i.total_process_time),
    ]
}

/// The metrics of both statistics documents.
#[must_use]
pub fn render(interfaces: &InterfaceStatisticsList, service: &ServiceStatistics) -> String {
    let mut out = Exposition::default();
    let list = &interfaces.interfaces;
    let per_interface = |value: fn(&InterfaceStatistics) -> i64| list.iter().map(move |i| (interface_labels(i), value(i) as f64));
    out.family(
        "ntpscope_interface_clients",
        "gauge",
        "Clients stored for the interface (one row per host, interface and client address).",
        per_interface(|i| i.clients),
    );
    out.family(
        "ntpscope_interface_sessions",
        "gauge",
        "Client requests stored for the interface, by outcome.",
        list.iter().flat_map(|i| {
            [("answered", i.answered), ("unanswered", i.unanswered)].map(|(outcome, n)| {
                let mut l = interface_labels(i);
                l.push(("outcome", outcome.to_string()));
                (l, n as f64)
            })
        }),
    );
    out.family(
        "ntpscope_interface_kod_sessions",
        "gauge",
        "Requests the server answered with a kiss-o'-death, stored for the interface.",
        per_interface(|i| i.kod),
    );
    out.family(
        "ntpscope_interface_observations",
        "gauge",
        "Packets of modes 1, 2, 5, 6 and 7 stored for the interface.",
        per_interface(|i| i.observations),
    );
    let stats: [(&str, &str, Pick); 3] = [
        ("ntpscope_interface_latency_avg_seconds", "Average of a latency metric over the interface's answered requests.", |m| m.avg),
        ("ntpscope_interface_latency_min_seconds", "Smallest value of a latency metric on the interface.", |m| m.min),
        ("ntpscope_interface_latency_max_seconds", "Largest value of a latency metric on the interface.", |m| m.max),
    ];
    for (name, help, pick) in stats {
        let samples = list.iter().flat_map(|i| {
            latency(i).into_iter().filter_map(move |(metric, m)| {
                let mut l = interface_labels(i);
                l.push(("metric", metric.to_string()));
                pick(m).map(|v| (l, v))
            })
        });
        out.family(name, "gauge", help, samples);
    }
    out.family(
        "ntpscope_interface_first_seen_timestamp_seconds",
        "gauge",
        "When the interface's oldest stored client was first seen (Unix time).",
        list.iter().filter_map(|i| seconds(i.first_seen.as_deref()).map(|s| (interface_labels(i), s))),
    );
    out.family(
        "ntpscope_interface_last_seen_timestamp_seconds",
        "gauge",
        "When the interface last saw any client (Unix time).",
        list.iter().filter_map(|i| seconds(i.last_seen.as_deref()).map(|s| (interface_labels(i), s))),
    );
    out.family(
        "ntpscope_stored_clients",
        "gauge",
        "Client rows in the database, over every host and interface.",
        [(Vec::new(), service.total_clients as f64)],
    );
    sink(&mut out, service);
    agents(&mut out, service);
    out.0
}

fn sink(out: &mut Exposition, service: &ServiceStatistics) {
    if let Some(s) = &service.sink {
        let l = || vec![("consumer", s.consumer.clone())];
        out.family("ntpscope_sink_up", "gauge", "1 while the sink reports in, else 0.", [(l(), f64::from(u8::from(s.alive)))]);
        out.family(
            "ntpscope_sink_failing",
            "gauge",
            "1 while the sink's database writes fail (locked, full, unreachable), else 0.",
            [(l(), f64::from(u8::from(s.failing.is_some())))],
        );
        let counters: [(&str, &str, i64); 9] = [
            (
                "ntpscope_sink_received_records_total",
                "Records received from the stream (total_received in the service statistics).",
                s.total_received,
            ),
            ("ntpscope_sink_processed_records_total", "Records applied to the database (total_processed).", s.total_processed),
            ("ntpscope_sink_inserted_rows_total", "Client rows inserted (total_inserted).", s.total_inserted),
            ("ntpscope_sink_updated_rows_total", "Client rows updated (total_updated).", s.total_updated),
            (
                "ntpscope_sink_processing_errors_total",
                "Messages that could not be processed and were set aside (processing_errors).",
                s.processing_errors,
            ),
            ("ntpscope_sink_batches_total", "Batches committed.", s.batches),
            (
                "ntpscope_sink_duplicates_skipped_total",
                "Messages skipped as already applied (redeliveries, re-publishes).",
                s.duplicates_skipped,
            ),
            ("ntpscope_sink_dead_lettered_total", "Messages set aside on the dead-letter subject.", s.dead_lettered),
            (
                "ntpscope_sink_failed_attempts_total",
                "Batch writes that failed and were retried (failed_attempts).",
                s.failed_attempts.unwrap_or(0),
            ),
        ];
        for (name, help, v) in counters {
            out.family(name, "counter", help, [(l(), v as f64)]);
        }
        out.family(
            "ntpscope_sink_queue_size",
            "gauge",
            "Messages waiting for the sink: the consumer's pending and unacknowledged (queue_size).",
            [(l(), s.queue_size as f64)],
        );
        out.family(
            "ntpscope_sink_lag_seconds",
            "gauge",
            "From the agent's hand-over of the newest message of the last batch to its commit.",
            s.lag_seconds.map(|v| (l(), v)),
        );
        out.family(
            "ntpscope_sink_last_commit_timestamp_seconds",
            "gauge",
            "When the sink last committed a batch (Unix time).",
            seconds(s.last_commit_at.as_deref()).map(|v| (l(), v)),
        );
        out.family(
            "ntpscope_sink_wal_bytes",
            "gauge",
            "Size of the SQLite write-ahead log file as the sink last found it (SQLite only).",
            s.wal_bytes.map(|v| (l(), v as f64)),
        );
    }
    if let Some(st) = &service.stream {
        let l = || vec![("stream", st.stream.clone())];
        out.family("ntpscope_stream_messages", "gauge", "Messages the stream holds.", [(l(), st.messages as f64)]);
        out.family("ntpscope_stream_bytes", "gauge", "Bytes the stream holds.", [(l(), st.bytes as f64)]);
        out.family(
            "ntpscope_consumer_pending_messages",
            "gauge",
            "Messages of the stream the sink's consumer has not been delivered yet.",
            st.consumer_pending.map(|v| (l(), v as f64)),
        );
        out.family(
            "ntpscope_consumer_ack_pending_messages",
            "gauge",
            "Messages delivered to the sink and not yet acknowledged.",
            st.consumer_ack_pending.map(|v| (l(), v as f64)),
        );
        out.family(
            "ntpscope_consumer_redelivered_messages",
            "gauge",
            "Unacknowledged messages delivered more than once.",
            st.consumer_redelivered.map(|v| (l(), v as f64)),
        );
    }
}

fn agents(out: &mut Exposition, service: &ServiceStatistics) {
    let agents = &service.agents;
    let agent = |a: &crate::dto::AgentStatistics| vec![("agent", a.agent.clone())];
    out.family(
        "ntpscope_agent_up",
        "gauge",
        "1 while the agent reports its status on the bus, else 0.",
        agents.iter().map(|a| (agent(a), f64::from(u8::from(a.online)))),
    );
    out.family(
        "ntpscope_agent_info",
        "gauge",
        "The agent's version, as a label; always 1.",
        agents.iter().map(|a| {
            let mut l = agent(a);
            l.push(("version", a.version.clone()));
            (l, 1.0)
        }),
    );
    let publisher = |key: &'static str| agents.iter().filter_map(move |a| a.publisher.get(key).map(|v| (agent(a), *v as f64)));
    out.family(
        "ntpscope_agent_buffered_messages",
        "gauge",
        "Messages the agent holds for NATS (unacknowledged or waiting).",
        publisher("buffered_messages"),
    );
    out.family("ntpscope_agent_buffered_bytes", "gauge", "Bytes the agent holds for NATS.", publisher("buffered_bytes"));
    out.family(
        "ntpscope_agent_last_ack_timestamp_seconds",
        "gauge",
        "When NATS last acknowledged one of the agent's messages (Unix time).",
        agents.iter().filter_map(|a| a.publisher.get("last_ack_ns").filter(|ns| **ns > 0).map(|ns| (agent(a), *ns as f64 / 1e9))),
    );
    out.family(
        "ntpscope_agent_publisher_total",
        "counter",
        "The agent's publisher counters: messages and records NATS acknowledged, duplicates, retries, records given up (at shutdown, or unencodable).",
        agents.iter().flat_map(|a| {
            a.publisher.iter().filter(|(k, _)| !k.starts_with("buffered_") && k.as_str() != "last_ack_ns").map(|(k, v)| {
                let mut l = agent(a);
                l.push(("counter", k.clone()));
                (l, *v as f64)
            })
        }),
    );
    let interfaces = || agents.iter().flat_map(|a| a.interfaces.iter().map(move |i| (a, i)));
    let labels = |a: &crate::dto::AgentStatistics, i: &crate::dto::AgentInterfaceCounters| {
        let mut l = agent(a);
        l.push(("interface", i.name.clone()));
        l
    };
    out.family(
        "ntpscope_agent_capture_state",
        "gauge",
        "The capture state the agent reports for the interface (running, stopped, finished, failed), as a label; always 1.",
        interfaces().map(|(a, i)| {
            let mut l = labels(a, i);
            // Without a failure's text, which would make a series per error message.
            l.push(("state", i.state.split(':').next().unwrap_or_default().trim().to_string()));
            (l, 1.0)
        }),
    );
    out.family(
        "ntpscope_agent_pcap_dropped_total",
        "counter",
        "Packets libpcap dropped for lack of buffer space.",
        interfaces().map(|(a, i)| (labels(a, i), i.pcap_dropped as f64)),
    );
    out.family(
        "ntpscope_agent_pcap_if_dropped_total",
        "counter",
        "Packets the network interface or its driver dropped.",
        interfaces().map(|(a, i)| (labels(a, i), i.pcap_if_dropped as f64)),
    );
    out.family(
        "ntpscope_agent_records_dropped_total",
        "counter",
        "Records of the interface the agent dropped because its output could not keep up (publish buffer full: NATS slow or away).",
        interfaces().map(|(a, i)| (labels(a, i), i.records_dropped as f64)),
    );
    out.family(
        "ntpscope_agent_pending_requests",
        "gauge",
        "Client requests waiting for their response.",
        interfaces().filter_map(|(a, i)| i.counters.get("pending").map(|v| (labels(a, i), *v as f64))),
    );
    out.family(
        "ntpscope_agent_capture_total",
        "counter",
        "The capture's counters for the interface (frames, NTP packets by mode and version, malformed by reason, requests, answered, unanswered, kiss-o'-death and more; the names of the agent's summary). Sum only within a kind: some names count overlapping things.",
        interfaces().flat_map(|(a, i)| {
            // `malformed.total` is the sum of the `malformed.*` series beside it.
            i.counters.iter().filter(|(k, _)| !matches!(k.as_str(), "pending" | "malformed.total")).map(move |(k, v)| {
                let mut l = labels(a, i);
                l.push(("counter", k.clone()));
                (l, *v as f64)
            })
        }),
    );
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::dto::{AgentInterfaceCounters, AgentStatistics, SinkStatistics, StreamStatistics};

    fn stats(count: i64, avg: f64) -> MetricStats {
        MetricStats { count, avg: Some(avg), min: Some(avg / 2.0), max: Some(avg * 2.0) }
    }

    fn interface(host: &str, name: &str) -> InterfaceStatistics {
        InterfaceStatistics {
            host: host.into(),
            interface_name: name.into(),
            clients: 3,
            sessions: 10,
            answered: 9,
            unanswered: 1,
            kod: 2,
            observations: 4,
            client_to_server_latency: stats(9, 0.002),
            server_processing_time: stats(9, 1e-5),
            total_process_time: MetricStats { count: 0, avg: None, min: None, max: None },
            first_seen: Some("2026-01-01T00:00:00Z".into()),
            last_seen: Some("2026-01-01T00:00:01.5Z".into()),
            capture_state: "running".into(),
            pcap_dropped: Some(1),
            pcap_if_dropped: Some(0),
        }
    }

    fn service() -> ServiceStatistics {
        ServiceStatistics {
            sink: Some(SinkStatistics {
                consumer: "ntpscope-sink".into(),
                total_received: 300,
                total_processed: 299,
                queue_size: 7,
                processing_errors: 1,
                total_inserted: 250,
                total_updated: 49,
                batches: 5,
                duplicates_skipped: 0,
                dead_lettered: 1,
                last_sequence: 12,
                last_commit_at: Some("2026-01-01T00:00:02Z".into()),
                lag_seconds: Some(0.25),
                alive: true,
                failed_attempts: Some(3),
                failing: None,
                failing_since: None,
                wal_bytes: Some(4_194_304),
            }),
            stream: Some(StreamStatistics {
                stream: "NTP".into(),
                messages: 12,
                bytes: 4096,
                first_sequence: 1,
                last_sequence: 12,
                consumer_pending: Some(0),
                consumer_ack_pending: Some(2),
                consumer_redelivered: None,
            }),
            agents: vec![AgentStatistics {
                agent: "ntp1".into(),
                version: "0.1.0".into(),
                online: true,
                updated_at: "2026-01-01T00:00:02Z".into(),
                publisher: BTreeMap::from([
                    ("records_acked".to_string(), 300),
                    ("buffered_messages".to_string(), 2),
                    ("buffered_bytes".to_string(), 512),
                    ("last_ack_ns".to_string(), 1_767_225_602_000_000_000),
                ]),
                interfaces: vec![AgentInterfaceCounters {
                    name: "eth1.100".into(),
                    state: "failed: socket: permission denied".into(),
                    pcap_dropped: 1,
                    pcap_if_dropped: 0,
                    records_dropped: 0,
                    counters: BTreeMap::from([
                        ("frames".to_string(), 620),
                        ("ntp_by_mode.3".to_string(), 310),
                        ("malformed.total".to_string(), 2),
                        ("pending".to_string(), 4),
                    ]),
                }],
            }],
            total_clients: 6,
        }
    }

    fn lines(text: &str) -> Vec<&str> {
        text.lines().collect()
    }

    #[test]
    fn every_sample_is_well_formed_and_every_family_is_declared_once_before_its_samples() {
        let text = render(
            &InterfaceStatisticsList {
                interfaces: vec![interface("ntp1", "eth0"), interface("ntp2", "eth1.100")],
                computed_at: String::new(),
            },
            &service(),
        );
        let mut declared: Vec<String> = Vec::new();
        let mut current = String::new();
        let mut help: Option<String> = None;
        for line in lines(&text) {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, text) = rest.split_once(' ').expect("name and help");
                assert!(!text.is_empty() && !text.contains('\\'), "{line}");
                help = Some(name.to_string());
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("name and type");
                assert_eq!(help.take().as_deref(), Some(name), "{name}: HELP right before TYPE");
                assert!(["gauge", "counter"].contains(&kind), "{line}");
                assert_eq!(kind == "counter", name.ends_with("_total"), "{line}: counters, and only they, end in _total");
                assert!(!declared.iter().any(|d| d == name), "{name} declared twice");
                declared.push(name.to_string());
                current = name.to_string();
                continue;
            }
            let (series, value) = line.rsplit_once(' ').expect("series and value");
            let name = series.split('{').next().expect("name");
            assert_eq!(name, current, "{line}: a sample outside its family");
            assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') && name.starts_with("ntpscope_"), "{line}");
            assert!(value.parse::<f64>().is_ok_and(f64::is_finite), "{line}");
        }
        assert!(declared.len() > 30, "{declared:?}");
    }

    #[test]
    fn figures_are_those_of_the_statistics() {
        let text = render(&InterfaceStatisticsList { interfaces: vec![interface("ntp1", "eth0")], computed_at: String::new() }, &service());
        let l = lines(&text);
        for want in [
            r#"ntpscope_interface_clients{host="ntp1",interface="eth0"} 3"#,
            r#"ntpscope_interface_sessions{host="ntp1",interface="eth0",outcome="answered"} 9"#,
            r#"ntpscope_interface_sessions{host="ntp1",interface="eth0",outcome="unanswered"} 1"#,
            r#"ntpscope_interface_kod_sessions{host="ntp1",interface="eth0"} 2"#,
            r#"ntpscope_interface_latency_avg_seconds{host="ntp1",interface="eth0",metric="client_to_server"} 0.002"#,
            r#"ntpscope_interface_latency_max_seconds{host="ntp1",interface="eth0",metric="server_processing"} 0.00002"#,
            r#"ntpscope_interface_first_seen_timestamp_seconds{host="ntp1",interface="eth0"} 1767225600"#,
            r#"ntpscope_interface_last_seen_timestamp_seconds{host="ntp1",interface="eth0"} 1767225601.5"#,
            "ntpscope_stored_clients 6",
            r#"ntpscope_sink_up{consumer="ntpscope-sink"} 1"#,
            r#"ntpscope_sink_failing{consumer="ntpscope-sink"} 0"#,
            r#"ntpscope_sink_processed_records_total{consumer="ntpscope-sink"} 299"#,
            r#"ntpscope_sink_queue_size{consumer="ntpscope-sink"} 7"#,
            r#"ntpscope_sink_failed_attempts_total{consumer="ntpscope-sink"} 3"#,
            r#"ntpscope_sink_lag_seconds{consumer="ntpscope-sink"} 0.25"#,
            r#"ntpscope_sink_last_commit_timestamp_seconds{consumer="ntpscope-sink"} 1767225602"#,
            r#"ntpscope_sink_wal_bytes{consumer="ntpscope-sink"} 4194304"#,
            r#"ntpscope_consumer_ack_pending_messages{stream="NTP"} 2"#,
            r#"ntpscope_agent_up{agent="ntp1"} 1"#,
            r#"ntpscope_agent_info{agent="ntp1",version="0.1.0"} 1"#,
            r#"ntpscope_agent_buffered_bytes{agent="ntp1"} 512"#,
            r#"ntpscope_agent_last_ack_timestamp_seconds{agent="ntp1"} 1767225602"#,
            r#"ntpscope_agent_publisher_total{agent="ntp1",counter="records_acked"} 300"#,
            r#"ntpscope_agent_capture_state{agent="ntp1",interface="eth1.100",state="failed"} 1"#,
            r#"ntpscope_agent_pcap_dropped_total{agent="ntp1",interface="eth1.100"} 1"#,
            r#"ntpscope_agent_pending_requests{agent="ntp1",interface="eth1.100"} 4"#,
            r#"ntpscope_agent_capture_total{agent="ntp1",interface="eth1.100",counter="ntp_by_mode.3"} 310"#,
        ] {
            assert!(l.contains(&want), "missing {want}\n{text}");
        }
        // Absent values make no sample: no total_process latency, no redelivered count; gauges
        // and timestamps stay out of the counter families.
        assert!(!text.contains(r#"metric="total_process""#), "{text}");
        assert!(!text.contains("ntpscope_consumer_redelivered_messages{"), "{text}");
        assert!(!text.contains(r#"counter="pending""#) && !text.contains(r#"counter="buffered_bytes""#), "{text}");
        // No double counting within a family, no error text in a label.
        assert!(!text.contains("malformed.total") && !text.contains("permission denied"), "{text}");
    }

    #[test]
    fn label_values_are_escaped() {
        let text = render(
            &InterfaceStatisticsList { interfaces: vec![interface("a\"b\\c\nd", "eth0")], computed_at: String::new() },
            &ServiceStatistics { sink: None, stream: None, agents: Vec::new(), total_clients: 0 },
        );
        assert!(lines(&text).contains(&r#"ntpscope_interface_clients{host="a\"b\\c\nd",interface="eth0"} 3"#), "{text}");
        // Without a sink row, a stream or agents: their families are left out, not written empty.
        assert!(!text.contains("ntpscope_sink_") && !text.contains("ntpscope_agent_"), "{text}");
    }
}
