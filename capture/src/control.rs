//! Answers capture-control requests on `ntpscope.v1.control.<agent>` (NATS request/reply): list
//! the host's interfaces, start capture on one (port, timeout and optional BPF filter, like the
//! seed's start endpoint), stop it. Every answer carries the interfaces' new state.

use std::sync::Arc;

use capture_proto::AnalyzerConfig;
use futures_util::StreamExt;
use ntp_wire::control::{self, ControlErrorKind, ControlRequest, ControlResponse};

use crate::{
    config::{LiveConfig, SourceSpec, default_bpf},
    supervisor::{StartError, Supervisor},
};

/// What a started capture inherits from the agent's configuration.
#[derive(Debug, Clone)]
pub struct ControlDefaults {
    /// Core settings (port and timeout are replaced per request).
    pub analyzer: AnalyzerConfig,
    /// libpcap settings (the filter is replaced per request).
    pub live: LiveConfig,
}

/// Serves requests until `stop` turns true.
pub async fn serve(
    client: async_nats::Client,
    agent: String,
    supervisor: Arc<Supervisor>,
    defaults: ControlDefaults,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let Ok(subject) = ntp_wire::subject::control(&agent) else { return };
    let mut sub = match client.subscribe(subject.clone()).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(message = "Cannot subscribe to control requests.", subject = %subject, error = %e);
            return;
        }
    };
    tracing::info!(message = "Serving capture control.", subject = %subject);
    loop {
        let msg = tokio::select! {
            m = sub.next() => match m { Some(m) => m, None => break },
            _ = stop.changed() => break,
        };
        let Some(reply) = msg.reply.clone() else { continue };
        // Each request on its own task: a slow start or stop never delays the others.
        let (client, agent, supervisor, defaults) = (client.clone(), agent.clone(), supervisor.clone(), defaults.clone());
        tokio::spawn(async move {
            let response = match control::decode::<ControlRequest>(&msg.payload) {
                Ok(req) => handle(&agent, &supervisor, &defaults, req).await,
                Err(e) => error(&agent, StartError::new(ControlErrorKind::Invalid, format!("bad control request: {e}"))),
            };
            match control::encode(&response) {
                Ok(bytes) => {
                    if let Err(e) = client.publish(reply, bytes.into()).await {
                        tracing::warn!(message = "Control reply not sent.", error = %e);
                    }
                }
                Err(e) => tracing::error!(message = "Cannot encode a control reply.", error = %e),
            }
        });
    }
    let _ = sub.unsubscribe().await;
}

fn error(agent: &str, e: StartError) -> ControlResponse {
    ControlResponse::Error { agent: agent.to_string(), kind: e.kind, message: e.message, field: e.field.map(str::to_string) }
}

async fn handle(agent: &str, sup: &Arc<Supervisor>, defaults: &ControlDefaults, req: ControlRequest) -> ControlResponse {
    tracing::info!(message = "Control request.", request = ?req);
    let outcome: Result<(), StartError> = match req {
        ControlRequest::List => Ok(()),
        ControlRequest::Start { interface, port, timeout, bpf } => {
            if interface.is_empty() || interface.len() > 64 || interface.chars().any(|c| c.is_control() || c == '/') {
                return error(agent, StartError::invalid("name", format!("invalid interface name {interface:?}")));
            }
            if port == 0 {
                return error(agent, StartError::invalid("port", "port must be between 1 and 65535".into()));
            }
            if !timeout.is_finite() || timeout <= 0.0 || timeout > 3600.0 {
                return error(agent, StartError::invalid("timeout", format!("timeout must be between 0 and 3600 seconds, got {timeout}")));
            }
            if bpf.as_ref().is_some_and(|b| b.len() > 1024) {
                return error(agent, StartError::invalid("bpf", "bpf filter longer than 1024 characters".into()));
            }
            let mut analyzer = defaults.analyzer;
            analyzer.server_port = port;
            analyzer.pairing.timeout_ns = (timeout * 1e9) as i64;
            let mut live = defaults.live.clone();
            live.bpf = bpf.unwrap_or_else(|| default_bpf(port));
            let sup = sup.clone();
            tokio::task::spawn_blocking(move || sup.start(&SourceSpec::Live { interface }, analyzer, &live))
                .await
                .unwrap_or_else(|e| Err(StartError::new(ControlErrorKind::Failed, e.to_string())))
        }
        ControlRequest::Stop { interface } => {
            let sup = sup.clone();
            tokio::task::spawn_blocking(move || sup.stop(&interface))
                .await
                .unwrap_or_else(|e| Err(StartError::new(ControlErrorKind::Failed, e.to_string())))
        }
    };
    match outcome {
        Ok(()) => {
            let sup = sup.clone();
            let interfaces = tokio::task::spawn_blocking(move || sup.interfaces()).await.unwrap_or_default();
            ControlResponse::Ok { agent: agent.to_string(), interfaces }
        }
        Err(e) => error(agent, e),
    }
}
