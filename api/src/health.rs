//! The health report: database, NATS, stream, consumer, sink liveness, agents.
//!
//! Unhealthy (503) when the database, NATS, the stream or the consumer is missing, the sink has
//! stopped updating its state, or no agent runs and some went silent (nothing captures);
//! degraded (200) when some agents are offline while others run, or when every agent exited
//! cleanly, which is what a finished file replay looks like.

use sea_orm::{ConnectionTrait, EntityTrait, Statement};

use crate::{
    agents,
    dto::{ComponentHealth, Health},
    state::AppState,
};

fn component(name: &str, ok: bool, detail: impl Into<String>) -> ComponentHealth {
    ComponentHealth { name: name.to_string(), ok, detail: detail.into() }
}

/// The sink's liveness: its row in this database when fresh (written by every batch and, when
/// idle, every `--db-heartbeat-interval`), or its fresh status on the bus (published every few
/// seconds) when the row exists but is older; a failing database named on the bus wins.
fn sink_component(
    consumer: &str,
    row: Result<Option<&entity::sink_state::Model>, &str>,
    live: Option<&ntp_wire::status::SinkStatus>,
) -> ComponentHealth {
    let row = match row {
        Ok(row) => row,
        Err(e) => {
            return match live {
                Some(st) if st.failing.is_none() => component(
                    "sink",
                    true,
                    format!("status on the bus {}; its database row unreadable: {e}", ntp_wire::time::format_rfc3339(st.updated_ns)),
                ),
                _ => component("sink", false, format!("its database row unreadable: {e}")),
            };
        }
    };
    let written = |r: &entity::sink_state::Model| ntp_wire::time::format_rfc3339(r.updated_at);
    match (live, row) {
        (Some(st), _) if st.failing.is_some() => {
            let attempts = st.counters.get("failed_attempts").copied().unwrap_or(0);
            component(
                "sink",
                false,
                format!(
                    "database writes failing since {}: {} ({attempts} failed batch attempts so far)",
                    ntp_wire::time::format_rfc3339(st.failing_since_ns),
                    st.failing.as_deref().unwrap_or_default()
                ),
            )
        }
        (_, Some(r)) if agents::is_fresh(r.updated_at) => component("sink", true, format!("last update {}", written(r))),
        (Some(st), Some(r)) => component(
            "sink",
            true,
            format!("status on the bus {}; database row written {}", ntp_wire::time::format_rfc3339(st.updated_ns), written(r)),
        ),
        // Its first tick writes the row: a sink alive on the bus without one in this database
        // writes another database (a relative --db-path, another DATABASE_URL).
        (Some(st), None) => component(
            "sink",
            false,
            format!(
                "consumer {consumer} reports on the bus ({}) but has no row in this database: does it write another one?",
                ntp_wire::time::format_rfc3339(st.updated_ns)
            ),
        ),
        (None, Some(r)) => component("sink", false, format!("no update since {}", written(r))),
        (None, None) => component("sink", false, format!("consumer {consumer} has never reported")),
    }
}

/// What the agents' statuses make of the service's health.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AgentsVerdict {
    /// Every agent that reported is running.
    Healthy,
    /// Some agents went silent while others run, or none runs and none went silent (each
    /// exited cleanly, as a finished file replay or a daemon stopped on purpose does, or none
    /// ever reported): the pipeline works (200).
    Degraded,
    /// No agent runs and at least one went silent without exiting: nothing captures, and not
    /// because an operator stopped it (503).
    Down,
}

/// The agents' component of the health report, from their statuses in the bucket.
fn agents_component(statuses: &[ntp_wire::status::AgentStatus]) -> (ComponentHealth, AgentsVerdict) {
    // An agent that exited cleanly is not an outage; one that went silent is.
    let offline: Vec<&str> = statuses.iter().filter(|s| !agents::is_fresh(s.updated_ns) && !s.exited).map(|s| s.agent.as_str()).collect();
    let online = statuses.iter().filter(|s| agents::is_running(s)).count();
    let verdict = match (online, offline.is_empty()) {
        (0, false) => AgentsVerdict::Down,
        (_, true) if online > 0 => AgentsVerdict::Healthy,
        _ => AgentsVerdict::Degraded,
    };
    let detail = match (online, offline.is_empty()) {
        (0, true) => "no agent is running".to_string(),
        (_, true) => format!("{online} online"),
        (_, false) => format!("{online} online, offline: {}", offline.join(", ")),
    };
    (component("agents", verdict == AgentsVerdict::Healthy, detail), verdict)
}

