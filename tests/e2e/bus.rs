//! The bus boundary: poison messages, old servers, stream configuration drift.

use std::time::Duration;

use async_nats::jetstream::{self, message::PublishMessage, stream};
use futures_util::StreamExt;
use netlab::NatsServer;
use ntp_wire::{Batch, batch, subject};
use sea_orm::EntityTrait;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

use crate::harness::{self, Sink, agent, fixture, lines, open, stored_records, wait_until};

/// A syntactically valid batch with no records.
fn good_batch(agent_id: &str) -> Batch {
    Batch::new(agent_id, "eth0", Vec::new())
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
    // Memory storage cannot be changed in place: a clear error, not a silent mismatch.
    js.delete_stream(subject::STREAM).await.expect("delete");
    js.create_stream(stream::Config {
        name: subject::STREAM.into(),
        subjects: vec![subject::STREAM_SUBJECTS.into()],
        storage: stream::StorageType::Memory,
        ..Default::default()
    })
    .await
    .expect("memory stream");
    let err = ntpscope_bus::ensure_stream(&js, &settings).await.expect_err("storage mismatch").to_string();
    assert!(err.contains("file storage"), "{err}");
}
