//! The health report: database, NATS, stream, consumer, sink liveness, agents.
//!
//! Unhealthy (503) when the database, NATS, the stream or the consumer is missing or the sink has
//! stopped updating its state; degraded (200) when some agents are offline, which is also what a
//! finished file replay looks like.

use sea_orm::{ConnectionTrait, EntityTrait, Statement};

use crate::{
    agents,
    dto::{ComponentHealth, Health},
    state::AppState,
};

fn component(name: &str, ok: bool, detail: impl Into<String>) -> ComponentHealth {
    ComponentHealth { name: name.to_string(), ok, detail: detail.into() }
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
    let sink = entity::sink_state::Entity::find_by_id(state.consumer.clone()).one(&state.db).await.ok().flatten();
    c.push(match &sink {
        Some(s) if agents::is_fresh(s.updated_at) => {
            component("sink", true, format!("last update {}", ntp_wire::time::format_rfc3339(s.updated_at)))
        }
        Some(s) => component("sink", false, format!("no update since {}", ntp_wire::time::format_rfc3339(s.updated_at))),
        None => component("sink", false, format!("consumer {} has never reported", state.consumer)),
    });
    let mut degraded = false;
    match state.bus().await {
        None => c.push(component("nats", false, "not connected")),
        Some(bus) if bus.client.connection_state() != async_nats::connection::State::Connected => {
            // Every JetStream question would wait for its timeout: answer now, from what is known.
            c.push(component("nats", false, "disconnected (reconnecting)"));
            c.push(component("stream", false, "unknown while NATS is disconnected"));
            c.push(component("consumer", false, "unknown while NATS is disconnected"));
        }
        Some(bus) => {
            // The sink alive but unable to write (database locked, disk full) says so on the bus.
            if let Some(st) = agents::sink_status(&bus, &state.consumer).await
                && agents::is_fresh(st.updated_ns)
                && let Some(err) = &st.failing
                && let Some(sink) = c.iter_mut().find(|x| x.name == "sink")
            {
                let attempts = st.counters.get("failed_attempts").copied().unwrap_or(0);
                sink.ok = false;
                sink.detail = format!(
                    "database writes failing since {}: {err} ({attempts} failed batch attempts so far)",
                    ntp_wire::time::format_rfc3339(st.failing_since_ns)
                );
            }
            let connected = bus.client.connection_state() == async_nats::connection::State::Connected;
            c.push(component("nats", connected, if connected { "connected" } else { "disconnected" }));
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
            let statuses = agents::agent_statuses(&bus).await;
            // An agent that exited cleanly (a finished replay, a daemon stopped on purpose) is
            // not an outage; one that went silent is.
            let offline: Vec<&str> =
                statuses.iter().filter(|s| !agents::is_fresh(s.updated_ns) && !s.exited).map(|s| s.agent.as_str()).collect();
            let online = statuses.iter().filter(|s| agents::is_running(s)).count();
            degraded = !offline.is_empty() || online == 0;
            c.push(component(
                "agents",
                !degraded,
                if online == 0 && offline.is_empty() {
                    "no agent is running".to_string()
                } else if offline.is_empty() {
                    format!("{online} online")
                } else {
                    format!("{online} online, offline: {}", offline.join(", "))
                },
            ));
        }
    }
    let reasons: Vec<String> = c.iter().filter(|x| !x.ok).map(|x| format!("{}: {}", x.name, x.detail)).collect();
    let hard_failure = c.iter().any(|x| !x.ok && x.name != "agents");
    let status = if hard_failure {
        "unhealthy"
    } else if degraded {
        "degraded"
    } else {
        "healthy"
    };
    Health { status: status.into(), components: c, reasons }
}
