//! The committed `openapi.yaml` is the HTTP contract: the generated spec must equal it.
//! After an intended change, run `UPDATE_OPENAPI=1 cargo test -p ntpscope-api --test openapi_contract`
//! and review the diff of `openapi.yaml` like code.

use std::path::Path;

#[test]
fn generated_spec_matches_the_committed_contract() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../openapi.yaml");
    let generated = ntpscope_api::spec_yaml();
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(&path, &generated).expect("write openapi.yaml");
    }
    let committed = std::fs::read_to_string(&path).expect("openapi.yaml at the repository root");
    assert!(
        committed == generated,
        "openapi.yaml differs from the generated spec; if intended, run UPDATE_OPENAPI=1 cargo test -p ntpscope-api --test openapi_contract"
    );
}

#[test]
fn the_contract_documents_every_seed_path_and_the_security_scheme() {
    let spec = ntpscope_api::spec_yaml();
    for path in [
        "/api/ntp/history/clients:",
        "/api/ntp/history/clients/{client_ip}:",
        "/api/ntp/history/interfaces/statistics:",
        "/api/ntp/history/service/statistics:",
        "/api/ntp/history/search:",
        "/api/ntp/history/export:",
        "/api/ntp/history/cleanup:",
        "/api/ntp/history/health:",
        "/api/ntp/interfaces:",
        "/api/ntp/interfaces/{name}/start:",
        "/api/ntp/interfaces/{name}/stop:",
    ] {
        assert!(spec.contains(path), "missing {path}");
    }
    assert!(spec.contains("bearerAuth"), "security scheme documented");
    assert!(spec.contains("maximum: 1000"), "page_size bound documented");
}

/// Mutating operations require the bearer token; every other operation but health offers it as
/// an alternative to none (it is required only with `--protect-reads`/`--protect-export`), so
/// clients and Swagger UI know where to send one.
#[test]
fn every_operation_but_health_declares_the_bearer_token() {
    let spec: serde_json::Value = serde_json::from_str(&ntpscope_api::openapi().spec()).expect("spec");
    let required = serde_json::json!([{"bearerAuth": []}]);
    let optional = serde_json::json!([{"bearerAuth": []}, {}]);
    let mut seen = 0;
    for (path, ops) in spec["paths"].as_object().expect("paths") {
        for (method, op) in ops.as_object().expect("operations") {
            let id = op["operationId"].as_str().unwrap_or_default();
            let want = match id {
                "health" => serde_json::Value::Null,
                "cleanup" | "start_capture" | "stop_capture" => required.clone(),
                _ => optional.clone(),
            };
            assert_eq!(op["security"], want, "{method} {path}");
            seen += 1;
        }
    }
    assert!(seen >= 12, "{seen} operations");
}