/// Runs every check.
pub async fn check(state: &AppState) -> Health {
    let mut c = Vec::new();
    let backend = state.db.get_database_backend();
    let schema =
        state.db.query_one_raw(Statement::from_string(backend, "SELECT version FROM seaql_migrations ORDER BY version DESC LIMIT 1")).await;
    c.push(match schema {
        Ok(Some(row)) => {
            let v: String = row.try_get_by_index(0).unwrap_or_default();
            component("database", v == migration::LATEST, format!("schema {v}"))
        }
        Ok(None) => component("database", false, "no schema"),
        Err(e) => component("database", false, format!("unreachable: {e}")),
    });
    let row = entity::sink_state::Entity::find_by_id(state.consumer.clone()).one(&state.db).await.map_err(|e| e.to_string());
    let bus = state.bus().await;
    let connected = bus.as_ref().is_some_and(|b| b.client.connection_state() == async_nats::connection::State::Connected);
    let live = match &bus {
        Some(b) if connected => agents::sink_status(b, &state.consumer).await.filter(|s| agents::is_fresh(s.updated_ns)),
        _ => None,
    };
    c.push(sink_component(&state.consumer, row.as_ref().map(Option::as_ref).map_err(String::as_str), live.as_ref()));
    // Without the bus the agents are unknown: the failing NATS component decides.
    let mut agents = AgentsVerdict::Healthy;
    match bus {
        None => c.push(component("nats", false, "not connected")),
        Some(_) if !connected => {
            // Every JetStream question would wait for its timeout: answer now, from what is known.
            c.push(component("nats", false, "disconnected (reconnecting)"));
            c.push(component("stream", false, "unknown while NATS is disconnected"));
            c.push(component("consumer", false, "unknown while NATS is disconnected"));
        }
        Some(bus) => {
            c.push(component("nats", true, "connected"));
            match bus.js.get_stream(ntp_wire::subject::STREAM).await {
                Ok(mut stream) => {
                    match stream.info().await {
                        Ok(info) => c.push(component("stream", true, format!("{} messages", info.state.messages))),
                        Err(e) => c.push(component("stream", false, e.to_string())),
                    }
                    match stream.consumer_info(&state.consumer).await {
                        Ok(ci) => c.push(component(
                            "consumer",
                            true,
                            format!("{} pending, {} unacknowledged", ci.num_pending, ci.num_ack_pending),
                        )),
                        Err(e) => c.push(component("consumer", false, format!("{}: {e}", state.consumer))),
                    }
                }
                Err(e) => c.push(component("stream", false, e.to_string())),
            }
            let (component, verdict) = agents_component(&agents::agent_statuses(&bus).await);
            c.push(component);
            agents = verdict;
        }
    }
    let reasons: Vec<String> = c.iter().filter(|x| !x.ok).map(|x| format!("{}: {}", x.name, x.detail)).collect();
    let hard_failure = agents == AgentsVerdict::Down || c.iter().any(|x| !x.ok && x.name != "agents");
    let status = if hard_failure {
        "unhealthy"
    } else if agents == AgentsVerdict::Degraded {
        "degraded"
    } else {
        "healthy"
    };
    Health { status: status.into(), components: c, reasons }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock;

    fn row(updated_at: i64) -> entity::sink_state::Model {
        entity::sink_state::Model {
            consumer: "sink".into(),
            stream: "NTP".into(),
            last_sequence: 0,
            total_received: 0,
            total_processed: 0,
            processing_errors: 0,
            total_inserted: 0,
            total_updated: 0,
            batches: 0,
            messages_applied: 0,
            duplicates_skipped: 0,
            dead_lettered: 0,
            queue_size: 0,
            failed_attempts: 0,
            last_commit_at: None,
            lag_seconds: None,
            last_batch_records: None,
            last_batch_seconds: None,
            updated_at,
        }
    }

    #[test]
    fn silent_agents_degrade_the_service_until_none_runs() {
        let now = clock::wall_ns();
        let old = now - 3_600_000_000_000;
        let agent = |name: &str, updated_ns: i64, exited: bool| ntp_wire::status::AgentStatus {
            agent: name.into(),
            updated_ns,
            exited,
            ..Default::default()
        };
        let verdict = |s: &[ntp_wire::status::AgentStatus]| agents_component(s).1;
        assert_eq!(verdict(&[agent("a", now, false), agent("b", now, false)]), AgentsVerdict::Healthy);
        assert_eq!(verdict(&[agent("a", now, false), agent("b", old, false)]), AgentsVerdict::Degraded);
        // Stopped on purpose (or a finished replay), or never there: nothing is broken.
        assert_eq!(verdict(&[agent("a", now, true), agent("b", old, true)]), AgentsVerdict::Degraded);
        assert_eq!(verdict(&[]), AgentsVerdict::Degraded);
        // The last running agent went silent: nothing captures.
        let (c, v) = agents_component(&[agent("a", old, false), agent("b", old, true)]);
        assert_eq!(v, AgentsVerdict::Down);
        assert!(!c.ok && c.detail == "0 online, offline: a", "{}", c.detail);
    }

    #[test]
    fn the_sink_is_alive_by_its_bus_status_or_its_database_row() {
        let now = clock::wall_ns();
        let old = now - 3_600_000_000_000;
        let live = ntp_wire::status::SinkStatus { consumer: "sink".into(), updated_ns: now, ..Default::default() };
        // An idle sink writes its row only every --db-heartbeat-interval: the bus says it lives.
        let c = sink_component("sink", Ok(Some(&row(old))), Some(&live));
        assert!(c.ok, "{}", c.detail);
        assert!(c.detail.contains("status on the bus"), "{}", c.detail);
        // Alive on the bus without a row here: it writes another database.
        let c = sink_component("sink", Ok(None), Some(&live));
        assert!(!c.ok && c.detail.contains("no row in this database"), "{}", c.detail);
        // The bus unreachable: the row decides.
        assert!(sink_component("sink", Ok(Some(&row(now))), None).ok);
        let c = sink_component("sink", Ok(Some(&row(old))), None);
        assert!(!c.ok && c.detail.starts_with("no update since"), "{}", c.detail);
        let c = sink_component("sink", Ok(None), None);
        assert!(!c.ok && c.detail.contains("never reported"), "{}", c.detail);
        // A sink that says its writes fail is not healthy, however fresh its row.
        let failing = ntp_wire::status::SinkStatus { failing: Some("database is locked".into()), failing_since_ns: old, ..live.clone() };
        let c = sink_component("sink", Ok(Some(&row(now))), Some(&failing));
        assert!(!c.ok && c.detail.contains("database is locked"), "{}", c.detail);
        // The row unreadable: the bus decides, and the detail says why the row is not used.
        let c = sink_component("sink", Err("disk I/O error"), Some(&live));
        assert!(c.ok && c.detail.contains("disk I/O error"), "{}", c.detail);
        assert!(!sink_component("sink", Err("disk I/O error"), None).ok);
    }
}
