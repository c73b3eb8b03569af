//! The counter summary printed when the agent exits (text or JSON).

use std::fmt::Write as _;

use capture_proto::stats::Counters;
use serde_json::{Map, Value, json};

use crate::{
    output::OutputStats,
    source::{SourceState, SourceStatus},
};

/// What a run did, per source and in total.
#[derive(Debug, Clone)]
pub struct RunSummary {
    /// Agent id.
    pub agent_id: String,
    /// Final status of each source.
    pub sources: Vec<SourceStatus>,
    /// Sum of all sources' counters.
    pub totals: Counters,
    /// What the output wrote.
    pub output: OutputStats,
    /// Publisher counters (with `--output nats`).
    pub publisher: std::collections::BTreeMap<String, u64>,
}

impl RunSummary {
    /// Sums the sources.
    pub fn new(agent_id: String, sources: Vec<SourceStatus>, output: OutputStats) -> Self {
        let mut totals = Counters::default();
        for s in &sources {
            totals.add(&s.counters);
        }
        Self { agent_id, sources, totals, output, publisher: std::collections::BTreeMap::new() }
    }

    /// Sources that stopped with an error.
    pub fn failures(&self) -> Vec<(String, String)> {
        self.sources
            .iter()
            .filter_map(|s| match &s.state {
                SourceState::Failed(e) => Some((s.interface.clone(), e.clone())),
                _ => None,
            })
            .collect()
    }

    /// The summary as one JSON document.
    pub fn to_json(&self) -> Value {
        let sources: Vec<Value> = self
            .sources
            .iter()
            .map(|s| {
                json!({
                    "interface_name": s.interface,
                    "kind": s.kind,
                    "link_type": s.link.map(|l| format!("{l:?}")),
                    "state": match &s.state {
                        SourceState::Running => "running".to_string(),
                        SourceState::Finished => "finished".to_string(),
                        SourceState::Failed(e) => format!("failed: {e}"),
                    },
                    "counters": counters_json(&s.counters),
                    "pcap": {
                        "received": s.pcap.received,
                        "dropped": s.pcap.dropped,
                        "if_dropped": s.pcap.if_dropped,
                    },
                    "records_dropped": s.records_dropped,
                    "pairing_bytes": s.pairing_bytes,
                })
            })
            .collect();
        json!({
            "host": self.agent_id,
            "sources": sources,
            "totals": counters_json(&self.totals),
            "records_written": self.output.written,
            "publisher": self.publisher,
        })
    }

    /// The summary as text lines for a terminal.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for s in &self.sources {
            let _ = writeln!(
                out,
                "{} ({}): {} frames, {} NTP packets, {} answered, {} unanswered, {} pending, \
                 {} malformed, pcap dropped {} / if-dropped {}, records dropped {}",
                s.interface,
                s.kind,
                s.counters.frames,
                s.counters.ntp_packets,
                s.counters.answered,
                s.counters.unanswered,
                s.counters.pending,
                s.counters.malformed_total(),
                s.pcap.dropped,
                s.pcap.if_dropped,
                s.records_dropped,
            );
            if let SourceState::Failed(e) = &s.state {
                let _ = writeln!(out, "  FAILED: {e}");
            }
        }
        let _ = writeln!(out, "totals:");
        for (k, v) in self.totals.entries() {
            if v != 0 {
                let _ = writeln!(out, "  {k} = {v}");
            }
        }
        let _ = writeln!(out, "records written: {}", self.output.written);
        for (k, v) in &self.publisher {
            let _ = writeln!(out, "  publisher.{k} = {v}");
        }
        out
    }
}

/// Counters as a flat JSON object with stable names.
pub fn counters_json(c: &Counters) -> Value {
    let mut m = Map::new();
    for (k, v) in c.entries() {
        m.insert(k, Value::from(v));
    }
    Value::Object(m)
}
