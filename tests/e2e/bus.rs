//! The bus boundary: poison messages, old servers, stream configuration drift, and every way of
//! authenticating to NATS (token, nkey, creds file in operator mode) against a real server: the
//! right secret connects, a wrong one fails at once with the server's reason.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use async_nats::jetstream::{self, message::PublishMessage, stream};
use base64::Engine as _;
use futures_util::StreamExt;
use netlab::NatsServer;
use nkeys::KeyPair;
use ntp_wire::{Batch, batch, subject};
use sea_orm::EntityTrait;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

use crate::harness::{self, Sink, agent, fixture, lines, open, stored_records, wait_until};

/// A syntactically valid batch with no records.
fn good_batch(agent_id: &str) -> Batch {
    Batch::new(agent_id, "eth0", Vec::new())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_message_is_terminated_only_once_its_dead_letter_copy_is_stored() {
    // The stream has room for the poison message and nothing more, so JetStream refuses its
    // copy: the message must come back and be copied once there is room, not be dropped.
    let nats = NatsServer::start().expect("nats-server");
    let dir = tempfile::tempdir().expect("tempdir");
    let url = harness::sqlite_url(dir.path());
    let _sink = Sink::start(&url, &nats.url, &dir.path().join("sink.log"), &["--batch-interval", "0.2"]);
    let js = jetstream::new(async_nats::connect(&nats.url).await.expect("connect"));
    assert!(
        wait_until(Duration::from_secs(30), || async { js.get_stream(subject::STREAM).await.is_ok() }).await,
        "the sink made no stream"
    );
    let mut stream = js.get_stream(subject::STREAM).await.expect("stream");
    let info = stream.info().await.expect("info").clone();
    let mut config = info.config.clone();
    config.max_messages = i64::try_from(info.state.messages).expect("count") + 1;
    config.discard = stream::DiscardPolicy::New;
    js.update_stream(config.clone()).await.expect("limit the stream");
    let subj = subject::sessions("evil", "eth0").expect("subject");
    js.send_publish(subj, PublishMessage::build().payload(b"\xc1 not msgpack".to_vec().into())).await.expect("publish").await.expect("ack");
    let db = open(&url).await;
    let state = || async { entity::sink_state::Entity::find().all(&db).await.ok().and_then(|s| s.into_iter().next()) };
    // Counted at once; delivered again (a duplicate of itself) while its copy is refused.
    let retried =
        wait_until(Duration::from_secs(20), || async { state().await.is_some_and(|s| s.dead_lettered == 1 && s.duplicates_skipped >= 1) })
            .await;
    assert!(retried, "{:?}", state().await);
    let dlq = subject::deadletter("ntp.v1.sessions.evil.eth0");
    assert!(stream.get_last_raw_message_by_subject(&dlq).await.is_err(), "the copy cannot be there yet");
    config.max_messages = -1;
    js.update_stream(config).await.expect("room again");
    let copied = wait_until(Duration::from_secs(20), || async { stream.get_last_raw_message_by_subject(&dlq).await.is_ok() }).await;
    assert!(copied, "no dead-letter copy once there was room");
    let terminated = wait_until(Duration::from_secs(20), || async { harness::outstanding(&nats.url).await == 0 }).await;
    assert!(terminated, "the poison message was not terminated");
    assert_eq!(state().await.map(|s| s.dead_lettered), Some(1), "counted once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_is_dead_lettered_and_the_good_messages_around_it_are_stored() {
    let nats = NatsServer::start().expect("nats-server");
    let dir = tempfile::tempdir().expect("tempdir");
    let url = harness::sqlite_url(dir.path());
    let _sink = Sink::start(&url, &nats.url, &dir.path().join("sink.log"), &[]);
    let file = fixture("zeek-ntp.pcap");
    let path = file.to_str().expect("path");
    // Good records before the garbage …
    let before = lines(&agent(&["-r", path, "--agent-id", "good-1"], None)).len() as i64;
    agent(&["-r", path, "--agent-id", "good-1"], Some(&nats.url));
    let client = async_nats::connect(&nats.url).await.expect("connect");
    let js = jetstream::new(client.clone());
    let subj = subject::sessions("evil", "eth0").expect("subject");
    let mut future = good_batch("evil");
    future.schema = 999;
    let mismatched = Batch::new("someone-else", "eth0", Vec::new());
    let poison: Vec<(String, Vec<u8>)> = vec![
        (subj.clone(), b"\xc1 not msgpack at all".to_vec()),
        (subj.clone(), batch::encode(&future).expect("encode")),
        (subj.clone(), batch::encode(&mismatched).expect("encode")),
    ];
    for (s, bytes) in &poison {
        js.send_publish(s.clone(), PublishMessage::build().payload(bytes.clone().into())).await.expect("publish").await.expect("ack");
    }
    // … and after it.
    agent(&["-r", path, "--agent-id", "good-2"], Some(&nats.url));
    let db = open(&url).await;
    let total = before * 2;
    assert!(wait_until(Duration::from_secs(30), || async { stored_records(&db).await == total }).await);
    let state = entity::sink_state::Entity::find().all(&db).await.expect("state");
    let dead = wait_until(Duration::from_secs(10), || async {
        entity::sink_state::Entity::find().all(&db).await.is_ok_and(|s| s[0].dead_lettered == 3)
    })
    .await;
    assert!(dead, "dead letters counted: {state:?}");
    // The copies are on the dead-letter subject with the reason.
    let stream = js.get_stream(subject::STREAM).await.expect("stream");
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::Config { filter_subject: subject::DEADLETTER_FILTER.into(), ..Default::default() })
        .await
        .expect("dlq consumer");
    let mut msgs = consumer.fetch().max_messages(10).expires(Duration::from_secs(2)).messages().await.expect("fetch");
    let mut reasons = Vec::new();
    while let Some(Ok(m)) = msgs.next().await {
        assert_eq!(m.subject.as_str(), "ntp.v1.deadletter.evil.eth0");
        let h = m.headers.as_ref().expect("headers");
        reasons.push(h.get("Ntpscope-Error").map(|v| v.as_str().to_string()).unwrap_or_default());
    }
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("undecodable")));
    assert!(reasons.iter().any(|r| r.contains("schema version 999")));
    assert!(reasons.iter().any(|r| r.contains("subject")));
}

