//! What the API knows about agents and the sink from the bus: status documents in the KV bucket,
//! and control requests by NATS request/reply.

use std::{
    sync::atomic::{AtomicI64, Ordering},
    time::Duration,
};

use futures_util::StreamExt;
use ntp_wire::{
    control::{self, ControlErrorKind, ControlRequest, ControlResponse},
    status::{AgentStatus, SinkStatus},
    subject,
};

use crate::{clock, error::ApiError, state::Bus};

/// An agent (or the sink) whose status is older than this is offline, unless `--stale-after`
/// says otherwise.
pub const FRESH: Duration = Duration::from_secs(30);

/// The staleness limit in force, nanoseconds: one setting for the whole process, set once at start.
static STALE_AFTER_NS: AtomicI64 = AtomicI64::new(30_000_000_000);

/// Sets the staleness limit (from `--stale-after`).
pub fn set_stale_after(d: Duration) {
    STALE_AFTER_NS.store(i64::try_from(d.as_nanos()).unwrap_or(i64::MAX), Ordering::Relaxed);
}

/// Whether a status written at `updated_ns` is fresh.
pub fn is_fresh(updated_ns: i64) -> bool {
    clock::wall_ns().saturating_sub(updated_ns) < STALE_AFTER_NS.load(Ordering::Relaxed)
}

/// Whether an agent is running: it reported recently, and that report was not its last (an
/// agent that exited cleanly says so in its final status).
pub fn is_running(s: &AgentStatus) -> bool {
    is_fresh(s.updated_ns) && !s.exited
}

/// Every agent status in the bucket.
pub async fn agent_statuses(bus: &Bus) -> Vec<AgentStatus> {
    let Some(kv) = &bus.kv else { return Vec::new() };
    let Ok(mut keys) = kv.keys().await else { return Vec::new() };
    let mut out = Vec::new();
    while let Some(Ok(key)) = keys.next().await {
        if !key.starts_with("agent.") {
            continue;
        }
        if let Ok(Some(bytes)) = kv.get(key.clone()).await
            && let Ok(status) = ntp_wire::status::decode::<AgentStatus>(&bytes)
        {
            out.push(status);
        }
    }
    out.sort_by(|a, b| a.agent.cmp(&b.agent));
    out
}

/// The sink's status document.
pub async fn sink_status(bus: &Bus, consumer: &str) -> Option<SinkStatus> {
    let kv = bus.kv.as_ref()?;
    let key = subject::sink_status_key(consumer).ok()?;
    let bytes = kv.get(key).await.ok()??;
    ntp_wire::status::decode(&bytes).ok()
}

/// Sends a control request and maps every failure to a clear status.
pub async fn request(bus: &Bus, agent: &str, req: &ControlRequest, timeout: Duration) -> Result<ControlResponse, ApiError> {
    let subj = subject::control(agent).map_err(|e| ApiError::bad_request("agent", e.to_string()))?;
    let payload = control::encode(req).map_err(|e| ApiError::internal(&e))?;
    let fut = bus.client.request(subj, payload.into());
    match tokio::time::timeout(timeout, fut).await {
        Err(_) => Err(ApiError::timeout(format!("agent {agent} did not answer within {timeout:?}"))),
        Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::NoResponders => {
            Err(ApiError::not_found(format!("agent {agent} is not connected")))
        }
        Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::TimedOut => {
            Err(ApiError::timeout(format!("agent {agent} did not answer in time")))
        }
        Ok(Err(e)) => Err(ApiError::unavailable(format!("request to agent {agent} failed: {e}"))),
        Ok(Ok(msg)) => {
            let resp: ControlResponse =
                control::decode(&msg.payload).map_err(|e| ApiError::bad_gateway(format!("agent {agent} sent an unreadable reply: {e}")))?;
            match resp {
                ControlResponse::Error { kind, message, field, .. } => Err(match kind {
                    ControlErrorKind::NotFound => ApiError::not_found(message),
                    ControlErrorKind::Conflict => ApiError::conflict(message),
                    ControlErrorKind::Invalid => ApiError::bad_request(field.as_deref().unwrap_or("body"), message),
                    ControlErrorKind::Failed => ApiError::bad_gateway(message),
                }),
                ok @ ControlResponse::Ok { .. } => Ok(ok),
            }
        }
    }
}
