//! The agent's status document, rewritten in the `ntpscope_status` KV bucket every few seconds
//! (and once more on exit) so the API can show interfaces, capture state, counters, pcap drops,
//! buffer use and version even for agents it cannot reach.

use std::{sync::Arc, time::Duration};

use async_nats::jetstream::kv;
use ntp_wire::status::{AgentStatus, InterfaceStatus};

use crate::{clock, publish::PublisherStats, source::SourceState, supervisor::Supervisor};

/// Builds the document from the shared source statuses and publisher counters.
pub fn snapshot(agent: &str, started_ns: i64, supervisor: &Supervisor, publisher: &PublisherStats) -> AgentStatus {
    let interfaces = supervisor
        .snapshot()
        .into_iter()
        .map(|s| InterfaceStatus {
            name: s.interface.clone(),
            kind: s.kind.to_string(),
            state: match &s.state {
                SourceState::Running => "running".to_string(),
                SourceState::Finished => "finished".to_string(),
                SourceState::Failed(e) => format!("failed: {e}"),
            },
            link_type: s.link.map(|l| format!("{l:?}")).unwrap_or_default(),
            counters: s.counters.entries().into_iter().collect(),
            pcap_received: s.pcap.received,
            pcap_dropped: s.pcap.dropped,
            pcap_if_dropped: s.pcap.if_dropped,
            records_dropped: s.records_dropped,
        })
        .collect();
    AgentStatus {
        agent: agent.to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        started_ns,
        updated_ns: clock::wall_ns(),
        interfaces,
        publisher: publisher.snapshot(),
        exited: false,
    }
}

/// Writes the status every `interval` until `stop` turns true, then once more.
pub async fn report(
    kv: kv::Store,
    agent: String,
    supervisor: Arc<Supervisor>,
    publisher: Arc<PublisherStats>,
    interval: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let started = clock::wall_ns();
    let Ok(key) = ntp_wire::subject::agent_status_key(&agent) else { return };
    let mut tick = tokio::time::interval(interval);
    loop {
        let done = tokio::select! {
            _ = tick.tick() => false,
            _ = stop.changed() => true,
        };
        let mut doc = snapshot(&agent, started, &supervisor, &publisher);
        doc.exited = done || *stop.borrow();
        match ntp_wire::status::encode(&doc) {
            Ok(bytes) => {
                if let Err(e) = kv.put(key.as_str(), bytes.into()).await {
                    tracing::debug!(message = "Status update failed.", error = %e);
                }
            }
            Err(e) => tracing::warn!(message = "Cannot encode status.", error = %e),
        }
        if done || *stop.borrow() {
            break;
        }
    }
}