/// A JetStream context on `nats` with the `NTP` stream in place.
async fn jetstream_with_stream(nats: &NatsServer) -> jetstream::Context {
    let client = async_nats::connect(&nats.url).await.expect("connect");
    let js = jetstream::new(client);
    ntpscope_bus::ensure_stream(&js, &ntpscope_bus::StreamSettings::default()).await.expect("stream");
    js
}

/// Every committed golden message of the wire crate, in file-name order: path, bytes, batch.
fn golden_messages() -> Vec<(PathBuf, Vec<u8>, Batch)> {
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("../capture/wire/tests/golden");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&golden).expect("golden dir").map(|e| e.expect("entry").path()).collect();
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let bytes = std::fs::read(&path).expect("read");
            let b = batch::decode(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            (path, bytes, b)
        })
        .collect()
}

/// Publishes `bytes` on the subject of `b`, without a message id (as a re-publish beyond
/// JetStream's duplicate window would arrive), and waits for the stream's ack.
async fn publish_raw(js: &jetstream::Context, bytes: Vec<u8>, b: &Batch) {
    let subj = subject::sessions(&b.agent, &b.interface).expect("subject");
    js.send_publish(subj, PublishMessage::build().payload(bytes.into())).await.expect("publish").await.expect("ack");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_golden_message_on_the_bus_is_stored_once_by_the_sink() {
    // The committed bytes of every wire version (long keys with `kind` tags, compact keys), as
    // agents of those versions published them. Three golden files hold the same batch: copies
    // re-published beyond JetStream's duplicate window (no Nats-Msg-Id here), which the sink
    // must recognise by content even when they arrive in one of its batches.
    let nats = NatsServer::start().expect("nats-server");
    let js = jetstream_with_stream(&nats).await;
    let golden = golden_messages();
    let files: Vec<&PathBuf> = golden.iter().map(|(path, _, _)| path).collect();
    let mut distinct = std::collections::BTreeMap::new();
    for (_, bytes, b) in &golden {
        distinct.insert(b.message_id(), b.records.len() as i64);
        publish_raw(&js, bytes.clone(), b).await;
    }
    assert!(files.len() >= 5 && distinct.len() < files.len(), "{files:?}");
    let dir = tempfile::tempdir().expect("tempdir");
    let url = harness::sqlite_url(dir.path());
    let _sink = Sink::start(&url, &nats.url, &dir.path().join("sink.log"), &[]);
    let db = open(&url).await;
    let want: i64 = distinct.values().sum();
    let state = || async { entity::sink_state::Entity::find().all(&db).await.ok().and_then(|s| s.into_iter().next()) };
    let seen_all = wait_until(Duration::from_secs(30), || async {
        state().await.is_some_and(|s| s.duplicates_skipped + s.messages_applied + s.dead_lettered >= files.len() as i64)
    })
    .await;
    let s = state().await.expect("sink state");
    assert!(seen_all, "{s:?}");
    assert_eq!(s.dead_lettered, 0, "{s:?}");
    assert_eq!((s.messages_applied, s.duplicates_skipped), (distinct.len() as i64, (files.len() - distinct.len()) as i64), "{s:?}");
    assert_eq!(stored_records(&db).await, want, "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_arriving_after_its_original_was_committed_is_skipped_and_the_new_message_beside_it_stored() {
    // The sink prepares each batch (aggregates it) while the batch before is still being written,
    // assuming none of its messages was applied. A copy of a committed message, re-published
    // beyond JetStream's duplicate window, proves that assumption wrong: the writer must find the
    // copy's id in the database and fold the batch again without it, keeping the new message
    // that arrived beside it.
    let nats = NatsServer::start().expect("nats-server");
    let js = jetstream_with_stream(&nats).await;
    let mut batches: Vec<(Vec<u8>, Batch)> = Vec::new();
    for (_, bytes, b) in golden_messages() {
        if !b.records.is_empty() && batches.iter().all(|(_, o)| o.message_id() != b.message_id()) {
            batches.push((bytes, b));
        }
    }
    assert!(batches.len() >= 2, "two distinct golden batches with records");
    let dir = tempfile::tempdir().expect("tempdir");
    let url = harness::sqlite_url(dir.path());
    let _sink = Sink::start(&url, &nats.url, &dir.path().join("sink.log"), &[]);
    let db = open(&url).await;
    let state = || async { entity::sink_state::Entity::find().all(&db).await.ok().and_then(|s| s.into_iter().next()) };
    let (x, y) = (&batches[0], &batches[1]);
    publish_raw(&js, x.0.clone(), &x.1).await;
    assert!(
        wait_until(Duration::from_secs(30), || async { state().await.is_some_and(|s| s.messages_applied == 1) }).await,
        "{:?}",
        state().await
    );
    publish_raw(&js, x.0.clone(), &x.1).await;
    publish_raw(&js, y.0.clone(), &y.1).await;
    let seen_all =
        wait_until(Duration::from_secs(30), || async { state().await.is_some_and(|s| s.duplicates_skipped + s.messages_applied >= 3) })
            .await;
    let s = state().await.expect("sink state");
    assert!(seen_all, "{s:?}");
    assert_eq!((s.messages_applied, s.duplicates_skipped, s.dead_lettered), (2, 1, 0), "{s:?}");
    assert_eq!(s.total_processed, (x.1.records.len() + y.1.records.len()) as i64, "{s:?}");
    assert_eq!(stored_records(&db).await, (x.1.records.len() + y.1.records.len()) as i64, "{s:?}");
}

/// A fake NATS 2.9 server: INFO, then PONG for every PING.
async fn fake_old_server() -> (u16, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let task = tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (r, mut w) = sock.into_split();
                let info = r#"INFO {"server_id":"FAKE","server_name":"fake","version":"2.9.10","proto":1,"go":"go1.19","host":"127.0.0.1","port":4222,"headers":true,"max_payload":1048576,"jetstream":true}"#;
                if w.write_all(format!("{info}\r\n").as_bytes()).await.is_err() {
                    return;
                }
                let mut lines = tokio::io::BufReader::new(r).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if line.starts_with("PING") && w.write_all(b"PONG\r\n").await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_older_than_2_10_are_refused_with_a_clear_error() {
    let (port, task) = fake_old_server().await;
    let cfg =
        ntpscope_bus::NatsConfig { url: format!("nats://127.0.0.1:{port}"), connect_timeout: Duration::from_secs(5), ..Default::default() };
    let err = ntpscope_bus::connect(&cfg).await.expect_err("2.9 must be refused").to_string();
    assert!(err.contains("2.9.10") && err.contains("2.10 or newer"), "{err}");
    // The agent says the same and exits non-zero before capturing anything.
    let file = fixture("zeek-ntp.pcap");
    let out = std::process::Command::new(harness::bin("ntpscope-capture"))
        .args(["-r", file.to_str().expect("path"), "--output", "nats", "--nats-url", &cfg.url])
        .output()
        .expect("agent");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("too old"), "{}", String::from_utf8_lossy(&out.stderr));
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_with_other_limits_is_reported_and_converged() {
    let nats = NatsServer::start().expect("nats-server");
    let client = async_nats::connect(&nats.url).await.expect("connect");
    let js = jetstream::new(client);
    js.create_stream(stream::Config {
        name: subject::STREAM.into(),
        subjects: vec![subject::STREAM_SUBJECTS.into()],
        max_age: Duration::from_secs(3600),
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await
    .expect("pre-existing stream");
    let settings = ntpscope_bus::StreamSettings::default();
    let outcome = ntpscope_bus::ensure_stream(&js, &settings).await.expect("ensure");
    let ntpscope_bus::StreamOutcome::Updated(diffs) = outcome else { panic!("expected an update, got {outcome:?}") };
    assert!(diffs.iter().any(|d| d.starts_with("max_age")), "{diffs:?}");
    let mut s = js.get_stream(subject::STREAM).await.expect("stream");
    assert_eq!(s.info().await.expect("info").config.max_age, settings.max_age);
    assert_eq!(ntpscope_bus::ensure_stream(&js, &settings).await.expect("again"), ntpscope_bus::StreamOutcome::Unchanged);
    // Limits that would refuse batches are differences too, and are converged.
    let mut odd = s.info().await.expect("info").config.clone();
    (odd.max_messages, odd.max_message_size, odd.discard) = (1_000, 4_096, stream::DiscardPolicy::New);
    js.update_stream(odd).await.expect("odd limits");
    let check_only = ntpscope_bus::StreamSettings { check_only: true, ..settings.clone() };
    let outcome = ntpscope_bus::ensure_stream(&js, &check_only).await.expect("check");
    let ntpscope_bus::StreamOutcome::Differs(diffs) = outcome else { panic!("expected differences, got {outcome:?}") };
    for name in ["max_msgs 1000", "max_msg_size 4096", "discard New"] {
        assert!(diffs.iter().any(|d| d.starts_with(name)), "{name} not in {diffs:?}");
    }
    assert_eq!(diffs.len(), 3, "{diffs:?}");
    assert!(matches!(ntpscope_bus::ensure_stream(&js, &settings).await.expect("converge"), ntpscope_bus::StreamOutcome::Updated(_)));
    let c = s.info().await.expect("info").config.clone();
    assert_eq!((c.max_messages, c.max_message_size, c.discard), (-1, -1, stream::DiscardPolicy::Old));
    // Another retention or memory storage cannot be changed in place: a clear error, not a
    // silent mismatch.
    let base = stream::Config { name: subject::STREAM.into(), subjects: vec![subject::STREAM_SUBJECTS.into()], ..Default::default() };
    for (config, why) in [
        (stream::Config { retention: stream::RetentionPolicy::WorkQueue, ..base.clone() }, "limits retention"),
        (stream::Config { storage: stream::StorageType::Memory, ..base.clone() }, "file storage"),
    ] {
        js.delete_stream(subject::STREAM).await.expect("delete");
        js.create_stream(config).await.expect("odd stream");
        let err = ntpscope_bus::ensure_stream(&js, &settings).await.expect_err(why).to_string();
        assert!(err.contains(why), "{err}");
    }
}

/// A JetStream server whose only configuration is `auth` (nats-server syntax).
fn auth_server(auth: &str) -> NatsServer {
    NatsServer::start_config(&format!("jetstream {{\n  store_dir: \"@STORE@\"\n}}\n{auth}\n"), &[]).expect("nats-server")
}

/// Connection flags as a service gets them, without credentials.
fn connect_args(url: &str) -> ntpscope_bus::ConnectArgs {
    ntpscope_bus::ConnectArgs {
        nats_url: url.to_string(),
        nats_user: None,
        nats_password_file: None,
        nats_token_file: None,
        nats_nkey_file: None,
        nats_creds: None,
        nats_tls_ca: None,
        nats_tls_cert: None,
        nats_tls_key: None,
        nats_tls: false,
        nats_connect_timeout: 10.0,
        nats_inbox_prefix: "_INBOX".into(),
    }
}

/// Writes a secret file in the server's scratch directory.
fn secret(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("{text}\n")).expect("write secret");
    path
}

/// Connects with `args` as every ntpscope service does (secret files read, version checked),
/// then uses JetStream so that the connection is known to be authorised, not just open.
async fn try_connect(args: ntpscope_bus::ConnectArgs) -> Result<(), String> {
    let cfg = args.into_config("auth-test").map_err(|e| e.to_string())?;
    let client = ntpscope_bus::connect(&cfg).await.map_err(|e| e.to_string())?;
    let js = jetstream::new(client);
    ntpscope_bus::ensure_stream(&js, &ntpscope_bus::StreamSettings::default()).await.map_err(|e| e.to_string())?;
    Ok(())
}

/// A refused connection: fails well before the connect timeout and names the reason.
async fn assert_refused(args: ntpscope_bus::ConnectArgs, what: &str) {
    let start = Instant::now();
    let err = try_connect(args).await.expect_err(what);
    assert!(err.to_lowercase().contains("authorization violation"), "{what}: {err}");
    assert!(start.elapsed() < Duration::from_secs(8), "{what}: refused only after {:?}: {err}", start.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_auth_connects_with_the_token_file_and_refuses_a_wrong_token() {
    let nats = auth_server("authorization {\n  token: \"s3cret-t0ken-for-ntpscope\"\n}");
    let good = secret(nats.dir(), "token", "s3cret-t0ken-for-ntpscope");
    let bad = secret(nats.dir(), "bad-token", "s3cret-t0ken-for-somebody");
    try_connect(ntpscope_bus::ConnectArgs { nats_token_file: Some(good.clone()), ..connect_args(&nats.url) }).await.expect("right token");
    assert_refused(ntpscope_bus::ConnectArgs { nats_token_file: Some(bad.clone()), ..connect_args(&nats.url) }, "wrong token").await;
    assert_refused(connect_args(&nats.url), "no token").await;
    // The agent's flag reaches the same code: it publishes with the right file, and with the
    // wrong one exits non-zero with the server's reason before capturing anything.
    let file = fixture("zeek-ntp.pcap");
    let run = |token: &Path| {
        std::process::Command::new(harness::bin("ntpscope-capture"))
            .args(["-r", file.to_str().expect("path"), "--output", "nats", "--nats-url", &nats.url, "--summary", "json"])
            .args(["--nats-connect-timeout", "10", "--nats-token-file"])
            .arg(token)
            .env("NTPSCOPE_LOG", "warn")
            .output()
            .expect("agent")
    };
    let out = run(&good);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(harness::summary(&out)["publisher"]["records_acked"].as_i64().is_some_and(|n| n > 0));
    let out = run(&bad);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.to_lowercase().contains("authorization violation"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nkey_auth_connects_with_the_seed_file_and_refuses_another_key() {
    let user = KeyPair::new_user();
    let nats = auth_server(&format!("authorization {{\n  users: [ {{ nkey: \"{}\" }} ]\n}}", user.public_key()));
    let good = secret(nats.dir(), "user.nk", &user.seed().expect("seed"));
    let other = secret(nats.dir(), "other.nk", &KeyPair::new_user().seed().expect("seed"));
    try_connect(ntpscope_bus::ConnectArgs { nats_nkey_file: Some(good), ..connect_args(&nats.url) }).await.expect("right seed");
    assert_refused(ntpscope_bus::ConnectArgs { nats_nkey_file: Some(other), ..connect_args(&nats.url) }, "unknown nkey").await;
}

/// A NATS JWT (`ed25519-nkey`) with `nats` as its NATS claims, signed by `issuer`.
fn jwt(issuer: &KeyPair, subject: &str, name: &str, nats: &serde_json::Value) -> String {
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let header = b64(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    // The JWT id only has to be unique; nsc uses a hash of the claims.
    let jti: String = subject.chars().rev().take(52).collect();
    let claims = serde_json::json!({
        "jti": jti, "iat": 1_767_225_600, "iss": issuer.public_key(), "name": name, "sub": subject, "nats": nats,
    });
    let body = format!("{header}.{}", b64(claims.to_string().as_bytes()));
    let sig = issuer.sign(body.as_bytes()).expect("sign");
    format!("{body}.{}", b64(&sig))
}

/// A `.creds` file as `nsc` writes it.
fn creds(dir: &Path, name: &str, user_jwt: &str, seed: &str) -> PathBuf {
    let text = format!(
        "-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n\
         ************************* IMPORTANT *************************\n\
         NKEY Seed printed below can be used to sign and prove identity.\n\n\
         -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
    );
    secret(dir, name, &text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creds_file_auth_connects_in_operator_mode_and_refuses_a_foreign_user() {
    // Operator → account (JetStream enabled) → user, all made here; the server trusts the
    // operator and knows the accounts (JetStream needs a system account too) from a memory
    // resolver.
    let (operator, system, account, user) = (KeyPair::new_operator(), KeyPair::new_account(), KeyPair::new_account(), KeyPair::new_user());
    let account_jwt = |key: &KeyPair, name: &str, jetstream: bool| {
        let mut limits = serde_json::json!({
            "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1, "wildcards": true, "conn": -1, "leaf": -1,
        });
        if jetstream {
            for k in ["mem_storage", "disk_storage", "streams", "consumer"] {
                limits[k] = serde_json::json!(-1);
            }
        }
        let claims = serde_json::json!({"limits": limits, "default_permissions": {"pub": {}, "sub": {}}, "type": "account", "version": 2});
        jwt(&operator, &key.public_key(), name, &claims)
    };
    let operator_claims = serde_json::json!({"system_account": system.public_key(), "type": "operator", "version": 2});
    let operator_jwt = jwt(&operator, &operator.public_key(), "ntpscope-test", &operator_claims);
    let user_claims = serde_json::json!({"pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1, "type": "user", "version": 2});
    let user_jwt = jwt(&account, &user.public_key(), "agent", &user_claims);
    let nats = auth_server(&format!(
        "operator: {operator_jwt}\nsystem_account: {}\nresolver: MEMORY\nresolver_preload: {{\n  {}: {}\n  {}: {}\n}}",
        system.public_key(),
        system.public_key(),
        account_jwt(&system, "SYS", false),
        account.public_key(),
        account_jwt(&account, "NTPSCOPE", true),
    ));
    let good = creds(nats.dir(), "agent.creds", &user_jwt, &user.seed().expect("seed"));
    try_connect(ntpscope_bus::ConnectArgs { nats_creds: Some(good), ..connect_args(&nats.url) })
        .await
        .unwrap_or_else(|e| panic!("right creds: {e}\n{}", nats.log()));
    // The right JWT with another key's seed: the nonce signature does not match.
    let stolen = creds(nats.dir(), "stolen.creds", &user_jwt, &KeyPair::new_user().seed().expect("seed"));
    assert_refused(ntpscope_bus::ConnectArgs { nats_creds: Some(stolen), ..connect_args(&nats.url) }, "JWT with a foreign seed").await;
    // A user signed by an account the server does not know.
    let stranger = KeyPair::new_user();
    let foreign_jwt = jwt(&KeyPair::new_account(), &stranger.public_key(), "stranger", &user_claims);
    let foreign = creds(nats.dir(), "foreign.creds", &foreign_jwt, &stranger.seed().expect("seed"));
    assert_refused(ntpscope_bus::ConnectArgs { nats_creds: Some(foreign), ..connect_args(&nats.url) }, "user of an unknown account").await;
}
